"""The learner on Ray: one actor per data-parallel rank, and the driver-side work split.

:class:`LearnerGroup` starts ``num_workers`` actors (each a :class:`~longvideo_r1.trainer.learner.LearnerRank`
holding one DeepSpeed rank; gloo on CPU, NCCL on GPUs), cuts every global batch into token-budgeted
micro-batches, assigns them to the ranks (balanced by tokens, equal counts: a rank with less work
gets an empty micro-batch so collective calls stay in step), and gathers results back in row order.

The same helpers (:func:`micro_batches`, :func:`step_normalisers`) serve a single in-process ``Learner``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import asdict
from pathlib import Path

from longvideo_r1.actors import ActorGroup
from longvideo_r1.cluster.resources import (
    ROLES,
    PlacementConfig,
    RoleResources,
    create,
    plan,
)
from longvideo_r1.errors import InputError
from longvideo_r1.trainer.learner import LearnerConfig, LearnerRank, StepStats

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


def assign_to_ranks(pieces: list[tuple[list[int], dict]], ranks: int) -> list[list[tuple[list[int], dict]]]:
    """Each rank's share of the micro-batches: heaviest first, each to the least loaded rank."""
    load = [0] * ranks
    shares: list[list] = [[] for _ in range(ranks)]
    for piece in sorted(pieces, key=lambda p: -int(p[1]["attention_mask"].numel())):
        r = min(range(ranks), key=lambda k: (load[k], len(shares[k]), k))
        shares[r].append(piece)
        load[r] += int(piece[1]["attention_mask"].numel())
    return shares


def step_normalisers(batch: dict) -> dict:
    """Normalisers of a global step: trained tokens, sequences with any, padded response horizon."""
    mask = batch["loss_mask"]
    trained = mask.sum(-1)
    cols = mask.any(0).nonzero()
    horizon = int(cols.max() - cols.min() + 1) if len(cols) else 1
    return {"tokens": int(trained.sum()), "sequences": int((trained > 0).sum()), "horizon": horizon}


