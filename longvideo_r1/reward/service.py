"""The reward service: score batches of finished episodes in Ray actors, never failing the caller.

Each worker actor holds a scorer (``compute_score`` by default, any callable with verl's
custom-reward signature, or a ``"path/to/file.py:function"`` / ``"module:function"`` string loaded
inside the actor). A batch is dealt round-robin to the workers, one actor call per item, so that
every item is timed on its own:

* a scorer that raises for an item gives that item zero reward and a one-line ``error``;
* an item still running ``timeout_s`` after its worker started it gives zero reward with
  ``"timed out after …s"``; the stuck worker is killed and replaced, and the items queued behind
  it are scored by the replacement;
* a worker that dies mid-batch costs only the item it was scoring.

Every error is logged on the ``longvideo_r1.reward`` logger.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import os
import sys
import time
from collections import deque
from dataclasses import asdict
from itertools import islice
from numbers import Real

import ray
from ray.exceptions import RayActorError, RayError

from longvideo_r1.actors import ActorGroup
from longvideo_r1.errors import InputError
from longvideo_r1.reward.score import RewardConfig

logger = logging.getLogger("longvideo_r1.reward")

ITEM_KEYS = ("data_source", "solution_str", "ground_truth")
REWARD_KEYS = ("score", "answer_reward", "f1_reward", "repeat_reward")
START_TIMEOUT_S = 120.0
_DRAIN_WINDOW = 64


def zero_reward(error: str | None = None) -> dict:
    return {**{k: 0.0 for k in REWARD_KEYS}, "error": error}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    message = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return message if len(message) <= 300 else message[:297] + "..."


def load_scorer(spec):
    """A scorer from a callable or a ``"file.py:function"`` / ``"package.module:function"`` string."""
    if spec is None:
        from longvideo_r1.reward.score import compute_score
        return compute_score
    if callable(spec):
        return spec
    if not isinstance(spec, str) or spec.count(":") < 1 or not all(spec.rpartition(":")[::2]):
        raise InputError(f"reward scorer {spec!r}: give a callable, 'path/to/file.py:function' or 'module:function'")
    where, _, name = spec.rpartition(":")
    try:
        if where.endswith(".py") or os.sep in where or "/" in where:
            module_name = f"lvr1_reward_scorer_{abs(hash(where))}"
            module_spec = importlib.util.spec_from_file_location(module_name, where)
            if module_spec is None or not os.path.isfile(where):
                raise InputError(f"reward scorer {spec!r}: file {where} does not exist")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module   # dataclasses and pickling look their module up there
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"reward scorer {spec!r}: cannot load {where} ({_one_line(exc)})") from None
    scorer = getattr(module, name, None)
    if not callable(scorer):
        raise InputError(f"reward scorer {spec!r}: {where} has no function {name!r}")
    return scorer


def _normalise(raw) -> dict:
    """A scorer's result as the four reward floats plus ``error``; a bare number is the score."""
    if isinstance(raw, dict):
        if "score" not in raw:
            return zero_reward(f"the scorer returned a dict without 'score' (keys: {', '.join(map(str, raw))})")
        values = {k: raw.get(k, 0.0) for k in REWARD_KEYS}
    elif isinstance(raw, Real):
        values = {**{k: 0.0 for k in REWARD_KEYS}, "score": raw}
    else:
        return zero_reward(f"the scorer returned {type(raw).__name__}, not a number or a dict with 'score'")
    try:
        out = {k: float(v) for k, v in values.items()}
    except (TypeError, ValueError):
        return zero_reward(f"the scorer returned non-numeric rewards: {values!r}"[:300])
    if not all(math.isfinite(v) for v in out.values()):
        return zero_reward(f"the scorer returned a non-finite reward: {out}")
    return {**out, "error": None}


