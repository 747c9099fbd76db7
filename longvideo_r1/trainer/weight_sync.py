"""The driver's side of the weight sync: after each update, the rollout engines get the learner's weights.

``object_store``: learner rank 0 puts the full weights in Ray's object store once and every worker
loads them (:meth:`RolloutPool.update_weights`). ``collective``: learner rank 0 and every engine form a
process group (rollout/weight_sync.py) and the weights are broadcast in buckets, gathered from the
ZeRO-3 shards bucket by bucket; nothing passes through the object store or the driver.

A collective sync that fails — a rollout worker died or stopped answering mid-sync — does not hang
and does not leave a worker with mixed weights in use: every operation of the group has a timeout,
the learner aborts the group on the first failed broadcast, the driver replaces dead workers and
kills those that never answered, re-forms the group with the workers now alive and pushes again
(``retries`` times); then it falls back to the object store for that step. A worker that got only
part of the buckets keeps its old version number and is pushed again. A replacement worker started
mid-rollout is caught up through a group of its own (:meth:`WeightSync.catch_up`).
"""

from __future__ import annotations

import logging
import time

from longvideo_r1.errors import InputError
from longvideo_r1.rollout.weight_sync import MODES

log = logging.getLogger("longvideo_r1.trainer")


class SyncFailed(RuntimeError):
    pass


def choose_mode(mode: str, on_gpu: bool) -> str:
    """``auto``: collective when the rollout engines run on GPUs, the object store on CPU."""
    if mode not in MODES:
        raise InputError(f"config key rl.weight_sync: {mode!r} is not one of {', '.join(MODES)}")
    if mode == "auto":
        return "collective" if on_gpu else "object_store"
    return mode


SLEEP_MODES = ("auto", "always", "never")  # not on/off: YAML reads those as booleans


def choose_sleep(mode: str, on_gpu: bool, colocated: bool, engine: str = "vllm") -> bool:
    """Whether the rollout engines sleep while the learner trains (vLLM sleep mode frees their GPU
    memory for the update): ``auto`` when they share GPUs with the learner; ``always`` needs vLLM on GPUs."""
    if mode not in SLEEP_MODES:
        raise InputError(f"config key rl.rollout_sleep: {mode!r} is not one of {', '.join(SLEEP_MODES)}")
    if mode == "always" and (not on_gpu or engine != "vllm"):
        raise InputError("config key rl.rollout_sleep: always needs vLLM rollout engines on GPUs (sleep mode frees "
                         "accelerator memory; placement.rollout.num_gpus, rl.rollout.engine: vllm); use auto or never")
    return mode == "always" or (mode == "auto" and on_gpu and colocated and engine == "vllm")


