"""Serve a caption store from Ray actors, each owning a group of shards; a client routes by video id.

Shard ``k`` belongs to actor ``k mod num_actors``. Actors are stateless beyond their caches (they
read the immutable shard files), so Ray restarts a dead one and retries the call that failed.
Errors caused by the request (unknown video, ids out of range) come back as values and are raised
in the caller as :class:`InputError`, never as a Ray task failure.
"""

from __future__ import annotations

import ray

from longvideo_r1.actors import ActorGroup
from longvideo_r1.corpus.store import (
    Caption,
    CaptionStore,
    VideoRecord,
    read_manifest,
    shard_of,
)
from longvideo_r1.errors import InputError


class CaptionShardServer:
    """The body of a serving actor: a :class:`CaptionStore` restricted to some shards."""

    def __init__(self, root: str, shards: list[int], cache_size: int = 65536):
        self.store = CaptionStore(root, shards=shards, cache_size=cache_size)

    def ready(self) -> bool:
        return True

    def get(self, video_id: str, ids) -> Caption | InputError:
        try:
            return self.store.get(video_id, ids)
        except InputError as exc:
            return exc

    def get_many(self, queries: list[tuple[str, tuple[int, ...]]]) -> list[Caption | InputError]:
        return [self.get(video_id, ids) for video_id, ids in queries]

    def video(self, video_id: str) -> VideoRecord | InputError:
        try:
            return self.store.video(video_id)
        except InputError as exc:
            return exc

    def memory(self) -> dict:
        import psutil

        return {"rss_bytes": psutil.Process().memory_info().rss, "cache_entries": len(self.store._cache),
                "hits": self.store.hits, "misses": self.store.misses}


def _unwrap(value):
    if isinstance(value, InputError):
        raise InputError(str(value))
    return value


class ServedCaptions:
    """A caption source over the serving actors that travels to other processes (rollout workers on
    nodes that do not see the store's files): it holds only the actors' handles.

    Lookups are batched: :meth:`prefetch` fetches many segments with one call per serving actor
    and keeps them for the ``get`` calls that follow (the episode runner prefetches every
    ``get_caption`` of a generation step at once); a ``get`` that was not prefetched is one call.
    Video records are immutable and cached."""

    def __init__(self, actors: list, num_shards: int):
        self.actors, self.num_shards = list(actors), num_shards
        self._videos: dict = {}
        self._ready: dict = {}
        self.calls = 0
        """actor round trips made (a measure of the batching)"""

    def _actor(self, video_id: str):
        return self.actors[shard_of(video_id, self.num_shards) % len(self.actors)]

    def video(self, video_id: str) -> VideoRecord:
        if video_id not in self._videos:
            self.calls += 1
            self._videos[video_id] = _unwrap(ray.get(self._actor(video_id).video.remote(video_id)))
        return self._videos[video_id]

    def get(self, video_id: str, ids) -> Caption:
        found = self._ready.get((video_id, tuple(ids)))
        if found is not None:
            return _unwrap(found)
        self.calls += 1
        return _unwrap(ray.get(self._actor(video_id).get.remote(video_id, tuple(ids))))

    def get_many(self, queries: list[tuple[str, tuple[int, ...]]]) -> list[Caption | InputError]:
        """Many segments with one call per actor; errors are returned in place, not raised."""
        groups: dict[int, list[int]] = {}
        for i, (video_id, _) in enumerate(queries):
            groups.setdefault(shard_of(video_id, self.num_shards) % len(self.actors), []).append(i)
        refs = {a: self.actors[a].get_many.remote([(queries[i][0], tuple(queries[i][1])) for i in idx])
                for a, idx in groups.items()}
        self.calls += len(refs)
        out: list = [None] * len(queries)
        for a, idx in groups.items():
            for i, value in zip(idx, ray.get(refs[a])):
                out[i] = InputError(str(value)) if isinstance(value, InputError) else value
        return out

    def prefetch(self, queries: list[tuple[str, tuple[int, ...]]]) -> None:
        """Fetch these segments now (one call per actor); ``get`` answers them from here until the next
        prefetch (the episode runner's next generation step)."""
        queries = list(dict.fromkeys((v, tuple(ids)) for v, ids in queries))
        self._ready = dict(zip(queries, self.get_many(queries))) if queries else {}


class CaptionStoreClient:
    """Start ``num_actors`` serving actors for a store and route lookups to them by video id."""

    def __init__(self, root: str, num_actors: int = 2, cache_size: int = 65536, num_cpus: float = 0.5,
                 name_prefix: str | None = None, actor_options=None, start_timeout: float = 120.0):
        """``actor_options(a)``: Ray options of actor ``a`` (e.g. its placement-group bundle, from
        :meth:`~longvideo_r1.cluster.resources.PlacementGroups.actor_options`); ``name_prefix``
        names actor ``a`` ``{name_prefix}-{a}``."""
        if not ray.is_initialized():
            raise InputError("the caption store client needs Ray: call ray.init() (or run inside a Ray job)")
        manifest = read_manifest(root)  # fail here, not inside the actors, on a bad store path
        self.num_shards = manifest["num_shards"]
        self.num_actors = max(1, min(num_actors, self.num_shards))

        def slot_options(a: int) -> dict:
            options = dict(actor_options(a)) if actor_options else {}
            if name_prefix:
                options["name"] = f"{name_prefix}-{a}"
            return options

        # Actor a owns shards a, a + num_actors, …; Ray itself restarts a dead one and retries the
        # call (they hold nothing but caches).
        self.group = ActorGroup(CaptionShardServer, self.num_actors,
                                lambda a: (str(root), list(range(a, self.num_shards, self.num_actors)), cache_size),
                                options={"num_cpus": num_cpus, "max_restarts": -1, "max_task_retries": 3},
                                slot_options=slot_options, ready_timeout=start_timeout, what="caption store servers")
        self.group.start()

    @property
    def actors(self) -> list:
        return self.group.actors

    def actor_for(self, video_id: str):
        return self.actors[shard_of(video_id, self.num_shards) % self.num_actors]

    def get_async(self, video_id: str, ids) -> ray.ObjectRef:
        return self.actor_for(video_id).get.remote(video_id, tuple(ids))

    def get(self, video_id: str, ids) -> Caption:
        return _unwrap(ray.get(self.get_async(video_id, ids)))

    def video(self, video_id: str) -> VideoRecord:
        return _unwrap(ray.get(self.actor_for(video_id).video.remote(video_id)))

    def get_many(self, queries: list[tuple[str, tuple[int, ...]]]) -> list[Caption | InputError]:
        """Look up many segments with one call per actor; errors are returned in place, not raised."""
        return self.handles().get_many(queries)

    def handles(self) -> ServedCaptions:
        """A caption source over these actors that can be sent to other actors (rollout workers)."""
        return ServedCaptions(self.actors, self.num_shards)

    def memory(self) -> list[dict]:
        return ray.get([actor.memory.remote() for actor in self.actors])

    def shutdown(self) -> None:
        self.group.shutdown()

