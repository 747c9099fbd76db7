"""Ray actors of one role, one per slot: start them with their slot's options, wait until ready, kill, restart.

Every pool of actors in the platform (rollout workers, reward scorers, caption-store servers,
learner ranks) starts its actors the same way; :class:`ActorGroup` is that one way. A *slot* is a
position in the group (a rank, a worker index) and keeps its Ray options for good, above all its
placement-group bundle, so an actor restarted in a slot lands where the first one did.

The thread environment travels as the actor's environment: ``OMP_NUM_THREADS`` set in a runtime
env wins over Ray's default (Ray sets it to the actor's ``num_cpus``, 1 for a fractional ask) and
torch sizes its intra-op pool from it at import, so the actor needs no ``torch.set_num_threads``.

This module sits in the bottom layer next to :mod:`~longvideo_r1.errors` (not in ``cluster``):
``corpus`` uses it and may import only the bottom layer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from longvideo_r1.errors import InputError

log = logging.getLogger("longvideo_r1.actors")


def init_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Join the Ray cluster at ``address`` or, without one, start a local Ray of ``num_cpus`` logical
    CPUs (default: the machine's cores) with no dashboard. Inside a Ray job the actors' log lines go
    to the driver, so `ray job logs` shows them. Returns False (and does nothing) when Ray is already
    initialised, True when this call initialised it."""
    import os

    import ray

    from longvideo_r1.logs import ray_log_to_driver

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")   # else Ray rewrites 127.0.0.1
    if address:
        ray.init(address=address, log_to_driver=ray_log_to_driver())
    else:
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                 log_to_driver=ray_log_to_driver())
    return True


def _with_worker_logging(cls):
    """``cls`` whose actors first give their ``longvideo_r1`` loggers a handler on stderr (Ray leaves
    them without one), which Ray forwards to the driver when it asked for it: so actor logs reach
    ``ray job logs``. (Ray's ``worker_process_setup_hook`` is not run for an actor's own runtime env.)"""

    class Logged(cls):
        def __init__(self, *args, **kwargs):
            from longvideo_r1.logs import setup_worker_logging

            setup_worker_logging()
            super().__init__(*args, **kwargs)

    Logged.__name__, Logged.__qualname__, Logged.__doc__ = cls.__name__, cls.__qualname__, cls.__doc__
    return Logged


class ActorGroup:
    """``count`` actors of class ``cls``, each started as ``cls(*args(slot))`` with its slot's Ray options.

    ``options``: Ray options of every slot (``num_cpus``, ``num_gpus``, ``max_restarts``, …);
    ``slot_options(slot)``: the options of one slot on top of them (its ``scheduling_strategy``,
    a ``name``); ``args(slot)``: the constructor arguments of a slot (the same for all if a tuple).
    ``threads`` > 0 sets ``OMP_NUM_THREADS`` (and so torch's thread count) in the actors; ``env``
    adds environment variables (``DS_ACCELERATOR``, ``TOKENIZERS_PARALLELISM``).
    The class must have a ``ready()`` method: :meth:`start` and :meth:`restart` return what it
    returns once the actor is up. ``what`` names the actors in errors ("reward workers").
    """

    def __init__(self, cls, count: int, args: tuple | Callable[[int], tuple] = (), *, options: dict | None = None,
                 slot_options: Callable[[int], dict] | None = None, threads: int = 0, env: dict | None = None,
                 ready_timeout: float = 600.0, what: str = "actors"):
        import ray

        if not ray.is_initialized():
            raise InputError(f"{what} need Ray: call ray.init() (or run inside a Ray job)")
        if not isinstance(count, int) or count < 1:
            raise InputError(f"{what}: need at least one, got {count!r}")
        self.remote_cls = ray.remote(_with_worker_logging(cls))   # .options() of this, once per actor (DEVELOPERS.md)
        self.args = args if callable(args) else (lambda slot: args)
        self.options = dict(options or {})
        self.slot_options = slot_options or (lambda slot: {})
        from longvideo_r1.logs import worker_env

        # the driver's log level, when it is not the actors' default (an actor with no runtime env of its
        # own can reuse one of Ray's idle worker processes instead of starting a new one)
        configured = logging.getLogger("longvideo_r1").level not in (logging.NOTSET, logging.INFO)
        level = worker_env() if configured else {}
        env = {**level, **(env or {})}
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        if env:
            runtime_env = dict(self.options.get("runtime_env") or {})
            runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **env}
            self.options["runtime_env"] = runtime_env
        self.ready_timeout = ready_timeout
        self.what = what
        self.actors: list = [None] * count

    # -------------------------------------------------------------------- the slots

    def __len__(self) -> int:
        return len(self.actors)

    def __getitem__(self, slot: int):
        return self.actors[slot]

    def __iter__(self):
        return iter(self.actors)

    def slot_of(self, actor) -> int:
        """The slot ``actor`` was started in; ValueError if it is no longer in the group."""
        for slot, a in enumerate(self.actors):
            if a is not None and a is actor:
                return slot
        raise ValueError(f"{self.what}: this actor is not in the group (killed or replaced)")

    def options_of(self, slot: int) -> dict:
        return {**self.options, **self.slot_options(slot)}

    # -------------------------------------------------------------------- life cycle

    def spawn(self, slot: int):
        """Start an actor in ``slot`` (not waiting for it); the slot's old actor, if any, is killed."""
        self.kill(slot)
        self.actors[slot] = self.remote_cls.options(**self.options_of(slot)).remote(*self.args(slot))
        return self.actors[slot]

    def wait_ready(self, slots: list[int]) -> list:
        """What ``ready()`` returns for each of ``slots``, in order.

        InputError if some did not answer within ``ready_timeout`` (their resources are not free, or
        they are still loading); an error raised while an actor started comes out as Ray raises it.
        """
        import ray

        refs = [self.actors[s].ready.remote() for s in slots]
        _, missing = ray.wait(refs, num_returns=len(refs), timeout=self.ready_timeout)
        if missing:
            ask = self.options_of(slots[0])
            raise InputError(f"{self.what}: {len(missing)} of {len(refs)} did not start within "
                             f"{self.ready_timeout:g} s; check the cluster has {ask.get('num_cpus', 1):g} CPUs and "
                             f"{ask.get('num_gpus', 0) or 0:g} GPUs free for each (or that they load faster)")
        return ray.get(refs)

    def start(self) -> list:
        """Start every slot and wait until all are ready; on any failure all are killed again."""
        try:
            for slot in range(len(self.actors)):
                self.spawn(slot)
            return self.wait_ready(list(range(len(self.actors))))
        except BaseException:
            self.shutdown()
            raise

    def restart(self, slot: int):
        """Kill the actor in ``slot`` and start a new one with the same options; what its ``ready()`` returns.

        If the new one fails to start, the slot is left empty (None) and the error propagates.
        """
        self.spawn(slot)
        try:
            return self.wait_ready([slot])[0]
        except BaseException:
            self.kill(slot)
            raise

    def kill(self, slot: int) -> None:
        """Kill the actor in ``slot`` for good (Ray does not restart it); the slot is then empty."""
        import ray
        from ray.exceptions import RayError

        actor, self.actors[slot] = self.actors[slot], None
        if actor is not None:
            try:
                ray.kill(actor, no_restart=True)
            except RayError as exc:   # already gone
                log.debug("%s: slot %d was already gone (%s)", self.what, slot, exc)

    def shutdown(self) -> None:
        """Kill every actor (the group can :meth:`start` again)."""
        for slot in range(len(self.actors)):
            self.kill(slot)
