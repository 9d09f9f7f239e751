"""The command line for online training: --update-every, --chunk, --micro-batch and stream tasks; bad input is one
line on stderr with exit status 2, before any work."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from refimpl.cli import cli

COPY = ["train", "--task", "copy-small", "--cell", "rnn", "--hidden", "4", "--steps", "2", "--batch-size", "4",
        "--no-progress"]
STREAM = ["train", "--task", "copy-stream", "-t", "T=200", "-t", "waiting_time=2", "--cell", "lru", "--layers", "2",
          "--hidden", "6", "--batch-size", "2", "--algorithm", "online", "--no-progress"]
GRAD = ["gradcheck", "--cell", "rnn", "--seq-len", "5"]


@pytest.mark.parametrize("args,phrase", [
    (COPY + ["--algorithm", "bptt", "--update-every", "4"], "use tbptt -a window=k"),
    (COPY + ["--algorithm", "online", "--update-every", "0"], "'--update-every': 0 is not in the range x>=1"),
    (COPY + ["--algorithm", "online", "--update-every", "14"], "T = 13"),
    (COPY + ["--algorithm", "online", "--chunk", "0"], "'--chunk': 0 is not in the range x>=1"),
    (COPY + ["--algorithm", "online", "--chunk", "14"], "T = 13"),
    (COPY + ["--algorithm", "bptt", "--chunk", "2"], "runs the whole sequence at once"),
    (COPY + ["--algorithm", "tbptt", "--chunk", "2"], "-a window=2"),
    (COPY + ["--algorithm", "online", "--micro-batch", "0"], "'--micro-batch': 0 is not in the range x>=1"),
    (COPY + ["--algorithm", "online", "--micro-batch", "5"], "more than the batch (4"),
    (COPY + ["--algorithm", "online", "--micro-batch", "2", "--update-every", "4"], "lockstep"),
    (STREAM, "give --update-every K"),
    (STREAM + ["--update-every", "8", "--pooling", "last"], "no last step to pool over"),
    (STREAM[:-3] + ["--algorithm", "bptt", "--update-every", "8", "--no-progress"], "use tbptt"),
    (STREAM + ["--update-every", "8", "--chunk", "201"], "T = 200"),
    (GRAD + ["--algorithm", "online", "--chunk", "0"], "'--chunk': 0 is not in the range x>=1"),
    (GRAD + ["--algorithm", "online", "--chunk", "6"], "T = 5"),
    (GRAD + ["--algorithm", "bptt", "--chunk", "2"], "takes no chunk"),
    (["compare", "--task", "copy-small", "--algorithms", "bptt,readout", "--chunk", "2"], "none of bptt, readout"),
    (["compare", "--task", "copy-stream", "--algorithms", "online", "--update-every", "8"], "is a stream"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, phrase):
    r = CliRunner().invoke(cli, args + (["--out", str(tmp_path / "run")] if args[0] != "gradcheck" else []))
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in r.output, r.output
    assert phrase in lines[0]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_gradcheck_with_a_chunk(tmp_path):
    r = CliRunner().invoke(cli, GRAD + ["--algorithm", "online", "--chunk", "2", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["ok"]


def test_train_with_chunk_and_micro_batch(tmp_path):
    for extra in (["--algorithm", "online", "--chunk", "3", "--update-every", "4"],
                  ["--algorithm", "bptt", "--micro-batch", "2"]):
        r = CliRunner().invoke(cli, COPY + extra + ["--out", str(tmp_path / extra[1] / "run")])
        assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "online" / "run" / "config.json").read_text())
    assert cfg["chunk"] == 3 and cfg["update_every"] == 4


def test_a_stream_trains_from_the_command_line_with_progress(tmp_path):
    """The stream example of the README at a small T: progress with steps/s and the running loss, metrics."""
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "refimpl.run", *STREAM[:-1], "--update-every", "16", "--log-every",
                        "2", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "steps/s" in r.stderr and "running loss" in r.stderr and "13 steps" in r.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [row for row in rows if row["split"] == "train"]
    assert [row["step"] for row in train_rows] == [2, 4, 6, 8, 10, 12, 13]
    assert all({"t", "loss", "steps_per_s", "running_loss"} <= set(row) for row in train_rows)
    resumed = subprocess.run([sys.executable, "-m", "refimpl.run", "train", "--resume", str(out), "--no-progress"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr                  # complete: nothing left but the evaluation
    splits = [json.loads(line)["split"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert splits.count("val") == splits.count("test") == 1
