"""The training loop SFT and RL share: resume position, history, checkpoints, stop, Ctrl-C, summary.

A stage (:class:`~longvideo_r1.trainer.sft.SFTJob`, :class:`~longvideo_r1.trainer.rl.RLJob`) says how
to take one optimizer step and when to validate and checkpoint; :func:`run_training` does the rest
the same way for both:

- the per-step figures go to ``history.jsonl`` (one JSON line per step, appended as the step ends)
  and to ``log_metrics`` (MLflow); on resume the rows of steps after the checkpoint are dropped, and
  a half-written last line (a crash mid-write) is ignored, not fatal;
- a checkpoint is written when the job says so, at the last step, and at ``stop_after`` (a test's
  stand-in for a crash);
- Ctrl-C lets the step in flight finish (the learner group waits for its ranks), writes a
  checkpoint and re-raises, so rerunning the command continues;
- at the end the model is exported and the job's summary written to ``summary.json``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Protocol

from longvideo_r1.jsonl import complete_lines, json_lines

log = logging.getLogger("longvideo_r1.trainer")


class TrainingJob(Protocol):
    name: str
    """``sft`` or ``rl``: progress bar, log lines"""
    total_steps: int
    done: int
    """optimizer steps finished (the resume position after loading a checkpoint)"""
    history_offset: int
    """a history row's ``step`` is ``done + history_offset`` after its step (SFT 0, RL −1: 0-based)"""

    def before_first_step(self) -> dict | None: ...
    def train_step(self) -> dict: ...
    def checkpoint_due(self) -> bool: ...
    def save(self, interrupted: bool = False) -> None: ...
    def export(self, directory: Path) -> None: ...
    def summary(self, history: list[dict], seconds: float) -> dict: ...
    def shutdown(self) -> None: ...


_TAG = re.compile(r"step(\d+)")


def checkpoints_to_delete(tags: list[str], latest: str | None, keep_last: int, keep_every: int = 0) -> list[str]:
    """Which checkpoint tags (``stepNNNNNN`` folders) retention deletes: all but the ``keep_last`` newest
    up to ``latest`` (0 keeps all), those whose number is a multiple of ``keep_every`` (0: none),
    ``latest`` itself and any tag newer than ``latest`` (a save that never finished, or a later run's:
    not ours to judge). Names that are not tags are never touched."""
    if keep_last <= 0:
        return []
    anchor = _TAG.fullmatch(latest or "")
    if anchor is None:       # no finished save to anchor on: delete nothing
        return []
    top = int(anchor.group(1))
    numbered = sorted((int(m.group(1)), t) for t in tags if (m := _TAG.fullmatch(t)))
    eligible = [(n, t) for n, t in numbered if n <= top]
    keep = {t for _, t in eligible[-keep_last:]} | {latest}
    if keep_every > 0:
        keep |= {t for n, t in eligible if n % keep_every == 0}
    return [t for _, t in eligible if t not in keep]


def prune_checkpoints(directory: str | Path, keep_last: int, keep_every: int = 0) -> list[str]:
    """Delete the checkpoints :func:`checkpoints_to_delete` names under ``directory`` (reads its
    ``latest`` file); returns the deleted tags."""
    import shutil

    root = Path(directory)
    latest_file = root / "latest"
    if not root.is_dir() or not latest_file.is_file():
        return []
    latest = latest_file.read_text().strip()
    tags = [p.name for p in root.iterdir() if p.is_dir()]
    doomed = checkpoints_to_delete(tags, latest, keep_last, keep_every)
    for tag in doomed:
        shutil.rmtree(root / tag, ignore_errors=True)
    if doomed:
        log.info("checkpoints: deleted %s (keep_last %d, keep_every %d)", ", ".join(doomed), keep_last, keep_every)
    return doomed


def read_history(path: Path, done: int, offset: int) -> list[dict]:
    """The rows this run already wrote for steps up to ``done`` (later ones belong to steps the resumed
    run repeats); the file is rewritten to hold exactly those rows."""
    rows = []
    if path.is_file():      # a half-written last line (a crash mid-write) is dropped
        text = complete_lines(path).decode()
        rows = [r for _, r in json_lines(text, str(path), "delete the file to start the history afresh")
                if r["step"] - offset <= done]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def run_training(job: TrainingJob, out: Path, log_metrics=None, stop_after: int | None = None,
                 postfix: str | None = None) -> dict:
    """Run ``job`` from its resume position to ``job.total_steps``; returns its summary (with ``history``),
    or ``{"stopped_at", "history"}`` when ``stop_after`` ended it early."""
    from longvideo_r1.progress import progress_bar

    out.mkdir(parents=True, exist_ok=True)
    history_file = out / "history.jsonl"
    # a run that starts from step 0 redoes everything, its "before training" figures included
    history = read_history(history_file, job.done, job.history_offset) if job.done else []
    if not job.done:
        history_file.write_text("")
    t0 = time.perf_counter()

    def record(metrics: dict, step: int) -> None:
        row = {"step": step, **metrics}
        history.append(row)
        with history_file.open("a") as f:
            f.write(json.dumps(row) + "\n")

    bar = progress_bar(job.total_steps, job.done, job.name)
    try:
        if job.done == 0:
            first = job.before_first_step()
            if first:
                record(first, job.history_offset)
                if log_metrics:
                    log_metrics(first, 0)
        while job.done < job.total_steps:
            metrics = job.train_step()
            record(metrics, job.done + job.history_offset)
            if log_metrics:
                log_metrics(metrics, job.done)
            bar.update(1)
            if postfix and postfix in metrics:
                bar.set_postfix({postfix.rsplit("/", 1)[-1]: f"{metrics[postfix]:.3f}"}, refresh=False)
            stopping = stop_after is not None and job.done >= stop_after
            if job.checkpoint_due() or job.done == job.total_steps or stopping:
                job.save()           # once, even when a cadence, the last step and a stop coincide
            if stopping:
                return {"stopped_at": job.done, "history": history}
        job.export(out / "model")
    except KeyboardInterrupt:
        log.warning("%s interrupted at step %d: writing a checkpoint before stopping", job.name, job.done)
        job.save(interrupted=True)
        raise
    finally:
        bar.close()
        job.shutdown()
    summary = job.summary(history, time.perf_counter() - t0)
    (out / "summary.json").write_text(json.dumps({**summary, "history": history}, indent=1))
    return {**summary, "history": history}
