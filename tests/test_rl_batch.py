"""From episodes to the learner's batch, on CPU tensors: the batch contract, advantages, step metrics."""

from __future__ import annotations

import pytest
import torch

from longvideo_r1.agent.episode import Question
from longvideo_r1.rollout.episodes import RolloutEpisode, to_batch
from longvideo_r1.trainer import algos
from longvideo_r1.trainer.rl import RLConfig
from longvideo_r1.trainer.rl_batch import add_advantages, episode_metrics, reward_items

PAD = 0


def episode(group: int, sample: int, prompt: int, turns: list[tuple[int, int]], answer="B", finish="answer",
            version=3) -> RolloutEpisode:
    """An episode with ``prompt`` prompt tokens, then (sampled, observed) token counts per turn."""
    response, mask, logprobs = [], [], []
    for sampled, observed in turns:
        response += [7] * sampled + [9] * observed
        mask += [1] * sampled + [0] * observed
        logprobs += [-0.5 - 0.1 * len(logprobs)] * sampled + [0.0] * observed
    q = Question(f"vid{group}", "what?", ["A. x", "B. y"], "B", [[1.0, 2.0]], f"q{group}")
    return RolloutEpisode(question=q, group=group, sample=sample, prompt_ids=[5] * prompt, response_ids=response,
                          response_mask=mask, logprobs=logprobs, text="<answer>B</answer>", actions=[],
                          visited=[(1,)], answer=answer, costs={"rounds": len(turns), "get_caption_calls": 1},
                          policy_version=version, finish=finish, width=4, duration=60.0)


@pytest.fixture
def episodes():
    return [episode(0, 0, 3, [(2, 4), (3, 0)]), episode(0, 1, 3, [(4, 0)], answer="A"),
            episode(1, 0, 5, [(1, 2), (2, 0)], finish="max_rounds", answer=None), episode(1, 1, 5, [(6, 0)])]


def test_the_rollout_batch_carries_the_learners_key_names(episodes):
    batch = to_batch(episodes, PAD)
    assert {"input_ids", "attention_mask", "loss_mask", "old_logprobs", "group", "policy_version"} <= set(batch)
    assert "response_mask" not in batch and "rollout_logprobs" not in batch
    width = max(len(e.prompt_ids) + len(e.response_ids) for e in episodes)
    assert batch["input_ids"].shape == (4, width)
    for row, e in enumerate(episodes):
        p, r = len(e.prompt_ids), len(e.response_ids)
        assert batch["loss_mask"][row, p: p + r].tolist() == e.response_mask
        assert batch["loss_mask"][row, :p].sum() == 0 and batch["loss_mask"][row, p + r:].sum() == 0
        assert batch["attention_mask"][row].sum() == p + r
        assert torch.allclose(batch["old_logprobs"][row, p: p + r], torch.tensor(e.logprobs))
        assert (batch["input_ids"][row, p + r:] == PAD).all()
    assert batch["group"].tolist() == [0, 0, 1, 1] and batch["policy_version"].tolist() == [3] * 4


def test_grpo_advantages_are_the_group_normalised_scores_on_sampled_tokens(episodes):
    batch = to_batch(episodes, PAD)
    scores = [1.0, 0.0, 0.2, 1.2]
    metrics = add_advantages(batch, scores, RLConfig(algorithm="grpo"))
    expected, _ = algos.grpo_advantages(torch.tensor(scores), batch["group"], batch["loss_mask"])
    assert torch.equal(batch["advantages"], expected)
    mask = batch["loss_mask"].bool()
    # a group of two: the better sample gets +1/√2, the worse −1/√2 (unbiased std), on every sampled token
    assert torch.allclose(batch["advantages"][0][mask[0]], torch.full((int(mask[0].sum()),), 2 ** -0.5), atol=1e-6)
    assert torch.allclose(batch["advantages"][1][mask[1]], torch.full((int(mask[1].sum()),), -(2 ** -0.5)), atol=1e-6)
    assert (batch["advantages"][~mask] == 0).all()
    assert "returns" not in batch and metrics["rl/advantage_max"] == pytest.approx(2 ** -0.5, abs=1e-5)  # std + ε, ε = 1e-6


