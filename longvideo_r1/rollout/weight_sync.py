"""Weights from the learner to the rollout engines over a collective (``rl.weight_sync: collective``).

The learner's rank 0 and every rollout engine (every tensor-parallel worker of it) join one process
group of their own, next to the ones DeepSpeed and vLLM already own: a ``TCPStore`` on the learner's
node and a bare gloo (CPU) or NCCL (GPU) backend built on it, so neither side's default group is
touched. The parameters travel in buckets: a plan (:func:`plan_buckets`) fixes every tensor's place
in a flat byte buffer, rank 0 packs each bucket (gathered from the ZeRO-3 shards bucket by bucket)
and broadcasts it, and each engine loads it in place as it arrives (vLLM's ``reload_weights`` over
a stream of buckets: one layerwise reload for the whole model, so fused q/k/v and gate/up weights
split across buckets are processed once they are complete). Each bucket gets a fresh receive buffer:
the reload keeps the tensors of a layer until the layer is complete.

A tied output embedding is sent once and loaded under each of its names (vLLM 0.32 refreshes a tied
``lm_head`` only when it is named). This module needs torch only; the engine side is the
:class:`WeightSyncExtension` that vLLM mixes into its workers (``worker_extension_cls``).
"""

from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass, field

from longvideo_r1.errors import InputError

MODES = ("auto", "collective", "object_store")
BACKENDS = ("auto", "gloo", "nccl")
ALIGN = 64
"""byte alignment of every tensor in a bucket (a view as dtype needs an offset divisible by its size)"""
EXTENSION = "longvideo_r1.rollout.weight_sync.WeightSyncExtension"
FAULT_ENV = "LVR1_FAULT_SYNC_EXIT_AFTER_BUCKETS"
"""fault injection for tests: an engine process exits after receiving this many buckets"""


@dataclass(frozen=True)
class Entry:
    """One tensor's place in a bucket."""

    name: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    aliases: tuple[str, ...] = ()
    """other names of the same tensor (a tied output embedding), loaded from the same bytes"""


@dataclass(frozen=True)
class Bucket:
    entries: tuple[Entry, ...]
    nbytes: int


@dataclass(frozen=True)
class Plan:
    """Where every tensor goes, in which dtype; the same on the sender and every receiver."""

    dtype: str
    buckets: tuple[Bucket, ...] = field(default_factory=tuple)

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.buckets)

    @property
    def names(self) -> list[str]:
        return [n for b in self.buckets for e in b.entries for n in (e.name, *e.aliases)]


def torch_dtype(name: str):
    import torch

    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise InputError(f"weight sync: unknown dtype {name!r}; use float32, bfloat16 or float16")
    return dtype


