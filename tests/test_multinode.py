"""A multi-node run on one machine: a real Ray cluster of three nodes (ray.cluster_utils), the roles
placed across them, two RL steps with the collective weight sync and the served caption store, and
a node holding a rollout worker killed mid-step: the step finishes (its groups re-played on the
surviving worker, a replacement caught up through its own sync group where the bundle moved)."""

from __future__ import annotations

import threading
import time

import pytest
import ray

from longvideo_r1.cluster.resources import PlacementConfig, RoleResources
from longvideo_r1.rollout.episodes import RolloutConfig
from longvideo_r1.trainer.learner import LearnerConfig
from longvideo_r1.trainer.rl import RLConfig, train_rl
from tests.navigator import question

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    # Logical CPUs chosen so the plan is forced: a rollout bundle (3) fits nodes B and C, nothing else
    # does (learner 4, reward 4): those stay on the head; with STRICT_SPREAD the two rollout bundles
    # take two different nodes, and whichever of B and C holds one can die: a third node is free for
    # the replacement (B or C, or the head's 3.9 CPUs left).
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 12, "include_dashboard": False})
    c.add_node(num_cpus=3)
    c.add_node(num_cpus=3)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def rl_data(tmp_path_factory, rollout_tools):
    from longvideo_r1.trainer.rl_data import rl_rows, write_rl_parquet
    from longvideo_r1.trainer.splits import episode_config

    root = tmp_path_factory.mktemp("rl-data-multinode")
    qs = [question("vid_a" if i % 2 == 0 else "vid_b", f"q{i}") for i in range(8)]
    write_rl_parquet(rl_rows(qs, rollout_tools, episode_config(4), "train"), root / "train.parquet")
    return root


def _node_of_rollout_workers() -> dict[str, str]:
    """node id -> the name of a rollout worker actor living there."""
    from ray._private.state import actors   # GCS's actor table (the state API needs a dashboard)

    return {a["Address"]["NodeID"]: a["ActorID"] for a in actors().values()
            if a["ActorClassName"] == "RolloutWorker" and a["State"] == "ALIVE"}


def test_two_nodes_two_steps_a_node_dies_mid_step_and_the_step_finishes(cluster, rl_data, rollout_tools,
                                                                        tiny_navigator_dir, tmp_path):
    head_id = ray.get_runtime_context().get_node_id()
    placement = PlacementConfig(strategy="STRICT_SPREAD", rollout=RoleResources(2, 3.0, 0.0), learner=RoleResources(1, 4.0, 0.0),
                                reward=RoleResources(1, 4.0, 0.0), caption_store=RoleResources(1, 0.1, 0.0), timeout_s=120)
    config = RLConfig(steps=2, questions_per_step=4, val_every=0, save_every=0, store_access="served",
                      weight_sync="collective", weight_sync_bucket_mb=0.5, weight_sync_timeout_s=30,
                      rollout=RolloutConfig(engine="vllm", video_qa="none", engine_options={"max_model_len": 4096}, n=2,
                                            max_rounds=6, max_turn_tokens=48, max_response_tokens=2048,
                                            max_observation_tokens=1024, temperature=1.0, threads=1),
                      learner=LearnerConfig(lr=1e-4, micro_batch_tokens=4096, threads=1))
    out = tmp_path / "rl"
    seen: dict = {}

    def kill_a_rollout_node():
        # as soon as step 1 is written (step 2's rollout is starting), kill a non-head node holding a worker
        while not (out / "samples" / "step00000.json").is_file():
            time.sleep(0.05)
        nodes = _node_of_rollout_workers()
        seen["nodes_before"] = set(nodes)
        victim = next(n for n in cluster.worker_nodes if n.node_id in nodes and n.node_id != head_id)
        cluster.remove_node(victim, allow_graceful=False)
        seen["killed"] = victim.node_id

    killer = threading.Thread(target=kill_a_rollout_node, daemon=True)
    killer.start()
    summary = train_rl(config, rl_data / "train.parquet", None, rollout_tools.captions.root, tiny_navigator_dir,
                       out, placement=placement)
    killer.join(60)
    # the roles were spread over the nodes: the two rollout workers on two of them, the rest on the head
    assert len(seen["nodes_before"]) == 2 and seen["killed"] in seen["nodes_before"]
    steps = [h for h in summary["history"] if h["step"] >= 0]
    assert [h["step"] for h in steps] == [0, 1]
    first, second = steps
    assert first["rollout/worker_restarts"] == 0 and second["rollout/worker_restarts"] >= 1
    # every group of step 2 was played (the dead worker's ones again, elsewhere) and trained on
    assert second["rollout/kept_groups"] == 4 and second["rollout/update_skipped"] == 0
    # the replacement sampled with the current weights (caught up through its own group) ...
    assert second["rollout/logprob_diff_mean"] < 1e-3
    # ... and the sync after step 2 re-formed the group with it, on the collective path
    assert first["weight_sync/fallback"] == 0 and second["weight_sync/fallback"] == 0
    assert second["weight_sync/reformed"] >= 1
