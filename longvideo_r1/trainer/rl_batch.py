"""From finished episodes to a learner batch: reward items, advantages, step metrics.

Plain functions over :class:`~longvideo_r1.rollout.episodes.RolloutEpisode` lists and tensors; the
RL loop (:mod:`longvideo_r1.trainer.rl`) calls them between the rollout workers, the reward service
and the learner group. The batch is :func:`longvideo_r1.rollout.episodes.to_batch`'s, keys unchanged
(``loss_mask``, ``old_logprobs``, …); this module adds ``advantages`` (and for estimators with a
critic ``returns`` and ``old_values``).
"""

from __future__ import annotations

from collections import Counter

from longvideo_r1.rollout.episodes import RolloutEpisode
from longvideo_r1.trainer import algos


def reward_items(episodes: list[RolloutEpisode]) -> list[dict]:
    """verl custom-reward items (``data_source``, ``solution_str``, ``ground_truth``, ``extra_info``)."""
    items = []
    for e in episodes:
        q = e.question
        items.append({"data_source": q.data_source, "solution_str": e.text, "ground_truth": q.answer,
                      "extra_info": {"width": e.width, "duration": e.duration,
                                     "clue_intervals": q.clue_intervals or []}})
    return items


def add_advantages(batch: dict, scores, config, values=None) -> dict:
    """Fill ``advantages`` (and, for an estimator with a critic, ``returns`` and ``old_values``) in
    ``batch`` with the estimator named by ``config.algorithm`` (an :class:`~longvideo_r1.trainer.rl.RLConfig`);
    a KL-in-reward penalty (``config.kl_in_reward``, estimator ``config.kl_in_reward_kind``) needs
    ``batch["ref_logprobs"]``. Returns the step's advantage metrics."""
    import torch

    estimator = algos.advantage_estimator(config.algorithm)
    scores = torch.as_tensor(scores, dtype=torch.float32)
    mask = batch["loss_mask"]
    metrics = {}
    token_rewards = None
    if estimator.token_rewards:
        token_rewards = algos.token_level_outcome(scores, mask)
        if config.kl_in_reward > 0:
            token_rewards, kl = algos.kl_in_reward(token_rewards, batch["old_logprobs"], batch["ref_logprobs"], mask,
                                                   config.kl_in_reward, config.kl_in_reward_kind)
            metrics["rl/kl_in_reward"] = float(kl)
    adv, returns = estimator.fn(scores, token_rewards, mask, batch["group"], values, config.norm_by_std,
                                config.gamma, config.lam)
    batch["advantages"] = adv
    if estimator.needs_values:
        batch["returns"], batch["old_values"] = returns, values
    a = adv[mask.bool()]
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
    for kind in ("answer", "max_rounds", "budget"):
        out[f"{prefix}/finish_{kind}"] = finishes.get(kind, 0) / n
    return out
