"""The benchmark runner: registry-driven rows, timing only after a parity check on the benchmark inputs."""

from bench.run import format_rows, run, torch_peers
from refimpl import registry


def test_rows_come_from_the_registry_and_are_timed():
    rows = run("rnn.forward", ["numpy"], ("float64",), "small", repeats=2)
    assert {r["variant"]["nonlinearity"] for r in rows} == {"tanh", "linear"}
    assert all(r["median_s"] > 0 and r["min_s"] <= r["median_s"] <= r["max_s"] for r in rows)
    assert "rnn.forward" in format_rows(rows)


def test_a_wrong_kernel_is_refused_not_timed(monkeypatch):
    good = registry.KERNELS["gru.forward"].reference

    def wrong(*args, **kwargs):
        h, cache = good(*args, **kwargs)
        return h * 1.001, cache
    fake = registry.Backend("fake", True, "", {"gru.forward": wrong})
    monkeypatch.setitem(registry.BACKENDS, "fake", registry.BackendSpec("fake", "fake", "a wrong backend"))
    monkeypatch.setitem(registry._LOADED, "fake", fake)
    rows = run("gru.forward", ["fake"], ("float64",), "small", repeats=1)
    assert rows and all("parity FAILED" in r["skipped"] and "median_s" not in r for r in rows)


def test_missing_peer_is_reported(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch":
            raise ImportError("no torch here")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_torch)
    rows = torch_peers(repeats=1)
    assert rows == [{"peer": "torch", "skipped": "torch is not installed (optional; never installed by make test)"}]
