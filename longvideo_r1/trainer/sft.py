"""Supervised fine-tuning on teacher trajectories: epochs over token-budgeted steps, validation loss, resume.

The data are our SFT JSONL (``lvr1 data sft``), tokenised exactly as the rollout runner builds
contexts (:func:`longvideo_r1.trainer.batches.tokenize_trajectory`), so the model is trained on the
token layout it will act in. A step is one optimizer update over ``batch_tokens`` padded tokens of
similar-length trajectories (the learner group cuts it into micro-batches per rank). The order of
steps depends only on the seed and the epoch, so a resumed run (``resume=True``: the learner's
checkpoint holds model, optimizer, scheduler, RNG and the data position) continues with exactly
the losses an uninterrupted run would have had.
"""

from __future__ import annotations

import logging
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
    keep_last: int = 2
    """checkpoints kept: the newest this many (0 = all), plus every keep_every-th step"""
    keep_every: int = 0
    """also keep every checkpoint whose optimizer step is a multiple of this (0 = none)"""
    save_hf: bool = False
    """also write a transformers copy (safetensors, tokenizer) of each checkpoint in its folder,
    checkpoints/stepNNNNNN/hf: loadable by transformers and vLLM as it is; retention deletes it with its checkpoint"""
    seed: int = 0
    learner: LearnerConfig = field(default_factory=LearnerConfig)


def _examples(data: Path, tokenizer, config: SFTConfig):
    from longvideo_r1.trainer.batches import SFTDataset, split_validation

    dataset = SFTDataset(data, tokenizer, max_tokens=config.max_tokens)
    examples = list(dataset)
    if config.val_fraction > 0:   # whole videos go to one side, so validation measures unseen videos
        train, val = split_validation(examples, config.val_fraction, config.seed, key=lambda e: e["video_id"])
    else:
        train, val = examples, []
    return train, val, dataset


def steps_per_epoch(train: list, config: SFTConfig, pad_id: int) -> int:
    from longvideo_r1.trainer.batches import sft_batches

    return len(sft_batches(train, config.batch_tokens, pad_id, seed=config.seed, shuffle=False))


class SFTJob:
    """SFT as a :class:`~longvideo_r1.trainer.loop.TrainingJob`: epochs of token-budgeted steps.

    The data position follows from the learner's step count (every epoch has the same number of
    steps), so a checkpoint taken at any moment resumes at the right batch."""

    name = "sft"
    history_offset = 0

    def __init__(self, config: SFTConfig, data: Path, model: str | Path, out: Path, resume: bool, placement=None):
        import dataclasses

        from transformers import AutoTokenizer

        from longvideo_r1.cluster.resources import PlacementConfig
        from longvideo_r1.trainer.batches import sft_batches
        from longvideo_r1.trainer.learner_group import LearnerGroup

        if not data.is_file():
            raise InputError(f"SFT data {data}: no such file; create it with `lvr1 data sft`")
        self.config = config
        self.out = out
        tokenizer = AutoTokenizer.from_pretrained(str(model))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.train, self.val, self.dataset = _examples(data, tokenizer, config)
        self.per_epoch = steps_per_epoch(self.train, config, self.pad_id)
        self.total_steps = self.per_epoch * config.epochs
        learner_config = dataclasses.replace(config.learner, model=str(model), seed=config.seed,
                                             total_steps=config.learner.total_steps or self.total_steps)
        self.group = LearnerGroup.placed(learner_config, placement or PlacementConfig())
        self.ckpt = out / "checkpoints"
        if resume and (self.ckpt / "latest").is_file():
            self.group.load(str(self.ckpt))
        self.done = self.group.step
        if self.done:
            log.info("SFT resumed from %s at step %d (epoch %d, batch %d)", self.ckpt, self.done,
                     *divmod(self.done, self.per_epoch))
        self.val_batches = sft_batches(self.val, config.batch_tokens, self.pad_id, shuffle=False) if self.val else []
        self._epoch_batches: tuple[int, list] | None = None
        self.trained_tokens = 0

    def _batches(self, epoch: int) -> list:
        from longvideo_r1.trainer.batches import sft_batches

        if self._epoch_batches is None or self._epoch_batches[0] != epoch:
            self._epoch_batches = (epoch, sft_batches(self.train, self.config.batch_tokens, self.pad_id,
                                                      seed=self.config.seed + epoch))
        return self._epoch_batches[1]

    def _end_of_epoch(self) -> bool:
        return self.done % self.per_epoch == 0

    def before_first_step(self) -> None:
        return None

    def validation(self) -> float | None:
        if not self.val_batches:
            return None
        losses = [(self.group.sft_eval(b), int(b["loss_mask"].sum())) for b in self.val_batches]
        return sum(l * n for l, n in losses) / max(1, sum(n for _, n in losses))

    def train_step(self) -> dict:
        epoch, index = divmod(self.done, self.per_epoch)
        stats = self.group.sft_step(self._batches(epoch)[index])
        self.done += 1
        self.trained_tokens += stats["tokens"]
        metrics = {"train/loss": stats["loss"], "train/grad_norm": stats["grad_norm"], "train/lr": stats["lr"],
                   "train/tokens_per_s": stats["tokens"] / max(stats["seconds"], 1e-9), "train/epoch": epoch}
        every = self.config.eval_every
        if (every and self.done % every == 0) or (not every and self._end_of_epoch()):
            v = self.validation()
            if v is not None:
                metrics["val/loss"] = v
        log.info("sft step %d/%d epoch %d loss %.4f%s", self.done, self.total_steps, epoch, stats["loss"],
                 f" val {metrics['val/loss']:.4f}" if "val/loss" in metrics else "")
        return metrics

    def checkpoint_due(self) -> bool:
        every = self.config.save_every
        return bool(every and self.done % every == 0) or (not every and self._end_of_epoch())

    def save(self, interrupted: bool = False) -> None:
        epoch, index = divmod(self.done, self.per_epoch)
        self.group.save(str(self.ckpt), {"epoch": epoch, "index": index, "interrupted": interrupted},
                        self.config.keep_last, self.config.keep_every,
                        save_hf=self.config.save_hf and not interrupted)

    def export(self, directory: Path) -> None:
        self.group.export(str(directory))

    def shutdown(self) -> None:
        self.group.shutdown()

    def summary(self, history: list[dict], seconds: float) -> dict:
        steps = [h for h in history if "train/loss" in h]
        return {"model": str(self.out / "model"), "steps": self.total_steps, "epochs": self.config.epochs, "train_examples": len(self.train),
                "val_examples": len(self.val), "truncated": getattr(self.dataset, "truncated", 0),
                "first_loss": steps[0]["train/loss"] if steps else None,
                "last_loss": steps[-1]["train/loss"] if steps else None,
                "val_loss": next((h["val/loss"] for h in reversed(history) if "val/loss" in h), None),
                "seconds": round(seconds, 1), "trained_tokens": self.trained_tokens}


def train_sft(config: SFTConfig, data: str | Path, model: str | Path, out_dir: str | Path, resume: bool = True,
              log_metrics=None, stop_after: int | None = None, placement=None) -> dict:
    """Train ``model`` on the trajectories in ``data`` (resuming from ``out_dir/checkpoints`` unless
    ``resume=False``); the final transformers checkpoint goes to ``out_dir/model``. ``placement.learner``
    says how many ranks with which resources. ``log_metrics(dict, step)`` receives the per-step figures
    (loss, grad norm, lr, tokens/s, validation loss). ``stop_after`` ends the run after that many steps
    in total (a test's stand-in for a crash). Returns the summary (``model``, losses, ``history``)."""
    from longvideo_r1.trainer.loop import run_training

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    job = SFTJob(config, Path(data), model, out, resume, placement)
    return run_training(job, out, log_metrics, stop_after, postfix="train/loss")