class RewardWorker:
    """The body of a reward actor: one scorer, called item by item."""

    def __init__(self, scorer=None, scorer_kwargs: dict | None = None):
        self.kwargs = dict(scorer_kwargs or {})
        self.scorer = None
        self.load_error = None
        try:
            self.scorer = load_scorer(scorer)
        except InputError as exc:
            self.load_error = str(exc)

    def ready(self) -> str | None:
        """None when the scorer is loaded, else why it could not be."""
        return self.load_error

    def score(self, item: dict) -> dict:
        try:
            raw = self.scorer(data_source=item["data_source"], solution_str=item["solution_str"],
                              ground_truth=item["ground_truth"], extra_info=item.get("extra_info"),
                              **self.kwargs)
        except (Exception, SystemExit) as exc:
            return zero_reward(_one_line(exc))
        return _normalise(raw)


class _Lane:
    """One worker slot's queue of in-flight items, oldest first."""

    def __init__(self, slot: int):
        self.slot = slot
        self.pending: deque[tuple[int, ray.ObjectRef]] = deque()
        self.since = 0.0        # when the head item started, as far as the caller can tell


class RewardService:
    """Score batches of episodes on ``num_workers`` Ray actors with a per-item ``timeout_s``."""

    def __init__(self, num_workers: int = 2, timeout_s: float = 30.0, scorer=None,
                 config: RewardConfig | None = None, num_cpus: float = 0.5, scheduling_strategy=None,
                 actor_options=None):
        """``scheduling_strategy``: where every worker goes; ``actor_options(i)``: Ray options of
        worker ``i`` on top (e.g. its placement-group bundle, from
        :meth:`~longvideo_r1.cluster.resources.PlacementGroups.actor_options`), kept by its replacements."""
        if not ray.is_initialized():
            raise InputError("the reward service needs Ray: call ray.init() (or run inside a Ray job)")
        if not isinstance(num_workers, int) or num_workers < 1:
            raise InputError(f"reward service num_workers={num_workers!r}: give 1 or more")
        if not isinstance(timeout_s, Real) or not timeout_s > 0:
            raise InputError(f"reward service timeout_s={timeout_s!r}: give a number of seconds above 0")
        if config is not None and not isinstance(config, RewardConfig):
            raise InputError(f"reward service config={config!r}: give a RewardConfig")
        if isinstance(scorer, str):
            where, sep, name = scorer.rpartition(":")
            if sep and where.endswith(".py") and os.path.isfile(where):
                scorer = f"{os.path.abspath(where)}:{name}"   # workers may not share our directory
        elif scorer is not None and not callable(scorer):
            raise InputError(f"reward scorer {scorer!r}: give a callable, 'path/to/file.py:function' "
                             "or 'module:function'")
        self.timeout_s = float(timeout_s)
        options = {"num_cpus": num_cpus, "max_restarts": 0, "max_task_retries": 0}
        if scheduling_strategy is not None:     # e.g. the reward role's placement-group bundle
            options["scheduling_strategy"] = scheduling_strategy
        self._group: ActorGroup | None = ActorGroup(
            RewardWorker, num_workers, (scorer, asdict(config) if config is not None else {}), options=options,
            slot_options=actor_options, ready_timeout=START_TIMEOUT_S, what="reward workers")
        try:
            problems = self._group.start()
        except RayError as exc:
            raise InputError(f"reward workers could not be started: {_one_line(exc)}") from None
        problem = next((p for p in problems if p), None)
        if problem:
            self._group.shutdown()
            raise InputError(problem)

    # -- workers

    @property
    def workers(self) -> list:
        """The worker actor of each slot (None where one could not be restarted); [] after shutdown."""
        return self._group.actors if self._group is not None else []

    def _replace(self, slot: int) -> None:
        """Kill the worker in ``slot`` (if any) and start a fresh one; None there if that fails."""
        try:
            problem = self._group.restart(slot)
        except (InputError, RayError) as exc:
            logger.error("reward worker %d could not be restarted: %s", slot, _one_line(exc))
            return
        if problem:     # the scorer loaded before; a replacement that cannot load it is no worker
            self._group.kill(slot)
            logger.error("reward worker %d could not be restarted: %s", slot, problem)

    def shutdown(self) -> None:
        """Kill every worker; the service cannot be used afterwards."""
        if self._group is not None:
            self._group.shutdown()
            self._group = None

    # -- scoring

    def score(self, items: list[dict]) -> list[dict]:
        """Score ``{"data_source", "solution_str", "ground_truth", "extra_info"}`` items, in order.

        Each result holds ``score``, ``answer_reward``, ``f1_reward``, ``repeat_reward`` (floats) and
        ``error`` (None, or one line saying why the item got zero reward). Never raises for an item.
        """
        if not self.workers:
            raise InputError("the reward service was shut down; create a new RewardService")
        items = list(items)
        results: list[dict | None] = [None] * len(items)
        runnable = []
        for i, item in enumerate(items):
            problem = _item_problem(item)
            if problem:
                results[i] = self._fail(i, item, problem)
            else:
                runnable.append(i)
        for slot, actor in enumerate(self.workers):
            if actor is None:       # lost in an earlier batch and not restarted then
                self._replace(slot)
        live = [slot for slot, actor in enumerate(self.workers) if actor is not None]
        if not live:
            for i in runnable:
                results[i] = self._fail(i, items[i], "no reward worker could be started")
            return results
        lanes = [_Lane(slot) for slot in live]
        for k, i in enumerate(runnable):
            lanes[k % len(lanes)].pending.append((i, None))
        for lane in lanes:
            self._submit(lane, items, results)
        while True:
            now = time.monotonic()
            for lane in lanes:
                if lane.pending and now - lane.since >= self.timeout_s:
                    i, _ = lane.pending.popleft()
                    results[i] = self._fail(i, items[i], f"timed out after {self.timeout_s:g}s")
                    self._replace(lane.slot)
                    self._submit(lane, items, results)
            active = [lane for lane in lanes if lane.pending]
            if not active:
                return results
            heads = {lane.pending[0][1]: lane for lane in active}
            wait = min(lane.since for lane in active) + self.timeout_s - time.monotonic()
            ready, _ = ray.wait(list(heads), num_returns=1, timeout=max(0.0, wait))
            for ref in ready:
                self._drain(heads[ref], items, results)

    def _submit(self, lane: _Lane, items: list, results: list) -> None:
        """(Re)send the lane's pending items to its worker, in order."""
        actor = self.workers[lane.slot]
        if actor is None:
            while lane.pending:
                i, _ = lane.pending.popleft()
                results[i] = self._fail(i, items[i], "its reward worker could not be restarted")
            return
        lane.pending = deque((i, actor.score.remote(items[i])) for i, _ in lane.pending)
        lane.since = time.monotonic()

    def _drain(self, lane: _Lane, items: list, results: list) -> None:
        """Collect the finished items at the front of a lane."""
        while lane.pending:
            refs = [ref for _, ref in islice(lane.pending, _DRAIN_WINDOW)]
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            ready = set(ready)
            count = 0
            while count < len(refs) and refs[count] in ready:
                count += 1
            for _ in range(count):
                i, ref = lane.pending.popleft()
                try:
                    results[i] = ray.get(ref)
                except RayActorError as exc:
                    # The worker died on this item; those queued behind it go to a fresh worker.
                    results[i] = self._fail(i, items[i], f"the reward worker died while scoring it ({_one_line(exc)})")
                    self._replace(lane.slot)
                    self._submit(lane, items, results)
                    return
                except RayError as exc:
                    results[i] = self._fail(i, items[i], _one_line(exc))
                else:
                    if results[i]["error"]:
                        self._log(i, items[i], results[i]["error"])
            lane.since = time.monotonic()
            if count < len(refs):
                return

    @staticmethod
    def _log(i: int, item, error: str) -> None:
        source = item.get("data_source") if isinstance(item, dict) else None
        logger.warning("reward item %d (data source %r) scored zero: %s", i, source, error)

    def _fail(self, i: int, item, error: str) -> dict:
        self._log(i, item, error)
        return zero_reward(error)


def _item_problem(item) -> str | None:
    if not isinstance(item, dict):
        return (f"the item is a {type(item).__name__}, not a dict with data_source, solution_str, "
                "ground_truth and extra_info")
    missing = [k for k in ITEM_KEYS if k not in item]
    return f"the item lacks {', '.join(missing)}" if missing else None