class LearnerGroup:
    """The data-parallel ranks of the learner, one :class:`~longvideo_r1.trainer.learner.LearnerRank` actor each.

    ``placement_group``/``bundle_offset``: rank ``r`` goes into bundle ``bundle_offset + r`` (what
    :meth:`~longvideo_r1.cluster.resources.PlacementGroups.learner_kwargs` hands over); without a
    group the ranks are scheduled freely. :meth:`placed` reserves a group of its own (SFT).
    """

    def __init__(self, config: LearnerConfig, num_workers: int = 1, num_cpus: float = 1.0, num_gpus: float = 0.0,
                 placement_group=None, bundle_offset: int = 0, start_timeout: float = 600.0):
        import ray

        if not ray.is_initialized():
            raise InputError("the learner group needs Ray: call ray.init() (or run inside a Ray job)")
        if num_workers < 1:
            raise InputError(f"learner workers: need at least one, got {num_workers}")
        self.config = config
        self.world_size = num_workers
        self._reserved = None           # the PlacementGroups of placed(), removed on shutdown
        env = {"TOKENIZERS_PARALLELISM": "false"}
        if not num_gpus:
            env["DS_ACCELERATOR"] = "cpu"

        def bundle(rank: int) -> dict:
            if placement_group is None:
                return {}
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=placement_group, placement_group_bundle_index=bundle_offset + rank)}

        threads = config.threads or (max(1, int(num_cpus)) if not num_gpus else 0)
        self.ranks = ActorGroup(LearnerRank, num_workers, options={"num_cpus": num_cpus, "num_gpus": num_gpus},
                                slot_options=bundle, threads=threads, env=env, ready_timeout=start_timeout,
                                what="learner ranks")
        self.ranks.start()
        try:
            addr, port = ray.get(self.ranks[0].rendezvous.remote(), timeout=start_timeout)
            ray.get([rank.setup.remote(config, r, num_workers, addr, port) for r, rank in enumerate(self.ranks)],
                    timeout=start_timeout)
        except BaseException:
            self.ranks.shutdown()       # a rank that failed to build must not keep the others' resources
            raise

    @classmethod
    def placed(cls, config: LearnerConfig, placement: PlacementConfig, start_timeout: float = 600.0) -> LearnerGroup:
        """Ranks placed by the same planner as in an RL run, in a placement group reserved for the
        learner role alone (SFT); :meth:`shutdown` removes it."""
        import ray

        alone = dataclasses.replace(placement, colocate=[],
                                    **{role: RoleResources(0, 0.0, 0.0) for role in ROLES if role != "learner"})
        reserved = create(plan(alone, ray.cluster_resources()), placement.timeout_s)
        try:
            group = cls(config, **reserved.learner_kwargs(), start_timeout=start_timeout)
        except BaseException:
            reserved.remove()
            raise
        group._reserved = reserved
        return group

    def _wait_for_ranks(self, refs: list) -> list:
        import ray

        try:
            return ray.get(refs)
        except KeyboardInterrupt:
            # The ranks finish the call in flight (an optimizer step is never half applied), so a
            # checkpoint written next holds a whole number of steps; then the interrupt goes on.
            ray.get(refs)
            raise

    def _split(self, batch: dict) -> list[list[tuple[list[int], dict]]]:
        """Each rank's ``(rows, micro-batch)`` pairs, padded with empty micro-batches to equal counts."""
        pieces = micro_batches(batch, self.config.micro_batch_tokens)
        shares = assign_to_ranks(pieces, self.world_size)
        most = max(len(s) for s in shares)
        for s in shares:
            while len(s) < most:
                s.append(([], empty_micro_batch(batch)))
        return shares

    def _scatter(self, batch: dict, shares: list, per_rank: list):
        """The ranks' per-micro-batch [b, l] results put back at their rows of a [B, L] tensor (0 elsewhere)."""
        import torch

        out = torch.zeros(batch["loss_mask"].shape, dtype=torch.float32)
        for share, tensors in zip(shares, per_rank):
            for (rows, _), t in zip(share, tensors):
                if rows:
                    out[rows, : t.shape[1]] = t
        return out

    # -------------------------------------------------------------------- training

    def sft_step(self, batch: dict) -> dict:
        """One optimizer step on a global batch (``input_ids``, ``attention_mask``, ``loss_mask``)."""
        total = step_normalisers(batch)["tokens"]
        shares = self._split(batch)
        return merge_stats(self._wait_for_ranks(
            [rank.sft_step.remote([mb for _, mb in s], total) for rank, s in zip(self.ranks, shares)]))

    def sft_eval(self, batch: dict) -> float:
        """Mean token loss of ``batch`` (no update)."""
        shares = self._split(batch)
        results = self._wait_for_ranks([rank.sft_eval.remote([mb for _, mb in s]) for rank, s in zip(self.ranks, shares)])
        loss, tokens = sum(r[0] for r in results), sum(r[1] for r in results)
        return loss / max(1, tokens)

    def logprobs(self, batch: dict):
        """[B, L] log-probs of the current policy at the ``loss_mask`` tokens (0 elsewhere)."""
        shares = self._split(batch)
        return self._scatter(batch, shares, self._wait_for_ranks(
            [rank.logprobs.remote([mb for _, mb in s]) for rank, s in zip(self.ranks, shares)]))

    def ref_logprobs(self, batch: dict):
        """[B, L] log-probs of the frozen reference model (needs ``kl_coef > 0``)."""
        shares = self._split(batch)
        return self._scatter(batch, shares, self._wait_for_ranks(
            [rank.ref_logprobs.remote([mb for _, mb in s]) for rank, s in zip(self.ranks, shares)]))

    def values(self, batch: dict):
        """[B, L] value-head outputs at the ``loss_mask`` tokens (needs ``value_head``)."""
        shares = self._split(batch)
        return self._scatter(batch, shares, self._wait_for_ranks(
            [rank.values.remote([mb for _, mb in s]) for rank, s in zip(self.ranks, shares)]))

    def rl_step(self, batch: dict) -> dict:
        """One optimizer step of the RL loss (see :meth:`Learner.rl_step` for the keys)."""
        missing = [k for k in ("advantages", "old_logprobs") if k not in batch]
        if self.config.kl_coef > 0 and "ref_logprobs" not in batch:
            missing.append("ref_logprobs")
        if self.config.value_head:
            missing += [k for k in ("returns", "old_values") if k not in batch]
        if missing:
            raise InputError(f"rl_step: the batch lacks {', '.join(missing)}")
        normalisers = step_normalisers(batch)
        shares = self._split(batch)
        return merge_stats(self._wait_for_ranks(
            [rank.rl_step.remote([mb for _, mb in s], normalisers) for rank, s in zip(self.ranks, shares)]))

    # -------------------------------------------------------------------- weights, checkpoints

    def publish_weights(self):
        """ObjectRef of the full weights (list of (name, tensor)), ready for ``RolloutPool.update_weights``."""
        return self._wait_for_ranks([rank.publish_weights.remote() for rank in self.ranks])[0]

    def weight_plan(self, dtype: str, bucket_bytes: int):
        """The bucket plan of the collective weight sync (:meth:`Learner.weight_plan`)."""
        import ray

        return ray.get(self.ranks[0].weight_plan.remote(dtype, bucket_bytes))

    def join_sync_group(self, host: str, port: int, world_size: int, backend: str, timeout_s: float) -> list:
        """ObjectRefs of every rank's join (rank 0 blocks until all members of the group are in)."""
        return [rank.join_sync_group.remote(host, port, world_size, backend, timeout_s) for rank in self.ranks]

    def send_weights(self, plan) -> list:
        """ObjectRefs of every rank's :meth:`Learner.send_weights` (rank 0's result is the sender's)."""
        return [rank.send_weights.remote(plan) for rank in self.ranks]

    def leave_sync_group(self) -> None:
        import ray

        ray.get([rank.leave_sync_group.remote() for rank in self.ranks])

    def save(self, directory: str, client_state: dict | None = None, keep_last: int = 0, keep_every: int = 0,
             save_hf: bool = False) -> str:
        """A checkpoint of every rank under ``directory``; returns its tag. Older ones beyond ``keep_last``
        (0 keeps all) are then deleted, except every ``keep_every``-th step. ``save_hf``: also a
        transformers copy of the policy in ``directory/<tag>/hf``."""
        tag = self._wait_for_ranks([rank.save_checkpoint.remote(directory, client_state, keep_last, keep_every)
                                    for rank in self.ranks])[0]
        if save_hf:
            self.export(str(Path(directory) / tag / "hf"))
        return tag

    def load(self, directory: str, tag: str | None = None) -> dict:
        """Resume from the checkpoint ``tag`` (default: the latest) under ``directory``; its client state."""
        return self._wait_for_ranks([rank.load_checkpoint.remote(directory, tag) for rank in self.ranks])[0]

    def export(self, directory: str) -> str:
        """A transformers checkpoint of the policy in ``directory``; returns the folder."""
        return self._wait_for_ranks([rank.export.remote(directory) for rank in self.ranks])[0]

    @property
    def step(self) -> int:
        """Optimizer steps taken (restored by :meth:`load`)."""
        import ray

        return ray.get(self.ranks[0].get_step.remote())

    def shutdown(self) -> None:
        """Kill the ranks and give back a placement group reserved by :meth:`placed`."""
        self.ranks.shutdown()
        if self._reserved is not None:
            self._reserved.remove()
            self._reserved = None


def merge_stats(per_rank: list[StepStats]) -> dict:
    """Sum the ranks' shares of the step's normalised quantities (a key ending in ``_max`` takes the
    largest rank's); grad norm and lr are global already."""
    first = per_rank[0]
    out = asdict(first)
    out.pop("extra")
    out["loss"] = sum(s.loss for s in per_rank)
    out["tokens"] = sum(s.tokens for s in per_rank)
    out["seconds"] = max(s.seconds for s in per_rank)
    for key in first.extra:
        values = [s.extra.get(key, 0.0) for s in per_rank]
        out[key] = max(values) if key.endswith("_max") else sum(values)
    return out