def test_grpo_without_std_normalisation_only_centres(episodes):
    batch = to_batch(episodes, PAD)
    add_advantages(batch, [1.0, 0.0, 0.2, 1.2], RLConfig(norm_by_std=False))
    first = batch["advantages"][0][batch["loss_mask"][0].bool()]
    assert torch.allclose(first, torch.full_like(first, 0.5))


def test_ppo_uses_gae_over_the_values_and_a_kl_penalty_in_the_reward(episodes):
    batch = to_batch(episodes, PAD)
    mask = batch["loss_mask"]
    values = torch.linspace(0, 1, mask.numel()).reshape(mask.shape) * mask
    batch["ref_logprobs"] = batch["old_logprobs"] - 0.3 * mask
    config = RLConfig(algorithm="ppo", gamma=0.9, lam=0.8, kl_in_reward=0.1, kl_in_reward_kind="k1")
    metrics = add_advantages(batch, [1.0, 0.0, 0.0, 1.0], config, values=values)
    rewards = algos.token_level_outcome(torch.tensor([1.0, 0.0, 0.0, 1.0]), mask)
    rewards, _ = algos.kl_in_reward(rewards, batch["old_logprobs"], batch["ref_logprobs"], mask, 0.1, "k1")
    adv, ret = algos.gae_advantages(rewards, values, mask, 0.9, 0.8)
    assert torch.equal(batch["advantages"], adv) and torch.equal(batch["returns"], ret)
    assert batch["old_values"] is values
    assert metrics["rl/kl_in_reward"] == pytest.approx(0.3, abs=1e-6)      # k1 = log π − log π_ref


def test_the_kl_estimator_of_the_reward_penalty_is_the_configured_one(episodes):
    out = {}
    for kind in ("k1", "k3"):
        batch = to_batch(episodes, PAD)
        mask = batch["loss_mask"]
        batch["ref_logprobs"] = batch["old_logprobs"] - 0.3 * mask
        out[kind] = add_advantages(batch, [1.0, 0.0, 0.0, 1.0], RLConfig(algorithm="ppo", kl_in_reward=0.1,
                                                                         kl_in_reward_kind=kind),
                                   values=torch.zeros(mask.shape))["rl/kl_in_reward"]
    assert out["k3"] == pytest.approx(torch.exp(torch.tensor(-0.3)).item() - 1 + 0.3, abs=1e-5)
    assert out["k1"] != pytest.approx(out["k3"])


def test_an_unknown_estimator_is_refused_by_the_registry():
    with pytest.raises(ValueError, match="grpo, ppo"):
        algos.advantage_estimator("reinforce")
    assert algos.ADVANTAGE_ESTIMATORS["ppo"].needs_values and not algos.ADVANTAGE_ESTIMATORS["grpo"].needs_values


def test_step_metrics_and_reward_items_describe_the_episodes(episodes):
    items = reward_items(episodes)
    assert items[0]["ground_truth"] == "B" and items[0]["extra_info"]["clue_intervals"] == [[1.0, 2.0]]
    rewards = [{"score": s, "answer_reward": a, "f1_reward": 0.1, "repeat_reward": 0.0}
               for s, a in ((1.1, 1.0), (0.1, 0.0), (0.1, 0.0), (1.1, 1.0))]
    m = episode_metrics(episodes, rewards)
    assert m["rollout/reward_mean"] == pytest.approx(0.6) and m["rollout/accuracy"] == pytest.approx(0.5)
    assert m["rollout/answered"] == pytest.approx(0.75) and m["rollout/finish_max_rounds"] == pytest.approx(0.25)
    assert m["rollout/response_tokens"] == pytest.approx((5 + 4 + 3 + 6) / 4)
