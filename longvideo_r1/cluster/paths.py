"""Which nodes of the Ray cluster can open a run's paths (checked at start, before any work).

Workers never assume the head's local disk: a path that a node hosting a worker cannot open is an
error at start naming the path and the node, or (for the caption store, ``rl.store_access: auto``)
a reason to serve it from a node that has it.
"""

from __future__ import annotations

from dataclasses import dataclass

from longvideo_r1.errors import InputError

STORE_ACCESS = ("auto", "local", "served")


@dataclass(frozen=True)
class NodeView:
    node_id: str
    address: str
    missing: tuple[str, ...]
    """the checked paths this node cannot open"""


def _probe(paths: list[str]) -> list[str]:
    """What this node cannot open of ``paths`` (local paths, or URIs with this node's credentials)."""
    from longvideo_r1 import storage

    return [p for p in paths if not storage.readable(p)]


def node_views(paths: list[str], timeout_s: float = 60.0) -> list[NodeView]:
    """What every alive node of the cluster can open of ``paths`` (a small task pinned to each node)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0)(_probe)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(list(paths))
            for n in nodes]
    done, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    views = []
    for node, ref in zip(nodes, refs):
        missing = tuple(ray.get(ref)) if ref in done else tuple(f"{p} (no answer within {timeout_s:.0f} s)" for p in paths)
        views.append(NodeView(node["NodeID"], node.get("NodeManagerAddress", "?"), missing))
    return views


def about(views: list[NodeView], *paths: str) -> list[NodeView]:
    """The same views, listing only what is missing of ``paths``."""
    return [NodeView(v.node_id, v.address, tuple(p for p in v.missing if p in paths)) for v in views]


def check_readable(views: list[NodeView], what: dict[str, str]) -> None:
    """Raise InputError naming each path (``what``: path -> config key) a node cannot open."""
    problems = [f"{what.get(p, p)}={p} on node {v.address} ({v.node_id[:8]})"
                for v in views for p in v.missing]
    if problems:
        raise InputError("paths that a node of the cluster cannot open: " + "; ".join(problems) +
                         ". Put them on storage every node mounts (e.g. /shared) or reaches (s3://, gs://: storage.uri), "
                         "or run on one node")


def store_access(mode: str, store: str, views: list[NodeView]) -> tuple[str, list[str]]:
    """``(local|served, node ids that hold the store)``: local when every node opens the store's
    files (``auto``) or when asked; served (caption_store actors on the nodes that have it) otherwise."""
    if mode not in STORE_ACCESS:
        raise InputError(f"config key rl.store_access: {mode!r} is not one of {', '.join(STORE_ACCESS)}")
    holders = [v.node_id for v in views if not v.missing]
    if not holders:
        raise InputError(f"caption store {store}: no node of the cluster can open it "
                         f"({', '.join(v.address for v in views)}); check the path (rl store / data.store)")
    if mode == "local":
        check_readable(views, {store: "caption store"})
        return "local", holders
    if mode == "served" or len(holders) < len(views):
        return "served", holders
    return "local", holders
