"""bench/gpu_check.py, the one-run check of the CuPy backend on a GPU, rehearsed without one: the driver runs its parts
in processes of their own on the CPU emulation of the kernels, and writes strict JSON in which every goal of the
GPU issue is present — with its value, or with the reason it was not measured."""

import json
import subprocess
import sys

import pytest

from bench import gpu_check


def _strict(text: str) -> dict:
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def test_the_goals_are_those_of_the_issue():
    assert {g[0]: (g[2], g[3]) for g in gpu_check.GOALS} == {
        "lru_scan_vs_copy": (0.7, "higher"), "gru_vs_cudnn": (1.0, "lower"), "lstm_vs_cudnn": (1.0, "lower"),
        "lru_vs_jax_scan": (0.5, "lower"), "lru_vs_jax_associative_scan": (1.0, "lower"),
        "lru_rtrl_vs_bptt": (2.0, "lower"), "carried_chunked_vs_whole": (1.2, "lower")}
    assert gpu_check.SHAPE == dict(T=1024, B=64, I=128, H=512) and gpu_check.DTYPE == "float32"
    assert gpu_check.BUDGET + 30 < 8 * 60 and max(gpu_check.TIMEOUTS.values()) <= gpu_check.BUDGET / 2


def test_a_rehearsal_writes_every_goal_in_strict_json(tmp_path):
    """Two parts rehearsed for real (the carried sweeps in chunks against the whole sweep, the bench rows with their
    parity check, every launch recorded); the goals whose part was not asked for say so."""
    done = subprocess.run([sys.executable, "-m", "bench.gpu_check", str(tmp_path), "--rehearse", "--parts",
                           "carried,kernels", "--kernels", "lru.rtrl,rnn.snap1,lru.forward", "--repeats", "1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr + done.stdout
    report = _strict((tmp_path / "gpu_check.json").read_text())
    assert report["schema"] == "refimpl.gpu_check/1" and report["mode"] == "rehearsal"
    assert report["shape"] == gpu_check.REHEARSAL_SHAPE and "note" in report
    assert {k: v["status"] for k, v in report["parts"].items()} == {"carried": "ok", "kernels": "ok"}
    goals = {g["id"]: g for g in report["goals"]}
    assert list(goals) == [g[0] for g in gpu_check.GOALS]
    for goal_id, g in goals.items():
        if goal_id == "carried_chunked_vs_whole":
            assert g["value"] > 0 and g["met"] in (True, False) and "worst" in g["detail"]
        else:
            assert g["value"] is None and g["met"] is None and g["reason"] == "part 'goals' not run"
    carried = report["parts"]["carried"]["result"]["rows"]
    assert [r["kernel"] for r in carried] == ["rnn.snap1", "lru.rtrl"] and all(r["ratio"] > 0 for r in carried)
    rows = report["parts"]["kernels"]["result"]["rows"]
    assert {r["kernel"] for r in rows} == {"lru.forward", "lru.rtrl", "rnn.snap1"} and len(rows) == 4   # 2 variants
    assert all(r["backend"] == "cupy-emulation" and r["parity_rel_err"] <= 1e-4 and r["median_s"] > 0 for r in rows)
    launches = report["parts"]["kernels"]["result"]["launches"]
    assert "lru.lru_scan_chunk<float>" in launches and all(s["problems"] == [] for s in launches.values())
    assert report["summary"]["goals_unmeasured"] == 6 and report["summary"]["launch_problems"] == []
    assert (tmp_path / "gpu_check.log").exists()
    assert "carried_chunked_vs_whole" in done.stdout


def test_goal_rows_say_why_a_goal_was_not_measured():
    parts = {"goals": {"status": "timeout", "error": "ran past its 120 s", "result": None},
             "carried": {"status": "ok", "result": {"rows": [{"kernel": "lru.rtrl", "error": "ShapeError: x"},
                                                             {"kernel": "rnn.rtrl", "ratio": 1.1}]}}}
    rows = {g["id"]: g for g in gpu_check.goal_rows(parts)}
    assert rows["gru_vs_cudnn"]["reason"] == "ran past its 120 s" and rows["gru_vs_cudnn"]["met"] is None
    carried = rows["carried_chunked_vs_whole"]                       # one kernel failed: its worst, but no verdict
    assert carried["reason"] == "lru.rtrl: ShapeError: x" and carried["value"] == 1.1 and carried["met"] is None
    parts["goals"] = {"status": "ok", "result": {"goals": {"gru_vs_cudnn": {"value": 1.5, "detail": ""},
                                                           "lru_scan_vs_copy": {"value": 0.8, "detail": ""},
                                                           "lstm_vs_cudnn": {"skipped": "torch is not installed"}}}}
    parts["carried"]["result"]["rows"] = [{"kernel": "rnn.rtrl", "ratio": 1.1}, {"kernel": "lru.rtrl", "ratio": 1.3}]
    rows = {g["id"]: g for g in gpu_check.goal_rows(parts)}
    assert rows["gru_vs_cudnn"]["met"] is False and rows["lru_scan_vs_copy"]["met"] is True
    assert rows["lstm_vs_cudnn"]["reason"] == "torch is not installed"
    assert rows["carried_chunked_vs_whole"]["value"] == 1.3 and rows["carried_chunked_vs_whole"]["met"] is False


def test_non_finite_numbers_become_null():
    assert gpu_check._finite({"a": float("nan"), "b": [float("inf"), 1.0], 3: (2,)}) == {"a": None, "b": [None, 1.0],
                                                                                        "3": [2]}


def test_an_unknown_part_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="unknown part"):
        gpu_check.main([str(tmp_path), "--parts", "probe,nope"])


@pytest.mark.slow
def test_the_whole_rehearsal_runs(tmp_path):
    """Every part rehearsed (the gpu tests of tests/backends/test_cupy.py skip with the device probe's reason)."""
    done = subprocess.run(["bash", "bench/gpu_check.sh", str(tmp_path), "--rehearse", "--tests",
                           "tests/backends/test_cupy.py", "--repeats", "2"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr + done.stdout
    report = _strict((tmp_path / "gpu_check.json").read_text())
    assert all(p["status"] == "ok" for p in report["parts"].values()), report["parts"]
    tests = report["parts"]["tests"]["result"]
    assert tests["failed"] == tests["errors"] == 0 and tests["skipped"] > 0
    assert all(g["value"] is not None or "not installed" in g.get("reason", "") for g in report["goals"])
