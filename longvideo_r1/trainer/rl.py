"""From finished episodes to a learner batch: reward items, advantages (GRPO or PPO/GAE), step metrics.

Plain functions over :class:`~longvideo_r1.rollout.runner.RolloutEpisode` lists and tensors; the
RL loop (:mod:`longvideo_r1.platform.rl_loop`) calls them between the rollout workers, the reward
service and the learner group.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from longvideo_r1.errors import InputError
from longvideo_r1.rollout.runner import RolloutEpisode, to_batch
from longvideo_r1.trainer import algos

ALGORITHMS = ("grpo", "ppo")


@dataclass
class AdvantageConfig:
    algorithm: str = "grpo"
    """grpo (group-normalised outcome, no critic) or ppo (GAE over a value head)"""
    norm_by_std: bool = True
    """GRPO: divide by the group's standard deviation (False: Dr. GRPO-style mean-centering only)"""
    gamma: float = 1.0
    lam: float = 1.0
    kl_in_reward: float = 0.0
    """β of a KL-to-reference penalty subtracted from token rewards (PPO-style); 0 = off"""
    kl_kind: str = "k1"


def reward_items(episodes: list[RolloutEpisode]) -> list[dict]:
    """verl custom-reward items (``data_source``, ``solution_str``, ``ground_truth``, ``extra_info``)."""
    items = []
    for e in episodes:
        q = e.question
        items.append({"data_source": q.data_source, "solution_str": e.text, "ground_truth": q.answer,
                      "extra_info": {"width": e.width, "duration": e.duration,
                                     "clue_intervals": q.clue_intervals or []}})
    return items


def learner_batch(episodes: list[RolloutEpisode], pad_id: int) -> dict:
    """The rollout batch in the learner's vocabulary: ``loss_mask`` = sampled tokens, ``old_logprobs``
    = the rollout log-probs (the importance ratio is taken against the policy that sampled)."""
    batch = to_batch(episodes, pad_id)
    batch["loss_mask"] = batch.pop("response_mask")
    batch["old_logprobs"] = batch.pop("rollout_logprobs")
    return batch


def add_advantages(batch: dict, scores, config: AdvantageConfig, values=None, ref_logprobs=None) -> dict:
    """Fill ``advantages`` (and for PPO ``returns``, ``old_values``) in ``batch``; returns extra metrics."""
    import torch

    if config.algorithm not in ALGORITHMS:
        raise InputError(f"rl algorithm {config.algorithm!r}: choose grpo or ppo")
    scores = torch.as_tensor(scores, dtype=torch.float32)
    mask = batch["loss_mask"]
    metrics = {}
    if config.algorithm == "grpo":
        adv, _ = algos.grpo_advantages(scores, batch["group"], mask, norm_by_std=config.norm_by_std)
        batch["advantages"] = adv
    else:
        if values is None:
            raise InputError("ppo needs the value head's values of the batch (learner.value_head: true)")
        rewards = algos.token_level_outcome(scores, mask)
        if config.kl_in_reward > 0:
            if ref_logprobs is None:
                raise InputError("kl_in_reward needs reference log-probs (learner.kl_coef > 0 keeps a reference model)")
            rewards, kl = algos.kl_in_reward(rewards, batch["old_logprobs"], ref_logprobs, mask,
                                             config.kl_in_reward, config.kl_kind)
            metrics["rl/kl_in_reward"] = float(kl)
        adv, returns = algos.gae_advantages(rewards, values, mask, config.gamma, config.lam)
        batch["advantages"], batch["returns"], batch["old_values"] = adv, returns, values
    m = mask.bool()
    a = batch["advantages"][m]
    if a.numel():
        metrics.update({"rl/advantage_mean": float(a.mean()), "rl/advantage_std": float(a.std()) if a.numel() > 1 else 0.0,
                        "rl/advantage_max": float(a.max()), "rl/advantage_min": float(a.min())})
    return metrics


def episode_metrics(episodes: list[RolloutEpisode], rewards: list[dict], prefix: str = "rollout") -> dict:
    """Reward mean/std and components, accuracy, rounds, calls, response length, how episodes ended."""
    import statistics

    n = max(1, len(episodes))

    def mean(xs):
        xs = list(xs)
        return sum(xs) / len(xs) if xs else 0.0

    scores = [r["score"] for r in rewards]
    out = {
        f"{prefix}/reward_mean": mean(scores),
        f"{prefix}/reward_std": statistics.pstdev(scores) if len(scores) > 1 else 0.0,
        f"{prefix}/answer_reward": mean(r["answer_reward"] for r in rewards),
        f"{prefix}/f1_reward": mean(r["f1_reward"] for r in rewards),
        f"{prefix}/repeat_reward": mean(r["repeat_reward"] for r in rewards),
        f"{prefix}/reward_errors": sum(1 for r in rewards if r.get("error")),
        f"{prefix}/accuracy": mean(1.0 if e.correct else 0.0 for e in episodes),
        f"{prefix}/answered": mean(1.0 if e.answer is not None else 0.0 for e in episodes),
        f"{prefix}/rounds": mean(e.costs.get("rounds", len(e.actions)) for e in episodes),
        f"{prefix}/get_caption_calls": mean(e.costs.get("get_caption_calls", 0) for e in episodes),
        f"{prefix}/video_qa_calls": mean(e.costs.get("video_qa_calls", 0) for e in episodes),
        f"{prefix}/response_tokens": mean(sum(e.response_mask) for e in episodes),
        f"{prefix}/context_tokens": mean(len(e.prompt_ids) + len(e.response_ids) for e in episodes),
        f"{prefix}/invalid_rounds": mean(e.costs.get("invalid_rounds", 0) for e in episodes),
    }
    finishes = Counter(e.finish for e in episodes)
    for kind in ("answer", "max_turns", "budget"):
        out[f"{prefix}/finish_{kind}"] = finishes.get(kind, 0) / n
    return out
