"""The RL loop end to end on real actors: vLLM rollout workers, the reward service, the DeepSpeed learner."""

from __future__ import annotations

import json

import pytest
import ray
import torch

from longvideo_r1.rollout.episodes import RolloutConfig
from longvideo_r1.trainer.rl import RLConfig, question_order, train_rl
from longvideo_r1.trainer.learner import LearnerConfig
from tests.navigator import question

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray4():
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def rl_data(tmp_path_factory, rollout_tools):
    from longvideo_r1.trainer.rl_data import rl_rows, write_rl_parquet
    from longvideo_r1.trainer.splits import episode_config

    root = tmp_path_factory.mktemp("rl-data")
    qs = [question("vid_a" if i % 2 == 0 else "vid_b", f"q{i}") for i in range(4)]
    write_rl_parquet(rl_rows(qs, rollout_tools, episode_config(4), "train"), root / "train.parquet")
    write_rl_parquet(rl_rows(qs[:2], rollout_tools, episode_config(4), "val"), root / "val.parquet")
    return root


def rl_config(algorithm="grpo", steps=2, temperature=1.0, **kw) -> RLConfig:
    options = dict(algorithm=algorithm, steps=steps, questions_per_step=2, val_every=1, save_every=1,
                   rollout=RolloutConfig(engine="vllm", video_qa="none", engine_options={"max_model_len": 4096}, n=2,
                                         max_rounds=4, max_turn_tokens=24, max_response_tokens=2048,
                                         max_observation_tokens=1024, temperature=temperature),
                   learner=LearnerConfig(lr=1e-4, kl_coef=1e-3, micro_batch_tokens=4096))
    options.update(kw)
    return RLConfig(**options)


def test_question_order_walks_seeded_epochs():
    steps = [question_order(5, 2, s, seed=3) for s in range(5)]
    flat = [i for s in steps for i in s]
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:10]) == list(range(5))
    assert steps == [question_order(5, 2, s, seed=3) for s in range(5)]
    assert flat[:5] != list(range(5)) or flat[5:] != list(range(5))


def test_grpo_steps_score_update_and_sync(ray4, rl_data, rollout_tools, tiny_navigator_dir, tmp_path):
    logged = []
    summary = train_rl(rl_config(), rl_data / "train.parquet", rl_data / "val.parquet",
                       rollout_tools.captions.root, tiny_navigator_dir, tmp_path / "rl",
                       log_metrics=lambda m, s: logged.append((s, m)))
    steps = [h for h in summary["history"] if h["step"] >= 0]
    assert [h["step"] for h in steps] == [0, 1]
    first = steps[0]
    # the navigator answers B after one get_caption: reward comes from the real scorer
    assert first["rollout/accuracy"] > 0.5 and first["rollout/answer_reward"] > 0.5
    assert first["rollout/get_caption_calls"] > 0
    for key in ("learner/policy_loss", "learner/kl", "learner/entropy", "learner/clipfrac", "learner/grad_norm",
                "learner/lr", "rl/advantage_mean", "rollout/reward_std", "time/rollout_s", "time/update_s",
                "time/weight_sync_s", "val/accuracy"):
        assert key in first, key
    assert [s for s, _ in logged] == [0, 1, 2]            # initial validation, then one row per step
    assert (tmp_path / "rl" / "checkpoints" / "latest").is_file()
    assert json.loads((tmp_path / "rl" / "samples" / "step00000.json").read_text())[0]["truth"] == "B"
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(summary["model"], dtype=torch.float32)
    original = AutoModelForCausalLM.from_pretrained(tiny_navigator_dir, dtype=torch.float32)
    moved = max((a - b).abs().max().item() for a, b in zip(exported.parameters(), original.parameters()))
    assert moved > 0                                       # the learner's update reached the export
    # more steps continue the finished run from its last checkpoint: the first two rows are kept as they were
    more = train_rl(rl_config(steps=3), rl_data / "train.parquet", rl_data / "val.parquet", rollout_tools.captions.root,
                    tiny_navigator_dir, tmp_path / "rl")
    assert [h["step"] for h in more["history"]] == [-1, 0, 1, 2]
    assert more["history"][:3] == summary["history"]