class WeightSync:
    def __init__(self, learner, pool, mode: str = "object_store", backend: str = "gloo", bucket_mb: float = 64.0,
                 timeout_s: float = 120.0, retries: int = 1):
        """``learner``: a LearnerGroup; ``pool``: a RolloutPool; ``mode``/``backend`` already resolved
        (:func:`choose_mode`, :func:`~longvideo_r1.rollout.weight_sync.choose_backend`)."""
        if mode not in ("collective", "object_store"):
            raise InputError(f"weight sync: mode {mode!r} is not collective or object_store")
        self.learner, self.pool, self.mode, self.backend = learner, pool, mode, backend
        self.bucket_bytes = int(bucket_mb * 2**20)
        self.timeout_s, self.retries = float(timeout_s), int(retries)
        self.version: int | None = None
        self.plan = None
        self._members: tuple | None = None
        self.reforms = 0
        if mode == "collective":
            pool.catch_up = self.catch_up

    # ------------------------------------------------------------------ the push after an update

    def push(self, version: int) -> dict:
        """Give every rollout worker the learner's current weights as ``version``; returns metrics."""
        if self.mode == "object_store":
            self.pool.update_weights(self.learner.publish_weights(), version=version)
            self.version = version
            return {}
        t0 = time.perf_counter()
        reforms, errors = self.reforms, []
        for attempt in range(1 + self.retries):
            try:
                workers = self._alive()
                if self._members != _ids(workers):
                    self._form(workers)
                sent = self._send(workers, version)
                self.version = version
                log.info("weights v%d broadcast to %d workers (%d buckets, %.1f MB) in %.2f s", version,
                         len(workers), len(self.plan.buckets), self.plan.nbytes / 2**20, time.perf_counter() - t0)
                return {"weight_sync/bytes": sent["bytes"], "weight_sync/buckets": sent["buckets"],
                        "weight_sync/reformed": self.reforms - reforms, "weight_sync/retries": attempt,
                        "weight_sync/fallback": 0}
            except SyncFailed as exc:
                errors.append(str(exc))
                self._members = None
                log.warning("weight sync v%d, attempt %d: %s", version, attempt + 1, exc)
        log.error("weight sync v%d failed %d times (%s); this step's weights go through the object store",
                  version, 1 + self.retries, errors[-1])
        self._leave_all()
        self._alive()
        self.pool.update_weights(self.learner.publish_weights(), version=version)
        self.version = version
        return {"weight_sync/bytes": 0, "weight_sync/buckets": 0, "weight_sync/reformed": self.reforms - reforms,
                "weight_sync/retries": 1 + self.retries, "weight_sync/fallback": 1}

    def catch_up(self, worker) -> None:
        """Give a replacement ``worker`` the current weights (a group of the learner and it alone)."""
        if self.version is None:
            return                      # nothing pushed yet: it starts from the same checkpoint
        try:
            self._form([worker])
            self._send([worker], self.version)
        except SyncFailed as exc:
            raise SyncFailed(f"catching up a replacement rollout worker: {exc}") from None
        finally:
            self._members = None        # the main group is re-formed at the next push

    def close(self) -> None:
        if self.mode == "collective":
            self._leave_all()

    # ------------------------------------------------------------------ pieces

    def _alive(self) -> list:
        """The pool's workers, dead or unanswering ones replaced (without weights: the push brings them)."""
        import ray

        from longvideo_r1.rollout.workers import _DEAD

        workers = list(self.pool.workers)
        refs = {w.ready.remote(): w for w in workers}
        done, pending = ray.wait(list(refs), num_returns=len(refs), timeout=min(self.timeout_s, 60.0))
        for ref in pending:
            ray.kill(refs[ref], no_restart=True)
        for ref in list(refs):
            try:
                ray.get(ref, timeout=5)
                continue
            except _DEAD:
                pass
            except ray.exceptions.GetTimeoutError:
                pass
            log.warning("rollout worker %s is gone; starting a replacement", refs[ref])
            self.pool.replace(refs[ref], weights=False)
        if not self.pool.workers:
            raise InputError("rollout workers: none left to sync weights to")
        return list(self.pool.workers)

    def _leave_all(self) -> None:
        import ray

        refs = [w.leave_sync_group.remote() for w in self.pool.workers]
        refs += [r.leave_sync_group.remote() for r in self.learner.ranks]
        ray.wait(refs, num_returns=len(refs), timeout=30)

    def _form(self, workers: list) -> None:
        import ray

        self._leave_all()
        self.reforms += 1
        host, port = ray.get(self.learner.ranks[0].rendezvous.remote())
        tp = self.pool.tensor_parallel_size
        world = 1 + tp * len(workers)
        learner_refs = self.learner.join_sync_group(host, port, world, self.backend, self.timeout_s)
        worker_refs = [w.join_sync_group.remote(host, port, 1 + i * tp, world, self.backend, self.timeout_s)
                       for i, w in enumerate(workers)]
        joined = _results(learner_refs + worker_refs, self.timeout_s + 30)
        failed = [f"{what}: {r}" for what, r in zip(["learner"] * len(learner_refs) + workers, joined)
                  if isinstance(r, BaseException)]
        if failed:
            raise SyncFailed("forming the group failed: " + "; ".join(str(f)[:200] for f in failed))
        dtypes = {m["dtype"] for members in joined[len(learner_refs):] for m in members}
        if len(dtypes) != 1:
            raise InputError(f"weight sync: the rollout engines run in different dtypes {sorted(dtypes)}")
        self.plan = self.learner.weight_plan(dtypes.pop(), self.bucket_bytes)
        self._members = _ids(workers)

    def _send(self, workers: list, version: int) -> dict:
        """One broadcast of every bucket; the sender's figures, or SyncFailed naming who failed."""
        import ray

        from longvideo_r1.rollout.workers import _DEAD

        learner_refs = self.learner.send_weights(self.plan)
        worker_refs = [w.receive_weights.remote(self.plan, version) for w in workers]
        # each broadcast is bounded by the group's timeout; this deadline only guards against a hang
        deadline = self.timeout_s * (len(self.plan.buckets) + 1) + 60
        done, pending = ray.wait(learner_refs, num_returns=len(learner_refs), timeout=deadline)
        if pending:
            raise RuntimeError(f"weight sync: the learner did not finish sending within {deadline:.0f} s")
        sender = ray.get(learner_refs)[0]
        done, pending = ray.wait(worker_refs, num_returns=len(worker_refs), timeout=self.timeout_s + 30)
        problems = []
        for ref, worker in zip(worker_refs, workers):
            if ref in pending:
                ray.kill(worker, no_restart=True)
                problems.append(f"{worker} did not finish receiving (killed; it is replaced)")
                continue
            try:
                got = ray.get(ref)
            except _DEAD:
                problems.append(f"{worker} died during the sync (it is replaced)")
                continue
            if not got["ok"] or got["version"] != version:
                problems.append(f"{worker} received {got.get('bytes', 0)} of {self.plan.nbytes} bytes ({got['error']})")
        if not sender["ok"]:
            problems.insert(0, f"learner: {sender['error']}")
        if problems:
            raise SyncFailed("; ".join(problems))
        return sender


def _ids(workers: list) -> tuple:
    return tuple(w._actor_id.hex() for w in workers)


def _results(refs: list, timeout: float) -> list:
    """Each ref's value, or the exception it raised (a TimeoutError for one still running)."""
    import ray

    done, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    out = []
    for ref in refs:
        if ref in pending:
            out.append(TimeoutError(f"no answer within {timeout:.0f} s"))
            continue
        try:
            out.append(ray.get(ref))
        except Exception as exc:
            out.append(exc)
    return out
