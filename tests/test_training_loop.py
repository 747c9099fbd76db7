"""The loop skeleton SFT and RL share, and the pipeline's rule for "stage done", on CPU in milliseconds.

The job below is a complete training job of its own (a counter whose "checkpoint" is a JSON file), so
the skeleton's resume, history, checkpoint cadence, stop and Ctrl-C behaviour are tested without a
learner; the real SFT and RL jobs run through the same skeleton in test_learner.py, test_rl_loop.py
and test_pipeline.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longvideo_r1.platform.pipeline import StageBook, fingerprint
from longvideo_r1.trainer.loop import read_history, run_training


class CounterJob:
    name = "counter"
    history_offset = 0

    def __init__(self, out: Path, total_steps: int, save_every: int = 2, interrupt_at: int | None = None):
        self.ckpt = out / "ckpt.json"
        self.total_steps = total_steps
        self.save_every = save_every
        self.interrupt_at = interrupt_at
        self.done = json.loads(self.ckpt.read_text())["done"] if self.ckpt.is_file() else 0
        self.saves: list[tuple[int, bool]] = []
        self.exported = self.shut = False

    def before_first_step(self):
        return {"val/score": -1.0}

    def train_step(self) -> dict:
        if self.done == self.interrupt_at:
            self.done += 1                     # the step in flight finishes, then the interrupt arrives
            raise KeyboardInterrupt
        self.done += 1
        return {"train/loss": 1.0 / self.done}

    def checkpoint_due(self) -> bool:
        return self.done % self.save_every == 0

    def save(self, interrupted: bool = False) -> None:
        self.saves.append((self.done, interrupted))
        self.ckpt.write_text(json.dumps({"done": self.done}))

    def export(self, directory: Path) -> None:
        self.exported = True

    def summary(self, history, seconds):
        return {"steps": self.total_steps, "last_loss": history[-1]["train/loss"]}

    def shutdown(self) -> None:
        self.shut = True


def test_a_run_logs_every_step_checkpoints_on_cadence_and_at_the_end(tmp_path):
    logged = []
    job = CounterJob(tmp_path, total_steps=5)
    summary = run_training(job, tmp_path, log_metrics=lambda m, s: logged.append(s))
    assert [s for s, _ in job.saves] == [2, 4, 5] and job.exported and job.shut
    assert logged == [0, 1, 2, 3, 4, 5]
    rows = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4, 5] and summary["last_loss"] == pytest.approx(0.2)
    assert json.loads((tmp_path / "summary.json").read_text())["history"] == rows


def test_stop_after_checkpoints_and_a_rerun_continues_where_it_stopped(tmp_path):
    stopped = run_training(CounterJob(tmp_path, total_steps=5, save_every=10), tmp_path, stop_after=3)
    assert stopped["stopped_at"] == 3
    job = CounterJob(tmp_path, total_steps=5)
    assert job.done == 3
    summary = run_training(job, tmp_path)
    assert [h["step"] for h in summary["history"]] == [0, 1, 2, 3, 4, 5]


def test_ctrl_c_writes_a_checkpoint_of_the_finished_step_and_the_rerun_does_not_redo_it(tmp_path):
    job = CounterJob(tmp_path, total_steps=6, save_every=10, interrupt_at=3)
    with pytest.raises(KeyboardInterrupt):
        run_training(job, tmp_path)
    assert job.saves[-1] == (4, True) and job.shut and not job.exported
    again = run_training(CounterJob(tmp_path, total_steps=6), tmp_path)
    # step 4's figures were lost with the interrupt; every other step is recorded once, in order
    assert [h["step"] for h in again["history"]] == [0, 1, 2, 3, 5, 6]


def test_a_half_written_last_history_line_is_dropped_not_fatal(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert [r["step"] for r in read_history(path, done=5, offset=0)] == [1, 2]
    assert path.read_text().count("\n") == 2 and path.read_text().endswith("}\n")


def test_rows_of_steps_after_the_checkpoint_are_dropped_on_resume(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (-1, 0, 1, 2, 3)))
    assert [r["step"] for r in read_history(path, done=2, offset=-1)] == [-1, 0, 1]


def test_a_stage_is_done_only_with_the_same_fingerprint_finished_and_its_output_there(tmp_path):
    book = StageBook(tmp_path)
    fp = fingerprint("rl", {"lr": 1e-4}, "abc")
    assert book.state("rl", fp, output_ok=False) == "new"
    book.start("rl", fp)
    assert StageBook(tmp_path).state("rl", fp, output_ok=True) == "partial"     # started, not finished
    book.finish("rl", steps_done=2)
    again = StageBook(tmp_path)
    assert again.state("rl", fp, output_ok=True) == "done" and again.get("rl", "steps_done") == 2
    assert again.state("rl", fp, output_ok=False) == "partial"                  # its output was removed
    assert again.state("rl", fingerprint("rl", {"lr": 2e-4}, "abc"), output_ok=True) == "new"
    (tmp_path / "stages.json").write_text('{"rl": {"fingerp')                     # a crash mid-write
    assert StageBook(tmp_path).state("rl", fp, output_ok=True) == "new"


def test_fingerprints_follow_content_not_key_order():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