def test_ppo_step_uses_the_value_head(ray4, rl_data, rollout_tools, tiny_navigator_dir, tmp_path):
    summary = train_rl(rl_config("ppo", steps=1, val_every=0), rl_data / "train.parquet", None,
                       rollout_tools.captions.root, tiny_navigator_dir, tmp_path / "ppo")
    row = summary["history"][-1]
    assert "learner/value_loss" in row and row["learner/value_loss"] > 0


def test_a_killed_learner_resumes_from_its_checkpoint_with_the_same_results(ray4, rl_data, rollout_tools,
                                                                            tiny_navigator_dir, tmp_path):
    """Greedy rollouts make the run deterministic: an interrupted run (its actors gone after step 1)
    resumed from the checkpoint gives the same step-2 figures as an uninterrupted run."""
    config = rl_config(steps=2, temperature=0.0, val_every=0)
    args = (rl_data / "train.parquet", None, rollout_tools.captions.root, tiny_navigator_dir)
    straight = train_rl(config, *args, tmp_path / "straight")
    stopped = train_rl(config, *args, tmp_path / "resumed", stop_after=1)
    assert stopped["stopped_at"] == 1 and (tmp_path / "resumed" / "checkpoints" / "latest").is_file()
    resumed = train_rl(config, *args, tmp_path / "resumed")
    keys = ("rollout/reward_mean", "rollout/response_tokens", "learner/loss", "learner/entropy", "learner/kl")
    assert [h["step"] for h in resumed["history"]] == [0, 1]
    for key in keys:
        assert resumed["history"][1][key] == pytest.approx(straight["history"][1][key], rel=1e-6, abs=1e-9), key


def test_a_failing_reward_scorer_is_logged_and_the_step_goes_on(ray4, rl_data, rollout_tools, tiny_navigator_dir,
                                                                tmp_path):
    scorer = tmp_path / "broken.py"
    scorer.write_text("def score(data_source, solution_str, ground_truth, extra_info=None, **kw):\n"
                      "    raise RuntimeError('scorer exploded')\n")
    summary = train_rl(rl_config(steps=1, val_every=0, reward_scorer=f"{scorer}:score"), rl_data / "train.parquet",
                       None, rollout_tools.captions.root, tiny_navigator_dir, tmp_path / "rl")
    row = summary["history"][-1]
    assert row["rollout/reward_errors"] == 4 and row["rollout/reward_mean"] == 0.0
    assert "learner/loss" in row


def test_collective_weight_sync_keeps_the_engines_on_the_learners_weights(ray4, rl_data, rollout_tools,
                                                                          tiny_navigator_dir, tmp_path):
    """rl.weight_sync=collective (gloo here): after every sync the engines sample with the learner's
    weights, so the drift the learner measures at the next step stays at rounding level (fp32)."""
    summary = train_rl(rl_config(steps=3, val_every=0, save_every=0, weight_sync="collective",
                                 weight_sync_bucket_mb=0.5, learner=LearnerConfig(lr=1e-3, micro_batch_tokens=4096)),
                       rl_data / "train.parquet", None, rollout_tools.captions.root, tiny_navigator_dir,
                       tmp_path / "collective")
    steps = [h for h in summary["history"] if h["step"] >= 0]
    assert len(steps) == 3
    for row in steps:
        assert row["weight_sync/fallback"] == 0 and row["weight_sync/buckets"] > 1
    assert steps[0]["weight_sync/reformed"] == 1 and steps[1]["weight_sync/reformed"] == 0
    for row in steps[1:]:          # every step after the first sync
        assert row["rollout/logprob_diff_mean"] < 1e-3, row["rollout/logprob_diff_mean"]
    # lr 1e-3 moves the weights far enough that a sync that changed nothing would show up here
    assert max(h["learner/policy_loss"] != 0 for h in steps)
