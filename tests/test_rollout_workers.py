"""The Ray pool of vLLM rollout workers: groups stay together, weights fan out, a dead worker is survivable."""

import threading

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM

from longvideo_r1.rollout.episodes import RolloutConfig
from longvideo_r1.rollout.workers import RolloutPool, WorkerSpec
from tests.navigator import question

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pool(tiny_navigator_dir, rollout_tools):
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    spec = WorkerSpec(model=str(tiny_navigator_dir), store=str(rollout_tools.captions.root), num_cpus=1,
                      rollout=RolloutConfig(engine="vllm", engine_options={"max_model_len": 8192}, video_qa="none"))
    pool = RolloutPool(spec, num_workers=2)
    yield pool
    pool.shutdown()
    ray.shutdown()


def questions(count):
    return [question("vid_a" if i % 2 == 0 else "vid_b", f"q{i}") for i in range(count)]


def test_every_sample_comes_back_grouped_by_question_in_order(pool):
    qs = questions(6)
    episodes = pool.rollout(qs, RolloutConfig(n=3, max_rounds=4, temperature=0.0))
    assert [(e.group, e.sample) for e in episodes] == [(g, k) for g in range(6) for k in range(3)]
    assert [e.question.qid for e in episodes] == [q.qid for q in qs for _ in range(3)]
    assert all(e.answer == "B" and e.visited == [(1, 1)] for e in episodes)


def test_work_is_spread_over_the_workers(pool):
    before = [s["generate_calls"] for s in pool.stats()]
    pool.rollout(questions(8), RolloutConfig(n=2, max_rounds=4, temperature=0.0))
    after = [s["generate_calls"] for s in pool.stats()]
    assert all(a > b for a, b in zip(after, before))


def test_new_weights_reach_every_worker_and_change_what_they_generate(pool, tiny_navigator_dir):
    base = AutoModelForCausalLM.from_pretrained(str(tiny_navigator_dir.parent / "base"), dtype=torch.float32)
    trained = AutoModelForCausalLM.from_pretrained(str(tiny_navigator_dir), dtype=torch.float32)
    try:
        pool.update_weights(base.state_dict().items(), version=1)
        episodes = pool.rollout(questions(4), RolloutConfig(n=1, max_rounds=2, temperature=0.0, max_turn_tokens=16))
        assert all(e.policy_version == 1 for e in episodes)
        assert all(e.answer is None and e.visited == [] for e in episodes)   # random weights write no valid turn
    finally:
        pool.update_weights(trained.state_dict().items(), version=2)
    episodes = pool.rollout(questions(4), RolloutConfig(n=1, max_rounds=4, temperature=0.0))
    assert all(e.policy_version == 2 and e.answer == "B" for e in episodes)


def test_a_worker_killed_mid_batch_costs_no_episode(pool, tiny_navigator_dir):
    # Random weights make every episode run all its turns, so both workers are surely busy at the kill.
    base = AutoModelForCausalLM.from_pretrained(str(tiny_navigator_dir.parent / "base"), dtype=torch.float32)
    trained = AutoModelForCausalLM.from_pretrained(str(tiny_navigator_dir), dtype=torch.float32)
    pool.update_weights(base.state_dict().items(), version=3)
    qs = questions(8)
    config = RolloutConfig(n=2, max_rounds=6, temperature=1.0, max_turn_tokens=48)
    victim = pool.workers[0]
    killer = threading.Timer(1.0, lambda: ray.kill(victim, no_restart=True))
    try:
        killer.start()
        episodes = pool.rollout(qs, config)
        killer.join()
        assert pool.restarts == 1 and victim not in pool.workers and len(pool.workers) == 2
        assert [(e.group, e.sample) for e in episodes] == [(g, k) for g in range(8) for k in range(2)]
        assert all(e.finish == "max_rounds" and len(e.trace["turns"]) == 6 for e in episodes)
        # the replacement got the latest weights before it played
        assert all(e.policy_version == 3 for e in episodes)
    finally:
        pool.update_weights(trained.state_dict().items(), version=4)
    assert all(e.answer == "B" for e in pool.rollout(qs[:4], RolloutConfig(n=1, max_rounds=4, temperature=0.0)))


def test_a_checkpoint_folder_is_loaded_in_place_where_the_workers_run(pool, tiny_navigator_dir):
    base = tiny_navigator_dir.parent / "base"
    try:
        pool.load_weights(str(base), version=3)
        episodes = pool.rollout(questions(4), RolloutConfig(n=1, max_rounds=2, temperature=0.0, max_turn_tokens=16))
        assert all(e.policy_version == 3 and e.answer is None for e in episodes)
        assert pool.spec.model == str(base)       # a replacement worker would start from these weights
    finally:
        pool.load_weights(str(tiny_navigator_dir), version=4)
    episodes = pool.rollout(questions(4), RolloutConfig(n=1, max_rounds=4, temperature=0.0))
    assert all(e.policy_version == 4 and e.answer == "B" for e in episodes)
