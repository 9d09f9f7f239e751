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


def test_quick_suite_writes_table_json_plots_and_scaling(tmp_path):
    """The CI smoke run of the whole suite: every kernel × backend has a row (timed, or skipped with the reason), the
    roofline figures are there, and the scaling study shows the memory laws (no speed assertions)."""
    import json

    from bench.run import main
    from refimpl.registry import BACKENDS, KERNELS
    main(["--quick", "--no-peers", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "bench.json").read_text())
    seen = {(r["kernel"], r["backend"]) for r in report["rows"] if "kernel" in r}
    assert seen == {(k, b) for k in KERNELS for b in BACKENDS}
    for r in report["rows"]:
        assert "skipped" in r or (r["median_s"] > 0 and r["flops"] > 0 and r["bytes"] > 0 and "frac_copy" in r), r
        if r["backend"] == "numpy":
            assert "skipped" not in r and r["peak_bytes"] > 0, r
    assert report["machine"]["versions"]["numpy"]
    assert (tmp_path / "bench.md").read_text().startswith("| kernel |")
    assert (tmp_path / "roofline.png").stat().st_size > 0 and (tmp_path / "scaling.png").stat().st_size > 0
    curves = {(c["model"], c["algorithm"]): c for c in report["scaling"]["curves"]}
    grows = lambda c: c["peak_vs_T"][-1] / c["peak_vs_T"][0]          # noqa: E731
    assert grows(curves["gru", "bptt"]) > 1.5 and grows(curves["ep", "bptt"]) > 1.5    # BPTT stores every step
    # online: flat in T. At these tiny sizes (a few KiB) the interpreter's free lists (≤ 2000 small tuples per size,
    # filled as steps are taken, then reused) show as up to ~10 KiB; BPTT's growth above is what storing the steps gives
    flat = lambda c: c["peak_vs_T"][-1] < 1.1 * c["peak_vs_T"][0] + 16 * 2**10        # noqa: E731
    assert not flat(curves["gru", "bptt"]), curves["gru", "bptt"]["peak_vs_T"]         # the criterion separates them
    for a in ("rtrl", "online", "snap1", "truncated", "spatial", "fptt"):
        assert flat(curves["gru", a]), (a, curves["gru", a]["peak_vs_T"])
    assert grows(curves["ep", "ep"]) < 1.1


def test_flops_formulas_match_a_hand_count():
    """Two of the cost formulas against a count done by hand for tiny sizes (T=2, B=1, I=1, H=1)."""
    from bench.cost import flops
    size = dict(T=2, B=1, I=1, H=1)
    # gru forward: per step GEMMs (1+1)·3 MACs = 6 MACs = 12 FLOPs, + 15 elementwise → 27 per step
    assert flops("gru.forward", size) == 2 * 27
    # lru forward: u = B x: 1·2 real MACs = 4 FLOPs; h = λ h + u: 8 → 12 per step
    assert flops("lru.forward", size) == 2 * 12


def test_goals_avx2_environment_holds_every_contender_to_avx2():
    """--isa avx2: OpenBLAS, Numba (name and features, its own cache), MKL, oneDNN, ATen and XLA are all held to
    AVX2, and Numba's feature list names AVX2 and FMA but no AVX-512 extension."""
    from bench.goals import HASWELL_FEATURES, avx2_env
    env = avx2_env("cache-dir")
    assert env["OPENBLAS_CORETYPE"] == "Haswell" and env["NUMBA_CPU_NAME"] == "haswell"
    assert env["NUMBA_CACHE_DIR"] == "cache-dir" and env["NUMBA_CPU_FEATURES"] == HASWELL_FEATURES
    assert {env["MKL_ENABLE_INSTRUCTIONS"], env["ONEDNN_MAX_CPU_ISA"], env["ATEN_CPU_CAPABILITY"].upper()} == {"AVX2"}
    assert env["XLA_FLAGS"] == "--xla_cpu_max_isa=AVX2"
    features = HASWELL_FEATURES.split(",")
    assert {"+avx2", "+fma"} <= set(features) and not any("avx512" in f for f in features)


def test_goals_avx2_is_refused_off_x86(monkeypatch, capsys):
    """--isa avx2 on a CPU that is not x86-64: one line, exit status 2, nothing measured."""
    import platform

    import pytest

    from bench import goals
    monkeypatch.delenv("REFIMPL_BENCH_ISA", raising=False)
    monkeypatch.setattr(platform, "machine", lambda: "arm64")
    monkeypatch.setattr(goals, "measure", lambda *a, **k: pytest.fail("measured"))
    with pytest.raises(SystemExit) as e:
        goals.main(["--isa", "avx2"])
    assert e.value.code == 2 and "arm64" in capsys.readouterr().err


def test_machine_line_says_when_numba_leaves_avx512_out(monkeypatch):
    """The Numba target reads "(no AVX-512)" when NUMBA_CPU_FEATURES drops AVX-512 on a CPU that has it."""
    import numba

    from bench.goals import HASWELL_FEATURES
    from refimpl import machine
    monkeypatch.setattr(machine, "cpu_record", lambda: {"vector_extensions": ["avx2", "avx512f"]})
    monkeypatch.setattr(numba.config, "CPU_NAME", "haswell")
    monkeypatch.setattr(numba.config, "CPU_FEATURES", HASWELL_FEATURES)
    assert machine.numba_target() == "haswell (no AVX-512)"
    monkeypatch.setattr(numba.config, "CPU_FEATURES", None)
    assert machine.numba_target() == "haswell"


def test_goals_avx2_features_give_the_avx2_tile():
    """The feature list --isa avx2 gives Numba selects the AVX/AVX2 row of the GEMM tile table (4 rows × 3 vectors of
    32 bytes), and the table's AVX-512 row without it; the header names the running tile."""
    import pytest
    pytest.importorskip("numba")
    from backends.numba import gemm
    from bench.goals import HASWELL_FEATURES, numba_tile
    assert gemm.tile_shape(HASWELL_FEATURES, "x86_64") == (4, 3, 32)
    assert gemm.tile_shape(HASWELL_FEATURES.replace("+avx2", "+avx2,+avx512f"), "x86_64") == (8, 3, 64)
    R, V, nbytes = gemm.TILE
    assert numba_tile("numba") == f"{R} × {V * nbytes // 4}" and numba_tile("mlx") is None
