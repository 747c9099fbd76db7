"""Supervised fine-tuning on teacher trajectories: epochs over token-budgeted steps, validation loss, resume.

The data are our SFT JSONL (``lvr1 data sft``), tokenised exactly as the rollout runner builds
contexts (:func:`longvideo_r1.trainer.data.tokenize_trajectory`), so the model is trained on the
token layout it will act in. A step is one optimizer update over ``batch_tokens`` padded tokens of
similar-length trajectories (the learner group cuts it into micro-batches per rank). The order of
steps depends only on the seed and the epoch, so a resumed run (``resume=True``: the learner's
checkpoint holds model, optimizer, scheduler, RNG and the data position) continues with exactly
the losses an uninterrupted run would have had.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from longvideo_r1.errors import InputError
from longvideo_r1.trainer.learner import LearnerConfig

log = logging.getLogger("longvideo_r1.trainer")


@dataclass
class SFTConfig:
    """The SFT stage (PROTOCOL §5: 3 epochs; only assistant turns, ``<think>`` included, are trained)."""

    enabled: bool = True
    epochs: int = 3
    batch_tokens: int = 32768
    """padded tokens per optimizer step (rows × longest row)"""
    max_tokens: int = 8192
    """trajectories longer than this are cut at the end"""
    val_fraction: float = 0.1
    """share of the trajectories (whole videos) held out for the validation loss"""
    eval_every: int = 0
    """validation loss every this many steps (0: at the end of each epoch)"""
    save_every: int = 0
    """checkpoint every this many steps (0: at the end of each epoch)"""
    seed: int = 0
    learner: LearnerConfig = field(default_factory=lambda: LearnerConfig(lr=1e-4, warmup_steps=2, schedule="cosine"))


def _examples(data: Path, tokenizer, config: SFTConfig):
    from longvideo_r1.trainer.data import SFTDataset, split_validation

    dataset = SFTDataset(data, tokenizer, max_tokens=config.max_tokens)
    examples = list(dataset)
    if config.val_fraction > 0:   # whole videos go to one side, so validation measures unseen videos
        train, val = split_validation(examples, config.val_fraction, config.seed, key=lambda e: e["video_id"])
    else:
        train, val = examples, []
    return train, val, dataset


def steps_per_epoch(train: list, config: SFTConfig, pad_id: int) -> int:
    from longvideo_r1.trainer.data import sft_batches

    return len(sft_batches(train, config.batch_tokens, pad_id, seed=config.seed, shuffle=False))


def train_sft(config: SFTConfig, data: str | Path, model: str | Path, out_dir: str | Path, resume: bool = True,
              log_metrics=None, stop_after: int | None = None, placement=None) -> dict:
    """Train ``model`` on the trajectories in ``data``; checkpoints under ``out_dir/checkpoints``,
    the final transformers checkpoint in ``out_dir/model``. ``placement.learner`` says how many ranks
    with which resources. ``log_metrics(dict, step)`` receives the
    per-step figures (loss, grad norm, lr, tokens/s, validation loss). ``stop_after`` ends the run
    after that many steps in total (a test's stand-in for a crash). Returns a summary."""
    import dataclasses

    from transformers import AutoTokenizer

    from longvideo_r1.trainer.data import sft_batches
    from longvideo_r1.trainer.group import LearnerGroup

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / "model"
    summary_file = out / "summary.json"
    if resume and summary_file.is_file() and (final / "config.json").is_file():
        log.info("SFT already finished in %s, skipping", out)
        return json.loads(summary_file.read_text())
    data = Path(data)
    if not data.is_file():
        raise InputError(f"SFT data {data}: no such file; create it with `lvr1 data sft`")
    tokenizer = AutoTokenizer.from_pretrained(str(model))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train, val, dataset = _examples(data, tokenizer, config)
    per_epoch = steps_per_epoch(train, config, pad_id)
    total_steps = per_epoch * config.epochs
    learner_config = dataclasses.replace(config.learner, model=str(model), seed=config.seed,
                                         total_steps=config.learner.total_steps or total_steps)
    from longvideo_r1.cluster.resources import PlacementConfig

    learner = (placement or PlacementConfig()).learner      # ranks and their CPUs/GPUs
    group = LearnerGroup(learner_config, num_workers=learner.count, num_cpus=learner.num_cpus,
                         num_gpus=learner.num_gpus)
    ckpt = out / "checkpoints"
    if resume and (ckpt / "latest").is_file():
        group.load(str(ckpt))
    # The data position follows from the learner's step count (every epoch has the same number of
    # steps), so a checkpoint taken at any moment resumes at the right batch.
    epoch, index = divmod(group.step, per_epoch)
    position = {"epoch": epoch, "index": index}
    if group.step:
        log.info("SFT resumed from %s at step %d (epoch %d, batch %d)", ckpt, group.step, epoch, index)
    val_batches = sft_batches(val, config.batch_tokens, pad_id, shuffle=False) if val else []
    history_file = out / "history.jsonl"
    history = _read_history(history_file, group.step)
    t_start = time.perf_counter()
    trained_tokens = 0

    def validation() -> float | None:
        if not val_batches:
            return None
        losses = [(group.sft_eval(b), int(b["loss_mask"].sum())) for b in val_batches]
        return sum(l * n for l, n in losses) / max(1, sum(n for _, n in losses))

    from longvideo_r1.progress import progress_bar

    bar = progress_bar(total_steps, group.step, "sft")
    try:
        step = group.step
        for epoch in range(position["epoch"], config.epochs):
            batches = sft_batches(train, config.batch_tokens, pad_id, seed=config.seed + epoch)
            start = position["index"] if epoch == position["epoch"] else 0
            for index in range(start, len(batches)):
                stats = group.sft_step(batches[index])
                step += 1
                trained_tokens += stats["tokens"]
                metrics = {"train/loss": stats["loss"], "train/grad_norm": stats["grad_norm"], "train/lr": stats["lr"],
                           "train/tokens_per_s": stats["tokens"] / max(stats["seconds"], 1e-9), "train/epoch": epoch}
                last = index == len(batches) - 1
                if (config.eval_every and step % config.eval_every == 0) or (not config.eval_every and last):
                    v = validation()
                    if v is not None:
                        metrics["val/loss"] = v
                history.append({"step": step, **metrics})
                with history_file.open("a") as f:
                    f.write(json.dumps(history[-1]) + "\n")
                if log_metrics:
                    log_metrics(metrics, step)
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.3f}", refresh=False)
                log.info("sft step %d/%d epoch %d loss %.4f%s", step, total_steps, epoch, stats["loss"],
                         f" val {metrics['val/loss']:.4f}" if "val/loss" in metrics else "")
                next_position = {"epoch": epoch + (1 if last else 0), "index": 0 if last else index + 1}
                if (config.save_every and step % config.save_every == 0) or (not config.save_every and last):
                    group.save(str(ckpt), next_position)
                if stop_after is not None and step >= stop_after:
                    group.save(str(ckpt), next_position)
                    return {"stopped_at": step, "history": history}
        group.export(str(final))
    except KeyboardInterrupt:
        log.warning("SFT interrupted: writing a checkpoint before stopping")
        group.save(str(ckpt), {"interrupted": True})
        raise
    finally:
        bar.close()
        group.shutdown()
    summary = {"model": str(final), "steps": total_steps, "epochs": config.epochs, "train_examples": len(train),
               "val_examples": len(val), "truncated": getattr(dataset, "truncated", 0),
               "first_loss": history[0]["train/loss"] if history else None,
               "last_loss": history[-1]["train/loss"] if history else None,
               "val_loss": next((h["val/loss"] for h in reversed(history) if "val/loss" in h), None),
               "seconds": round(time.perf_counter() - t_start, 1), "trained_tokens": trained_tokens,
               "history": history}
    summary_file.write_text(json.dumps(summary, indent=1))
    return summary


def _read_history(path: Path, up_to_step: int) -> list[dict]:
    """Per-step figures already written by this run (those of steps after the checkpoint are dropped)."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["step"] <= up_to_step]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows
