"""The learner on Ray: one actor per data-parallel rank, and the driver-side work split.

:class:`LearnerGroup` starts ``num_workers`` actors (each a :class:`~longvideo_r1.trainer.learner.Learner`
holding one DeepSpeed rank; gloo on CPU, NCCL on GPUs), cuts every global batch into token-budgeted
micro-batches, deals them to the ranks (balanced by tokens, equal counts: a rank with less work
gets an empty micro-batch so collective calls stay in step), and gathers results back in row order.

The same helpers (:func:`micro_batches`, :func:`totals`) serve a single in-process ``Learner``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict

from longvideo_r1.errors import InputError
from longvideo_r1.trainer.learner import Learner, LearnerConfig, StepStats

log = logging.getLogger("longvideo_r1.trainer")

RL_KEYS = ("advantages", "old_logprobs", "ref_logprobs", "returns", "old_values")


def _lengths(batch: dict) -> list[int]:
    return [int(n) for n in batch["attention_mask"].sum(-1).tolist()]


def micro_batches(batch: dict, max_tokens: int, rows: list[int] | None = None) -> list[tuple[list[int], dict]]:
    """Cut the rows of a right-padded batch into micro-batches of ≤ ``max_tokens`` padded tokens.

    Rows are grouped by length (longest first) so little padding is trained; each micro-batch is cut
    to its own longest row. Returns ``(row indices, tensors)`` pairs; every row appears exactly once.
    """
    lengths = _lengths(batch)
    order = sorted(rows if rows is not None else range(len(lengths)), key=lambda i: (-lengths[i], i))
    out, current = [], []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and (len(current) + 1) * longest > max_tokens:
            out.append(current)
            current = []
        current.append(i)
    if current:
        out.append(current)
    result = []
    for idx in out:
        width = max(1, max(lengths[i] for i in idx))
        result.append((idx, {k: v[idx, :width] for k, v in batch.items() if getattr(v, "ndim", 0) == 2}))
    return result


def empty_micro_batch(batch: dict) -> dict:
    """A one-row, two-token micro-batch that trains nothing (keeps a rank's collective calls in step)."""
    import torch

    out = {}
    for k, v in batch.items():
        if getattr(v, "ndim", 0) == 2:
            out[k] = torch.zeros((1, 2), dtype=v.dtype)
    out["attention_mask"] = torch.ones((1, 2), dtype=batch["attention_mask"].dtype)
    return out


def deal(pieces: list[tuple[list[int], dict]], ranks: int) -> list[list[tuple[list[int], dict]]]:
    """Deal micro-batches to ranks, heaviest first to the least loaded rank."""
    load = [0] * ranks
    shares: list[list] = [[] for _ in range(ranks)]
    for piece in sorted(pieces, key=lambda p: -int(p[1]["attention_mask"].numel())):
        r = min(range(ranks), key=lambda k: (load[k], len(shares[k]), k))
        shares[r].append(piece)
        load[r] += int(piece[1]["attention_mask"].numel())
    return shares


def totals(batch: dict) -> dict:
    """Normalisers of a global step: trained tokens, sequences with any, padded response horizon."""
    mask = batch["loss_mask"]
    trained = mask.sum(-1)
    cols = mask.any(0).nonzero()
    horizon = int(cols.max() - cols.min() + 1) if len(cols) else 1
    return {"tokens": int(trained.sum()), "sequences": int((trained > 0).sum()), "horizon": horizon}


class _LearnerActor:
    """The body of a learner actor (set up after all ranks exist, so rank 0 can name the rendezvous)."""

    def __init__(self, threads: int | None = None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.learner: Learner | None = None

    def address(self) -> tuple[str, int]:
        import ray

        from longvideo_r1.trainer.learner import _free_port

        return ray.util.get_node_ip_address(), _free_port()

    def setup(self, config: LearnerConfig, rank: int, world_size: int, addr: str, port: int) -> int:
        self.learner = Learner(config, rank, world_size, addr, port)
        return os.getpid()

    def call(self, method: str, *args, **kwargs):
        return getattr(self.learner, method)(*args, **kwargs)


class LearnerGroup:
    def __init__(self, config: LearnerConfig, num_workers: int = 1, num_cpus: float = 1.0, num_gpus: float = 0.0,
                 placement_group=None, bundle_offset: int = 0, start_timeout: float = 600.0):
        import ray

        if not ray.is_initialized():
            raise InputError("the learner group needs Ray: call ray.init() (or run inside a Ray job)")
        if num_workers < 1:
            raise InputError(f"learner workers: need at least one, got {num_workers}")
        self.config = config
        env = {"DS_ACCELERATOR": "cpu"} if not num_gpus else {}
        env["TOKENIZERS_PARALLELISM"] = "false"
        threads = config.threads or (max(1, int(num_cpus)) if not num_gpus else None)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        cls = ray.remote(_LearnerActor)
        self.actors = []
        for rank in range(num_workers):
            options = {"num_cpus": num_cpus, "num_gpus": num_gpus, "runtime_env": {"env_vars": env}}
            if placement_group is not None:
                from ray.util.scheduling_strategies import (
                    PlacementGroupSchedulingStrategy,
                )

                options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group=placement_group, placement_group_bundle_index=bundle_offset + rank)
            self.actors.append(cls.options(**options).remote(threads))
        addr, port = ray.get(self.actors[0].address.remote(), timeout=start_timeout)
        ray.get([a.setup.remote(config, r, num_workers, addr, port) for r, a in enumerate(self.actors)],
                timeout=start_timeout)
        self.world_size = num_workers

    def _all(self, method: str, per_rank_args: list[tuple] | None = None, **kwargs) -> list:
        import ray

        args = per_rank_args or [()] * self.world_size
        refs = [a.call.remote(method, *args[r], **kwargs) for r, a in enumerate(self.actors)]
        try:
            return ray.get(refs)
        except KeyboardInterrupt:
            # The ranks finish the call in flight (an optimizer step is never half applied), so a
            # checkpoint written next holds a whole number of steps; then the interrupt goes on.
            ray.get(refs)
            raise

    def _shares(self, batch: dict) -> list[list[tuple[list[int], dict]]]:
        pieces = micro_batches(batch, self.config.micro_batch_tokens)
        shares = deal(pieces, self.world_size)
        most = max(len(s) for s in shares)
        for s in shares:
            while len(s) < most:
                s.append(([], empty_micro_batch(batch)))
        return shares

    # -------------------------------------------------------------------- training

    def sft_step(self, batch: dict) -> dict:
        """One optimizer step on a global batch (``input_ids``, ``attention_mask``, ``loss_mask``)."""
        total = totals(batch)["tokens"]
        shares = self._shares(batch)
        stats = self._all("sft_step", [([mb for _, mb in s], total) for s in shares])
        return merge_stats(stats)

    def sft_eval(self, batch: dict) -> float:
        shares = self._shares(batch)
        results = self._all("sft_eval", [([mb for _, mb in s],) for s in shares])
        loss, tokens = sum(r[0] for r in results), sum(r[1] for r in results)
        return loss / max(1, tokens)

    def compute(self, batch: dict, what: str):
        """[B, L] ``logprobs``, ``ref_logprobs`` or ``values`` at the ``loss_mask`` tokens (0 elsewhere)."""
        import torch

        shares = self._shares(batch)
        results = self._all("compute", [([mb for _, mb in s], what) for s in shares])
        out = torch.zeros(batch["loss_mask"].shape, dtype=torch.float32)
        for share, tensors in zip(shares, results):
            for (rows, _), t in zip(share, tensors):
                if rows:
                    out[rows, : t.shape[1]] = t
        return out

    def rl_step(self, batch: dict) -> dict:
        """One optimizer step of the RL loss (see :meth:`Learner.rl_step` for the keys)."""
        missing = [k for k in ("advantages", "old_logprobs") if k not in batch]
        if self.config.kl_coef > 0 and "ref_logprobs" not in batch:
            missing.append("ref_logprobs")
        if self.config.value_head:
            missing += [k for k in ("returns", "old_values") if k not in batch]
        if missing:
            raise InputError(f"rl_step: the batch lacks {', '.join(missing)}")
        norm = totals(batch)
        shares = self._shares(batch)
        stats = self._all("rl_step", [([mb for _, mb in s], norm) for s in shares])
        return merge_stats(stats)

    # -------------------------------------------------------------------- weights, checkpoints

    def publish_weights(self):
        """ObjectRef of the full weights (list of (name, tensor)), ready for ``RolloutPool.update_weights``."""
        refs = self._all("publish_weights")
        return refs[0]

    def save(self, directory: str, client_state: dict | None = None) -> str:
        return self._all("save_checkpoint", [(directory, client_state)] * self.world_size)[0]

    def load(self, directory: str, tag: str | None = None) -> dict:
        return self._all("load_checkpoint", [(directory, tag)] * self.world_size)[0]

    def export(self, directory: str) -> str:
        return self._all("export", [(directory,)] * self.world_size)[0]

    @property
    def step(self) -> int:
        import ray

        return ray.get(self.actors[0].call.remote("__getattribute__", "step"))

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []


def merge_stats(per_rank: list[StepStats]) -> dict:
    """Sum the ranks' shares of the step's normalised quantities; grad norm and lr are global already."""
    first = per_rank[0]
    out = asdict(first)
    out.pop("extra")
    out["loss"] = sum(s.loss for s in per_rank)
    out["tokens"] = sum(s.tokens for s in per_rank)
    out["seconds"] = max(s.seconds for s in per_rank)
    for key in first.extra:
        out[key] = sum(s.extra.get(key, 0.0) for s in per_rank)
    return out
