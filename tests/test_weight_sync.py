"""Weights over a collective (rl.weight_sync: collective): the bucket plan, the group, and the real thing
between a DeepSpeed learner and vLLM rollout workers on gloo, including a worker dying mid-sync."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from longvideo_r1.errors import InputError
from longvideo_r1.rollout.weight_sync import ALIGN, SyncGroup, choose_backend, pack, plan_buckets, unpack
from longvideo_r1.trainer.weight_sync import choose_mode

# ---------------------------------------------------------------------------------------------- plan


def test_buckets_keep_model_order_align_offsets_and_give_a_big_tensor_its_own_bucket():
    params = [("a", (3, 5), ()), ("b", (7,), ()), ("big", (100, 100), ()), ("c", (2, 2), ("c_alias",))]
    plan = plan_buckets(params, "float32", bucket_bytes=1024)
    assert [[e.name for e in b.entries] for b in plan.buckets] == [["a", "b"], ["big"], ["c"]]
    a, b = plan.buckets[0].entries
    assert (a.offset, a.nbytes) == (0, 60) and b.offset == ALIGN and b.nbytes == 28
    assert plan.buckets[1].entries[0].nbytes == 40000 > 1024           # oversize: alone, not refused
    assert all(e.offset % ALIGN == 0 for bk in plan.buckets for e in bk.entries)
    assert plan.names == ["a", "b", "big", "c", "c_alias"]
    assert plan_buckets(params, "bfloat16", 1024).buckets[0].entries[0].nbytes == 30


def test_pack_and_unpack_round_trip_casting_to_the_engine_dtype_and_sharing_aliases():
    torch.manual_seed(0)
    tensors = {"w": torch.randn(4, 3), "v": torch.randn(5), "e": torch.randn(6, 2)}
    plan = plan_buckets([("w", (4, 3), ()), ("v", (5,), ()), ("e", (6, 2), ("lm_head.weight",))], "float32", 1 << 20)
    (bucket,) = plan.buckets
    got = dict(unpack(pack(bucket, [tensors[e.name] for e in bucket.entries], "float32", "cpu"), bucket, "float32"))
    assert set(got) == {"w", "v", "e", "lm_head.weight"}
    for name in tensors:
        assert torch.equal(got[name], tensors[name])
    assert got["lm_head.weight"].data_ptr() == got["e"].data_ptr()      # one copy, loaded under both names
    half = plan_buckets([("w", (4, 3), ())], "bfloat16", 1 << 20).buckets[0]
    back = dict(unpack(pack(half, [tensors["w"]], "bfloat16", "cpu"), half, "bfloat16"))["w"]
    assert back.dtype == torch.bfloat16 and torch.equal(back, tensors["w"].to(torch.bfloat16))
    with pytest.raises(RuntimeError, match="shape"):
        pack(half, [torch.zeros(3, 4)], "bfloat16", "cpu")


def test_modes_and_backends_are_chosen_by_the_hardware_and_bad_ones_are_named():
    assert choose_mode("auto", on_gpu=True) == "collective" and choose_mode("auto", on_gpu=False) == "object_store"
    assert choose_backend("auto", on_gpu=True, colocated=False) == "nccl"
    assert choose_backend("auto", on_gpu=True, colocated=True) == "gloo"     # NCCL refuses two ranks on one GPU
    assert choose_backend("auto", on_gpu=False, colocated=False) == "gloo"
    with pytest.raises(InputError, match="rl.weight_sync"):
        choose_mode("nccl", on_gpu=True)
    with pytest.raises(InputError, match="gloo"):
        choose_backend("nccl", on_gpu=False, colocated=False)
    with pytest.raises(InputError, match="bucket"):
        plan_buckets([("a", (1,), ())], "float32", 0)


def test_engines_sleep_while_the_learner_trains_only_where_they_share_gpus_with_it():
    from longvideo_r1.trainer.weight_sync import choose_sleep

    assert choose_sleep("auto", on_gpu=True, colocated=True) is True
    assert choose_sleep("auto", on_gpu=True, colocated=False) is False      # own GPUs: nothing to free
    assert choose_sleep("auto", on_gpu=False, colocated=True) is False      # CPU: vLLM has no sleep mode
    assert choose_sleep("auto", on_gpu=True, colocated=True, engine="transformers") is False
    assert choose_sleep("always", on_gpu=True, colocated=False) is True
    assert choose_sleep("never", on_gpu=True, colocated=True) is False
    with pytest.raises(InputError, match="rl.rollout_sleep: always needs vLLM rollout engines on GPUs"):
        choose_sleep("always", on_gpu=False, colocated=True)
    with pytest.raises(InputError, match="rl.rollout_sleep: 'on' is not one of auto, always, never"):
        choose_sleep("on", on_gpu=True, colocated=True)


def test_config_refuses_a_bad_weight_sync_before_anything_starts():
    from longvideo_r1.platform.config import load_config

    with pytest.raises(InputError, match="rl.weight_sync"):
        load_config(["configs/demo-cpu.yaml"], ["rl.weight_sync=broadcast"])
    with pytest.raises(InputError, match="nccl needs GPUs"):
        load_config(["configs/demo-cpu.yaml"], ["rl.weight_sync_backend=nccl"])
    assert load_config(["configs/demo-cpu.yaml"], ["rl.weight_sync=collective"]).rl.weight_sync == "collective"
    with pytest.raises(InputError, match="rl.rollout_sleep: always needs vLLM rollout engines on GPUs"):
        load_config(["configs/demo-cpu.yaml"], ["rl.rollout_sleep=always"])


# ---------------------------------------------------------------------------------------------- group


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_gloo_group_broadcasts_and_an_abort_fails_the_peers_wait_at_once():
    port, got, errors = _free_port(), [], []
    groups: dict[int, SyncGroup] = {}
    second = threading.Event()

    def member(rank):
        g = groups[rank] = SyncGroup("127.0.0.1", port, rank, 3, "gloo", timeout_s=60)
        buf = torch.arange(8, dtype=torch.uint8) if rank == 0 else torch.zeros(8, dtype=torch.uint8)
        g.broadcast(buf)
        got.append(buf.tolist())
        if rank == 0:
            second.wait(30)
            g.close(abort=True)          # the sender gives up: the receivers must not sit out their timeout
            return
        second.set()
        t0 = time.perf_counter()
        try:
            g.broadcast(torch.zeros(8, dtype=torch.uint8))
        except RuntimeError as exc:
            errors.append((str(exc), time.perf_counter() - t0))

    threads = [threading.Thread(target=member, args=(r,)) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert got == [list(range(8))] * 3
    assert len(errors) == 2 and all(seconds < 30 for _, seconds in errors)   # well before the 60 s timeout


# ---------------------------------------------------------------------------------------------- the real thing


@pytest.fixture(scope="module")
def sync_setup(tiny_navigator_dir, rollout_tools):
    """Two vLLM rollout workers on the *random* base weights, a learner holding the trained navigator."""
    import ray

    from longvideo_r1.rollout.episodes import RolloutConfig
    from longvideo_r1.rollout.workers import RolloutPool, WorkerSpec
    from longvideo_r1.trainer.learner import LearnerConfig
    from longvideo_r1.trainer.learner_group import LearnerGroup
    from longvideo_r1.trainer.weight_sync import WeightSync

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    base = tiny_navigator_dir.parent / "base"
    spec = WorkerSpec(model=str(base), store=str(rollout_tools.captions.root), num_cpus=1,
                      rollout=RolloutConfig(engine="vllm", engine_options={"max_model_len": 4096}, video_qa="none"))
    pool = RolloutPool(spec, num_workers=2)
    learner = LearnerGroup(LearnerConfig(model=str(tiny_navigator_dir), micro_batch_tokens=4096), num_cpus=1)
    # small buckets: the tiny model goes out in several, so a death can land between two of them
    sync = WeightSync(learner, pool, "collective", "gloo", bucket_mb=0.25, timeout_s=20, retries=1)
    yield pool, learner, sync
    sync.close()
    pool.shutdown()
    learner.shutdown()
    ray.shutdown()


def _questions(count):
    from tests.navigator import question

    return [question("vid_a" if i % 2 == 0 else "vid_b", f"q{i}") for i in range(count)]


def _greedy():
    from longvideo_r1.rollout.episodes import RolloutConfig

    return RolloutConfig(n=1, max_rounds=4, temperature=0.0)


def _drift(pool, learner) -> float:
    """Largest |engine log-prob − learner log-prob| over the sampled tokens of a few episodes per worker."""
    import ray

    from longvideo_r1.rollout.episodes import to_batch

    episodes = [e for w in pool.workers
                for e in ray.get(w.rollout.remote(_questions(2), _greedy(), 0))[0]]
    batch = to_batch(episodes, pad_id=0)
    mask = batch["loss_mask"].bool()
    assert mask.sum() > 0
    return float((learner.logprobs(batch) - batch["old_logprobs"])[mask].abs().max())


@pytest.mark.slow
def test_after_a_collective_sync_the_engines_sample_with_the_learners_weights(sync_setup):
    pool, learner, sync = sync_setup
    from longvideo_r1.rollout.episodes import RolloutConfig

    # random weights write no valid turn: keep their turns short (else each runs to 512 tokens × 4 rounds)
    before = pool.rollout(_questions(4), RolloutConfig(n=1, max_rounds=2, temperature=0.0, max_turn_tokens=16))
    assert all(e.answer is None for e in before)
    metrics = sync.push(1)
    assert metrics["weight_sync/fallback"] == 0 and metrics["weight_sync/buckets"] > 2
    assert metrics["weight_sync/bytes"] == sync.plan.nbytes
    after = pool.rollout(_questions(4), _greedy())
    assert all(e.policy_version == 1 and e.answer == "B" for e in after)
    # fp32 on both sides: only summation order differs (tiny model: ~1e-5); the bound is 1e-3
    assert _drift(pool, learner) < 1e-3
    # a second push reuses the group (no re-forming) and moves the version
    assert sync.push(2)["weight_sync/reformed"] == 0
    assert all(e.policy_version == 2 for e in pool.rollout(_questions(2), _greedy()))


@pytest.mark.slow
def test_a_worker_dying_mid_sync_is_replaced_and_given_the_weights_without_hurting_the_others(sync_setup):
    import os

    import ray

    from longvideo_r1.rollout.weight_sync import FAULT_ENV

    pool, learner, sync = sync_setup
    if sync.version is None:
        sync.push(1)
    victim, survivor = pool.workers
    # the victim's engine process exits after receiving 2 of the buckets of the next sync
    ray.get(victim.__ray_call__.remote(lambda self: os.environ.__setitem__(FAULT_ENV, "2")))
    restarts = pool.restarts
    metrics = sync.push(7)
    assert metrics["weight_sync/retries"] == 1 and metrics["weight_sync/fallback"] == 0
    assert pool.restarts == restarts + 1 and victim not in pool.workers and survivor in pool.workers
    assert metrics["weight_sync/reformed"] == 1                 # a new group with the replacement
    episodes = pool.rollout(_questions(4), _greedy())
    assert all(e.policy_version == 7 and e.answer == "B" for e in episodes)
    assert _drift(pool, learner) < 1e-3                         # the survivor's half-received sync was redone


@pytest.mark.slow
def test_a_replacement_started_mid_rollout_catches_up_through_its_own_group(sync_setup):
    import ray

    pool, learner, sync = sync_setup
    if sync.version is None:
        sync.push(1)
    version = sync.version
    victim = pool.workers[0]
    ray.kill(victim, no_restart=True)
    episodes = pool.rollout(_questions(6), _greedy())           # the pool replaces the dead worker
    assert victim not in pool.workers and len(pool.workers) == 2
    assert all(e.policy_version == version and e.answer == "B" for e in episodes)
    assert sync.push(version + 1)["weight_sync/reformed"] == 1   # the main group is re-formed once
