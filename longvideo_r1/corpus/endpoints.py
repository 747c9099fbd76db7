"""The captioning endpoints of one build: who may send the next request where, and what the requests did.

:class:`EndpointSlots` holds, for a list of OpenAI-compatible base URLs, how many requests are in
flight at each (never more than ``limit`` per endpoint) and the statistics of every request
(latency of the successful ones, failed attempts, retries). Every request of a build takes a slot
first (:meth:`EndpointSlots.acquire` picks the endpoint with the most free slots, avoiding the one
that just failed when another has room) and gives it back with its outcome. The same object serves
three ways, so the limit holds for the whole build:

- in the process that captions (one video at a time, no Ray);
- from a ``multiprocessing`` manager, to the local worker processes (``workers`` > 1, no Ray);
- as one Ray actor (threaded: a waiting ``acquire`` holds one of its threads), to the Ray tasks of a
  build on a cluster (:class:`RaySlots` is the tasks' handle on it).

:func:`check_reachable` is asked before a build starts, so an endpoint nobody listens at is one
error line, not one failed video after another.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections import deque

import numpy as np

from longvideo_r1.errors import InputError
from longvideo_r1.openai_client import chat_base_url

LATENCY_WINDOW = 100_000
"""successful requests whose latencies the percentiles are taken over (the most recent ones)"""


class EndpointSlots:
    """At most ``limit`` requests in flight at each of ``endpoints``, and the statistics of the requests."""

    def __init__(self, endpoints: list[str], limit: int):
        if not endpoints:
            raise InputError("captions endpoints: the list is empty; give at least one base URL such as "
                             "http://127.0.0.1:8000/v1")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InputError(f"captions concurrency_per_endpoint: must be a whole number, at least 1, got {limit!r}")
        self.endpoints = list(endpoints)
        self.limit = limit
        self._busy = [0] * len(self.endpoints)
        self._free = threading.Condition()
        self._latency: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._ok = [0] * len(self.endpoints)
        self._failed = [0] * len(self.endpoints)
        self._most_busy = [0] * len(self.endpoints)
        self._retries = 0

    def ready(self) -> int:
        return len(self.endpoints)

    def acquire(self, avoid: int | None = None, wait: float = 1.0) -> int | None:
        """The index of an endpoint with a free slot, now taken; None if none freed within ``wait`` s
        (the caller asks again, so it can stop in between). ``avoid``: an endpoint that just failed,
        taken only when no other one has a free slot."""
        deadline = time.monotonic() + wait
        with self._free:
            while True:
                free = [self.limit - busy for busy in self._busy]
                order = sorted(range(len(free)), key=lambda i: (i == avoid, -free[i], i))
                if free[order[0]] > 0:
                    slot = order[0]
                    self._busy[slot] += 1
                    self._most_busy[slot] = max(self._most_busy[slot], self._busy[slot])
                    return slot
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._free.wait(left)

    def release(self, slot: int, seconds: float | None, retry: bool = False) -> None:
        """Give back ``slot``: ``seconds`` of a successful request, or None for a failed attempt
        (``retry``: it will be tried again)."""
        with self._free:
            self._busy[slot] -= 1
            if seconds is None:
                self._failed[slot] += 1
                self._retries += bool(retry)
            else:
                self._ok[slot] += 1
                self._latency.append(seconds)
            self._free.notify()

    def stats(self) -> dict:
        """Requests done, failed attempts, retries, latency p50/p99 (s) and per endpoint its counts."""
        with self._free:
            latency = np.asarray(self._latency, dtype=float)
            per_endpoint = {url: {"requests": ok, "failed": failed, "max_in_flight": most, "in_flight": busy}
                            for url, ok, failed, most, busy in zip(self.endpoints, self._ok, self._failed,
                                                                   self._most_busy, self._busy)}
            return {"requests": sum(self._ok), "failed": sum(self._failed), "retries": self._retries,
                    "in_flight": sum(self._busy),
                    "latency_p50_s": float(np.percentile(latency, 50)) if latency.size else None,
                    "latency_p99_s": float(np.percentile(latency, 99)) if latency.size else None,
                    "per_endpoint": per_endpoint}


class RaySlots:
    """A Ray task's handle on the :class:`EndpointSlots` actor of its build (same methods)."""

    def __init__(self, actor):
        self.actor = actor

    def acquire(self, avoid: int | None = None, wait: float = 1.0) -> int | None:
        import ray

        return ray.get(self.actor.acquire.remote(avoid, wait))

    def release(self, slot: int, seconds: float | None, retry: bool = False) -> None:
        import ray

        # waited for (~1 ms), so the build's figures, read when its last video is in, count every request
        ray.get(self.actor.release.remote(slot, seconds, retry))

    def stats(self) -> dict:
        import ray

        return ray.get(self.actor.stats.remote())


def endpoint_list(endpoint) -> list[str]:
    """``endpoint`` (one base URL or a list of them) as a list of ``http(s)://…/v1`` base URLs;
    :class:`InputError` naming the bad entry otherwise."""
    urls = [endpoint] if isinstance(endpoint, str) else endpoint
    if not isinstance(urls, (list, tuple)) or not urls:
        raise InputError(f"captions endpoints: {endpoint!r} is not a list of base URLs; give one or more, e.g. "
                         "[http://10.0.0.5:8000/v1, http://10.0.0.6:8000/v1]")
    out = []
    for url in urls:
        if not isinstance(url, str):
            raise InputError(f"captions endpoints: {url!r} is not a URL; give base URLs such as http://127.0.0.1:8000/v1")
        base = chat_base_url(url, "captions endpoints")
        if base in out:
            raise InputError(f"captions endpoints: {url} is listed twice; give each server once (raise "
                             "concurrency_per_endpoint to send it more)")
        out.append(base)
    return out


def check_reachable(endpoints: list[str], timeout: float = 10.0) -> None:
    """Refuse, on one line, an endpoint that nobody answers at (``GET {base}/models``; any HTTP answer,
    even an error status, counts as reachable)."""
    for base in endpoints:
        try:
            with urllib.request.urlopen(base + "/models", timeout=timeout):
                pass
        except urllib.error.HTTPError:
            pass    # a server answered
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise InputError(f"captions endpoint {base}: unreachable ({reason}); start the server there, or fix "
                             "or remove it from the endpoints (captions.endpoints / --endpoint)") from None