def plan_buckets(params: list[tuple[str, tuple[int, ...], tuple[str, ...]]], dtype: str, bucket_bytes: int) -> Plan:
    """``params``: ``(name, shape, aliases)`` in model order. Tensors are packed in order into buckets of at
    most ``bucket_bytes`` (a tensor bigger than that gets a bucket of its own), each aligned to 64 bytes."""
    if bucket_bytes <= 0:
        raise InputError(f"weight sync: bucket size must be positive, got {bucket_bytes} bytes (rl.weight_sync_bucket_mb)")
    itemsize = torch_dtype(dtype).itemsize
    buckets: list[Bucket] = []
    entries: list[Entry] = []
    used = 0
    for name, shape, aliases in params:
        n = itemsize
        for d in shape:
            n *= int(d)
        if entries and used + n > bucket_bytes:
            buckets.append(Bucket(tuple(entries), used))
            entries, used = [], 0
        entries.append(Entry(name, tuple(int(d) for d in shape), used, n, tuple(aliases)))
        used += -(-n // ALIGN) * ALIGN
    if entries:
        buckets.append(Bucket(tuple(entries), used))
    return Plan(str(dtype).removeprefix("torch."), tuple(buckets))


def pack(bucket: Bucket, tensors: list, dtype: str, device):
    """The bucket's bytes: each tensor cast to ``dtype`` and copied to its offset."""
    import torch

    buf = torch.empty(bucket.nbytes, dtype=torch.uint8, device=device)
    dt = torch_dtype(dtype)
    for entry, t in zip(bucket.entries, tensors, strict=True):
        if tuple(t.shape) != entry.shape:
            raise RuntimeError(f"weight sync: {entry.name} has shape {tuple(t.shape)}, the plan says {entry.shape}")
        buf[entry.offset: entry.offset + entry.nbytes].view(dt).view(entry.shape).copy_(t)
    return buf


def unpack(buf, bucket: Bucket, dtype: str) -> list[tuple[str, object]]:
    """``(name, tensor)`` views of a received bucket, every alias included."""
    dt = torch_dtype(dtype)
    out = []
    for e in bucket.entries:
        t = buf[e.offset: e.offset + e.nbytes].view(dt).view(e.shape)
        out += [(name, t) for name in (e.name, *e.aliases)]
    return out


def choose_backend(backend: str, on_gpu: bool, colocated: bool) -> str:
    """``auto``: NCCL between GPUs, gloo on CPU or when an engine shares its GPU with the learner's rank
    0 (NCCL refuses two ranks on one device)."""
    if backend not in BACKENDS:
        raise InputError(f"config key rl.weight_sync_backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "nccl" if on_gpu and not colocated else "gloo"
    if backend == "nccl" and not on_gpu:
        raise InputError("rl.weight_sync_backend=nccl needs GPUs on the learner and the rollout workers; "
                         "use gloo (or auto) on CPU")
    return backend


class SyncGroup:
    """One member of a weight-sync process group (rank 0 hosts the store and sends)."""

    def __init__(self, host: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float,
                 device=None):
        import torch
        from torch.distributed import PrefixStore, TCPStore

        timeout = datetime.timedelta(seconds=timeout_s)
        self.rank, self.world_size, self.backend = rank, world_size, backend
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.store = TCPStore(host, port, world_size, rank == 0, timeout=timeout, wait_for_workers=False)
        prefixed = PrefixStore("lvr1-weight-sync/", self.store)
        if backend == "nccl":
            from torch.distributed.distributed_c10d import ProcessGroupNCCL

            opts = ProcessGroupNCCL.Options()
            opts._timeout = timeout
            # abort the communicator on a timeout instead of tearing the whole process down (the
            # default, 3, would kill the learner when a rollout engine dies mid-sync)
            before = os.environ.get("TORCH_NCCL_ASYNC_ERROR_HANDLING")
            os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "2"
            try:
                self.pg = ProcessGroupNCCL(prefixed, rank, world_size, opts)
            finally:
                if before is None:
                    os.environ.pop("TORCH_NCCL_ASYNC_ERROR_HANDLING", None)
                else:
                    os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = before
        else:
            from torch.distributed.distributed_c10d import ProcessGroupGloo

            self.pg = ProcessGroupGloo(prefixed, rank, world_size, timeout)
        self.broadcast(torch.zeros(1, dtype=torch.uint8, device=self.device))   # every member is connected

    def broadcast(self, buf) -> None:
        from torch.distributed.distributed_c10d import BroadcastOptions

        opts = BroadcastOptions()
        opts.rootRank = 0
        self.pg.broadcast([buf], opts).wait()

    def close(self, abort: bool = False) -> None:
        """``abort``: drop the connections at once (the peers' pending receives fail instead of waiting)."""
        pg, self.pg = getattr(self, "pg", None), None
        if pg is not None:
            try:
                if abort and hasattr(pg, "abort"):
                    pg.abort()
                elif hasattr(pg, "shutdown"):
                    pg.shutdown()
            except Exception:   # a group that is already broken has nothing left to close
                pass
        self.store = None


def receive_stream(group: SyncGroup, plan: Plan, result: dict):
    """``(name, tensor)`` pairs of every bucket as it arrives; on a failed receive the group is aborted,
    ``result`` says why and the stream ends (the caller must not use these weights)."""
    import torch

    exit_after = int(os.environ.get(FAULT_ENV, "0") or 0)
    for i, bucket in enumerate(plan.buckets):
        if exit_after and i == exit_after:
            os._exit(17)
        buf = torch.empty(bucket.nbytes, dtype=torch.uint8, device=group.device)
        try:
            group.broadcast(buf)
        except Exception as exc:
            result.update(ok=False, error=" ".join(str(exc).split())[:300])
            group.close(abort=True)
            return
        result["bytes"] += bucket.nbytes
        result["buckets"] += 1
        yield from unpack(buf, bucket, plan.dtype)


class WeightSyncExtension:
    """Mixed into vLLM's workers (``worker_extension_cls``); reached through ``LLM.collective_rpc``.

    The names carry an ``lvr_`` prefix: vLLM refuses an extension whose attributes clash with the
    worker's own (its GPU worker already has ``update_weights``)."""

    def lvr_join_sync_group(self, host: str, port: int, rank_offset: int, world_size: int, backend: str,
                            timeout_s: float) -> dict:
        old = getattr(self, "_lvr_group", None)
        if old is not None:
            old.close()
        device = self.device if backend == "nccl" else "cpu"
        rank = rank_offset + self.rank
        self._lvr_group = SyncGroup(host, port, rank, world_size, backend, timeout_s, device)
        return {"rank": rank, "dtype": str(self.model_config.dtype).removeprefix("torch.")}

    def lvr_receive_weights(self, plan: Plan) -> dict:
        group = getattr(self, "_lvr_group", None)
        result = {"ok": True, "error": "", "bytes": 0, "buckets": 0}
        if group is None or group.pg is None:
            return {**result, "ok": False, "error": "not in a weight-sync group"}
        t0 = time.perf_counter()
        self.reload_weights(weights_iterator=receive_stream(group, plan, result))
        if result["ok"] and result["buckets"] != len(plan.buckets):
            result.update(ok=False, error=f"received {result['buckets']} of {len(plan.buckets)} buckets")
        result["seconds"] = time.perf_counter() - t0
        return result

    def lvr_leave_sync_group(self) -> None:
        group, self._lvr_group = getattr(self, "_lvr_group", None), None
        if group is not None:
            group.close()
