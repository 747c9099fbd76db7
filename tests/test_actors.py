"""ActorGroup on a real local Ray: slots keep their options across a restart; a slow start is a clear error."""

from __future__ import annotations

import os
import time

import pytest
import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from longvideo_r1.actors import ActorGroup
from longvideo_r1.errors import InputError


class Probe:
    """Says where it runs: its slot, process, bundle, thread settings."""

    def __init__(self, slot: int, sleep_s: float = 0.0):
        time.sleep(sleep_s)
        self.slot = slot

    def ready(self) -> dict:
        context = ray.get_runtime_context()
        return {"slot": self.slot, "pid": os.getpid(), "group": context.get_placement_group_id(),
                "cpus": context.get_assigned_resources().get("CPU"),
                "omp": os.environ.get("OMP_NUM_THREADS"), "tokenizers": os.environ.get("TOKENIZERS_PARALLELISM")}

    def torch_threads(self) -> int:
        import torch

        return torch.get_num_threads()


def test_slots_start_in_their_bundles_and_a_restarted_slot_keeps_its_options(ray_local):
    sizes = [0.25, 0.5]                 # bundles of different sizes tell which one an actor sits in
    pg = placement_group([{"CPU": c} for c in sizes])
    ray.get(pg.ready())

    def slot_options(slot):            # slot 0 in bundle 1 and slot 1 in bundle 0, each filling it
        return {"num_cpus": sizes[1 - slot], "scheduling_strategy": PlacementGroupSchedulingStrategy(
            placement_group=pg, placement_group_bundle_index=1 - slot)}

    group = ActorGroup(Probe, 2, args=lambda slot: (slot,), options={"num_cpus": 1}, slot_options=slot_options,
                       threads=2, env={"TOKENIZERS_PARALLELISM": "false"}, what="probes")
    try:
        first = group.start()
        assert [r["slot"] for r in first] == [0, 1]
        assert [(r["group"], r["cpus"]) for r in first] == [(pg.id.hex(), 0.5), (pg.id.hex(), 0.25)]
        # a fractional CPU ask would give one thread (Ray's default); the group's setting wins
        assert all(r["omp"] == "2" and r["tokenizers"] == "false" for r in first)
        assert ray.get(group[0].torch_threads.remote()) == 2

        victim = group[1]
        ray.kill(victim, no_restart=True)
        assert group.slot_of(victim) == 1
        again = group.restart(1)
        assert group[1] is not victim and group[0] is not None
        assert again["slot"] == 1 and again["pid"] != first[1]["pid"]
        assert (again["group"], again["cpus"]) == (pg.id.hex(), 0.25)
        with pytest.raises(ValueError, match="not in the group"):
            group.slot_of(victim)
        assert ray.get(group[0].ready.remote())["pid"] == first[0]["pid"]     # the other slot untouched
    finally:
        group.shutdown()
        remove_placement_group(pg)
    assert list(group) == [None, None]


def test_actors_that_cannot_be_scheduled_are_a_clear_error_and_are_killed(ray_local):
    group = ActorGroup(Probe, 2, args=(0,), options={"num_cpus": 1.5}, ready_timeout=3.0, what="probes")
    start = time.monotonic()
    # one of them can never be scheduled (2 × 1.5 CPUs on 2); the other may or may not be up within 3 s
    with pytest.raises(InputError, match=r"probes: [12] of 2 did not start within 3 s; check the cluster has 1.5 CPUs"):
        group.start()
    assert time.monotonic() - start < 15
    assert list(group) == [None, None]
    deadline = time.monotonic() + 10          # Ray frees a killed actor's CPUs shortly after the kill
    while ray.available_resources().get("CPU", 0) < 2.0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == pytest.approx(2.0)   # nothing left holding CPUs


def test_a_slow_restart_empties_the_slot(ray_local):
    sleeps = iter([0.0, 60.0])          # the first start is quick, the restart hangs
    group = ActorGroup(Probe, 1, args=lambda slot: (slot, next(sleeps)), options={"num_cpus": 0.1},
                       ready_timeout=5.0, what="probes")
    try:
        group.start()
        with pytest.raises(InputError, match="did not start within 5 s"):
            group.restart(0)
        assert group[0] is None
    finally:
        group.shutdown()

