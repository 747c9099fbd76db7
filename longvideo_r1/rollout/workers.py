"""The pool of rollout workers: Ray actors that each own an engine and play episodes.

The driver hands out work one question group at a time (all ``n`` samples of a question stay on one
worker, so GRPO groups stay together), to whichever worker is free: fast workers take more. If a
worker dies mid-batch, the groups it held are queued again for the others and a replacement worker
is started with the latest weights, so the batch still completes. Weight updates are put in the
object store once and fanned out to every worker, or broadcast to them over a collective
(trainer/weight_sync.py drives that; each worker's engine receives through rollout/weight_sync.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from longvideo_r1.actors import ActorGroup
from longvideo_r1.agent.episode import Question
from longvideo_r1.errors import InputError
from longvideo_r1.rollout.episodes import RolloutConfig, RolloutEpisode, RolloutTimings

log = logging.getLogger("longvideo_r1.rollout")


@dataclass
class WorkerSpec:
    """What a rollout worker builds itself from (it travels to the actor): the rollout settings of the
    config, and this run's model, caption store and per-worker resources (from ``placement``)."""

    model: str
    """checkpoint folder the engine loads"""
    store: str = ""
    """caption store folder (read in-process by each worker)"""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """engine, its options and threads, the video_qa backend (and the episode settings, unused here)"""
    num_cpus: float = 1.0
    num_gpus: float = 0.0


class RolloutWorker:
    """The body of a rollout actor: one engine, the agent's tools, and the episode runner."""

    def __init__(self, spec: WorkerSpec, captions=None):
        from longvideo_r1.agent.tools import Tools
        from longvideo_r1.corpus.store import CaptionStore
        from longvideo_r1.rollout.engine import make_engine

        r = spec.rollout
        if r.threads:
            import torch

            torch.set_num_threads(r.threads)
        self.engine = make_engine(r.engine, spec.model, **r.engine_options)
        backend = None
        if r.video_qa not in ("none", "", None):
            from longvideo_r1.agent.video_qa import make_video_qa
            backend = make_video_qa(r.video_qa, **r.video_qa_options)
        self.tools = Tools(captions if captions is not None else CaptionStore(spec.store), backend)

    def ready(self) -> dict:
        import os

        return {"engine": self.engine.name, "version": self.engine.version, "pid": os.getpid()}

    def rollout(self, questions: list[Question], config: RolloutConfig, group_offset: int,
                answer_rule: str = "valid") -> tuple[list[RolloutEpisode], RolloutTimings]:
        from longvideo_r1.rollout.episodes import run_rollouts

        timings = RolloutTimings()
        return run_rollouts(self.engine, self.tools, questions, config, timings, group_offset, answer_rule), timings

    def update_weights(self, named_tensors, version: int) -> int:
        self.engine.update_weights(named_tensors, version)
        return self.engine.version

    def join_sync_group(self, host: str, port: int, rank_offset: int, world_size: int, backend: str,
                        timeout_s: float) -> list[dict]:
        """Join the learner's weight-sync group (rollout/weight_sync.py) at ranks ``rank_offset`` + TP rank."""
        return self.engine.join_sync_group(host, port, rank_offset, world_size, backend, timeout_s)

    def receive_weights(self, plan, version: int) -> dict:
        """Receive and load the learner's broadcast of ``plan``; ``ok`` and the engine's version after it."""
        return self.engine.receive_weights(plan, version)

    def leave_sync_group(self) -> None:
        self.engine.leave_sync_group()

    def sleep(self) -> None:
        self.engine.sleep()

    def wake(self, tags: list[str] | None = None) -> None:
        self.engine.wake(tags)

    def load_weights(self, folder: str, version: int) -> int:
        """Load a checkpoint folder's weights in place (same architecture and tokenizer as the engine's)."""
        self.engine.update_weights(checkpoint_tensors(folder), version)
        return self.engine.version

    def stats(self) -> dict:
        from dataclasses import asdict

        return asdict(self.engine.stats)


def checkpoint_tensors(folder: str) -> list:
    """``(name, tensor)`` pairs of a transformers checkpoint's safetensors files; a tied output
    embedding is added under its own name (vLLM's in-place reload only refreshes what is named)."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    root = Path(folder)
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise InputError(f"checkpoint {folder}: no *.safetensors file to load weights from")
    state: dict = {}
    for f in files:
        state.update(load_file(str(f)))
    config = json.loads((root / "config.json").read_text()) if (root / "config.json").is_file() else {}
    if config.get("tie_word_embeddings"):
        for prefix in ("model.", ""):
            embed = state.get(f"{prefix}embed_tokens.weight")
            if embed is not None:
                state.setdefault("lm_head.weight", embed)
                break
    return list(state.items())


_DEAD = (RayActorError, ActorDiedError, ActorUnavailableError)
RESTART_BACKOFF_S = (10, 20)
"""waits before the 2nd and 3rd try of starting a replacement worker"""


class RolloutPool:
    def __init__(self, spec: WorkerSpec, num_workers: int = 1, captions=None, start_timeout: float = 600.0,
                 actor_options=None):
        """``actor_options(i)``: Ray options of worker ``i`` (e.g. its placement-group bundle, from
        :meth:`longvideo_r1.cluster.resources.PlacementGroups.actor_options`); a replacement of a dead
        worker gets the options of the worker it replaces."""
        if not ray.is_initialized():
            raise InputError("the rollout pool needs Ray: call ray.init() (or run inside a Ray job)")
        if num_workers < 1:
            raise InputError(f"rollout workers: need at least one, got {num_workers}")
        self.spec = spec
        self._captions = captions
        self._weights = None            # (ObjectRef of the named tensors, version) last pushed
        self.group = ActorGroup(RolloutWorker, num_workers, (spec, captions),
                                options={"num_cpus": spec.num_cpus, "num_gpus": spec.num_gpus},
                                slot_options=actor_options, threads=spec.rollout.threads,
                                ready_timeout=start_timeout, what="rollout workers")
        self.group.start()              # raises the engine's own error (e.g. a bad model folder)
        self.restarts = 0
        self.timings = RolloutTimings()
        self.catch_up = None
        """``catch_up(worker)``: gives a replacement worker the current weights (the collective weight
        sync sets it, trainer/weight_sync.py); None: the last weights pushed through the object store"""

    @property
    def workers(self) -> list:
        """The live workers (a slot whose replacement could not start has none)."""
        return [w for w in self.group if w is not None]

    def rollout(self, questions: list[Question], config: RolloutConfig,
                chunks_per_worker: int = 2, answer_rule: str = "valid") -> list[RolloutEpisode]:
        """All ``config.n`` samples of every question, grouped by question in input order.

        Questions go out in chunks (about ``chunks_per_worker`` per worker): big enough for the
        engine to batch many episodes, small enough that a slow or dead worker holds little.
        ``answer_rule``: see :func:`~longvideo_r1.rollout.episodes.run_rollouts`.
        """
        size = max(1, -(-len(questions) // (len(self.workers) * chunks_per_worker)))
        queue = [list(range(i, min(i + size, len(questions)))) for i in range(0, len(questions), size)]
        idle = list(self.workers)
        running: dict = {}                           # ObjectRef -> (worker, question indices)
        results: dict[int, list[RolloutEpisode]] = {}
        while queue or running:
            while queue and idle:
                worker, chunk = idle.pop(), queue.pop(0)
                ref = worker.rollout.remote([questions[g] for g in chunk], config, chunk[0], answer_rule)
                running[ref] = (worker, chunk)
            done, _ = ray.wait(list(running), num_returns=1)
            worker, chunk = running.pop(done[0])
            try:
                episodes, timings = ray.get(done[0])
            except _DEAD as exc:
                log.warning("rollout worker died while playing questions %s (%s); re-queued on the others",
                            chunk, type(exc).__name__)
                queue.insert(0, chunk)
                self._replace(worker, idle)
                continue
            for e in episodes:
                results.setdefault(e.group, []).append(e)
            for name in ("generate_seconds", "tool_seconds", "tokenize_seconds", "steps"):
                setattr(self.timings, name, getattr(self.timings, name) + getattr(timings, name))
            idle.append(worker)
        return [e for g in range(len(questions)) for e in sorted(results[g], key=lambda e: e.sample)]

    def _replace(self, dead, idle: list) -> None:
        """A new worker in the dead one's slot (same options), with the latest weights, joins ``idle``."""
        worker = self.replace(dead)
        if worker is not None:
            idle.append(worker)

    def replace(self, dead, weights: bool = True):
        """Start a new worker in ``dead``'s slot (same options) and return it; ``weights``: give it the
        latest weights (through ``catch_up`` when set, else from the object store). None when it could
        not start (the pool goes on with the workers that are left)."""
        self.restarts += 1
        slot = self.group.slot_of(dead)
        for attempt in range(1 + len(RESTART_BACKOFF_S)):
            try:
                self.group.restart(slot)
                if weights and self.catch_up is not None:
                    self.catch_up(self.group[slot])
                elif weights and self._weights is not None:
                    ray.get(self.group[slot].update_weights.remote(*self._weights))
                return self.group[slot]
            except Exception as exc:
                # A node that just died is seen as dead by Ray only after its missed health checks
                # (~15 s): a replacement placed on its bundle meanwhile dies at once. Wait, try again.
                if attempt < len(RESTART_BACKOFF_S):
                    log.warning("replacement rollout worker failed to start (%s); retrying in %d s",
                                " ".join(str(exc).split())[:200], RESTART_BACKOFF_S[attempt])
                    time.sleep(RESTART_BACKOFF_S[attempt])
                    continue
                self.group.kill(slot)   # the batch goes on with the workers that are left
                log.error("could not start a replacement rollout worker: %s", exc)
                if not self.workers:
                    raise InputError("rollout workers: every worker died and none could be restarted") from None
        return None

    @property
    def tensor_parallel_size(self) -> int:
        return int(self.spec.rollout.engine_options.get("tensor_parallel_size", 1) or 1)

    def update_weights(self, named_tensors, version: int) -> None:
        """Push new weights to every worker (one copy in the object store); returns when all have them.

        ``named_tensors``: ``(name, tensor)`` pairs, or an ObjectRef of such a list already in the
        object store (what the learner group publishes: the weights never pass through the driver).
        """
        t0 = time.perf_counter()
        ref = named_tensors if isinstance(named_tensors, ray.ObjectRef) else ray.put(list(named_tensors))
        self._weights = (ref, version)
        versions = ray.get([w.update_weights.remote(ref, version) for w in self.workers])
        log.info("weights v%d pushed to %d workers in %.2f s", version, len(versions), time.perf_counter() - t0)

    def load_weights(self, folder: str, version: int) -> None:
        """Every worker reloads its weights from checkpoint ``folder`` (read where the worker runs)."""
        t0 = time.perf_counter()
        ray.get([w.load_weights.remote(str(folder), version) for w in self.workers])
        self._weights = None            # a replacement worker starts from spec.model: not these weights
        self.spec = replace(self.spec, model=str(folder))
        args = (self.spec, self._captions)
        self.group.args = lambda slot: args
        log.info("weights of %s loaded by %d workers in %.2f s", folder, len(self.workers), time.perf_counter() - t0)

    def stats(self) -> list[dict]:
        return ray.get([w.stats.remote() for w in self.workers])

    def sleep(self) -> None:
        """Every engine frees its accelerator memory (vLLM sleep mode) while the learner trains."""
        t0 = time.perf_counter()
        ray.get([w.sleep.remote() for w in self.workers])
        log.debug("%d rollout engines asleep in %.2f s", len(self.workers), time.perf_counter() - t0)

    def wake(self, tags: list[str] | None = None) -> None:
        """Every engine takes back its memory (``tags``: ``["weights"]``, ``["kv_cache"]`` or None: all);
        a replacement started meanwhile is awake already."""
        ray.get([w.wake.remote(tags) for w in self.workers])

    def shutdown(self) -> None:
        self.group.shutdown()
