"""From finished episodes to a learner batch: reward items, group selection, overlong episodes,
advantages, step metrics.

Plain functions over :class:`~longvideo_r1.rollout.episodes.RolloutEpisode` lists and tensors; the
RL loop (:mod:`longvideo_r1.trainer.rl`) calls them between the rollout workers, the reward service
and the learner group. The batch is :func:`longvideo_r1.rollout.episodes.to_batch`'s, keys unchanged
(``loss_mask``, ``old_logprobs``, …); this module adds ``advantages`` (and for estimators with a
critic ``returns`` and ``old_values``).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable

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


TRUNCATED = ("budget", "max_rounds")
"""``RolloutEpisode.finish`` values of an episode cut before it answered (token budget, round limit)."""

CONSTANT_TOLERANCE = 1e-9
"""Scores of a group that differ by no more than this count as equal."""


def truncated(episode: RolloutEpisode) -> bool:
    return episode.finish in TRUNCATED


def split_constant_groups(episodes: list[RolloutEpisode], scores) -> tuple[list[int], list[int]]:
    """``(kept, dropped)``: the indices of the episodes whose group has a spread of scores, and the
    ids of the groups of two or more samples whose scores are all equal (within
    :data:`CONSTANT_TOLERANCE`). GRPO gives such a group zero advantage on every token, so it
    carries no signal (DAPO's dynamic sampling drops it). A group of one sample is kept: GRPO scores
    it against 0, not against its group."""
    members: dict[int, list[int]] = {}
    for i, e in enumerate(episodes):
        members.setdefault(e.group, []).append(i)
    kept, dropped = [], []
    for group, rows in members.items():
        values = [float(scores[i]) for i in rows]
        if len(rows) > 1 and max(values) - min(values) <= CONSTANT_TOLERANCE:
            dropped.append(group)
        else:
            kept += rows
    return sorted(kept), dropped


@dataclasses.dataclass
class StepGroups:
    """What :func:`fill_groups` played and kept in one RL step."""

    played: list[RolloutEpisode]
    """every episode of the step, refills included (group ids unique across rounds)"""
    played_rewards: list[dict]
    kept: list[RolloutEpisode]
    """the episodes of the groups to train on"""
    kept_rewards: list[dict]
    constant_groups: int = 0
    """groups whose samples all scored the same (dropped only with dynamic sampling)"""
    dropped_groups: int = 0
    refill_rounds: int = 0
    """extra rollout rounds played after the first"""

    @property
    def kept_groups(self) -> int:
        return len({e.group for e in self.kept})


def fill_groups(play: Callable[[int, int], tuple[list[RolloutEpisode], list[dict]]], groups: int,
                dynamic_sampling: bool = False, max_refill_rounds: int = 0) -> StepGroups:
    """The groups of one RL step, with DAPO's dynamic sampling when ``dynamic_sampling`` is on.

    ``play(round, count)`` plays ``count`` questions (round 0: the step's own ``groups`` questions;
    round r ≥ 1: ``count`` new ones) and returns their episodes, grouped with ids ``0..count-1``, and
    their rewards. Without dynamic sampling it is called once and every group is kept. With it, the
    groups whose samples all scored the same are dropped (:func:`split_constant_groups`) and up to
    ``max_refill_rounds`` more rounds play as many new questions as groups are missing, until
    ``groups`` groups are kept; fewer may be kept when the rounds run out. Group ids are made unique
    across rounds (round r's ids follow those of the rounds before it)."""
    out = StepGroups([], [], [], [])
    need, offset = groups, 0
    for round_ in range(1 + (max_refill_rounds if dynamic_sampling else 0)):
        if need <= 0:
            break
        episodes, rewards = play(round_, need)
        episodes = [dataclasses.replace(e, group=e.group + offset) for e in episodes]
        offset += need
        out.refill_rounds = round_
        kept, dropped = split_constant_groups(episodes, [r["score"] for r in rewards])
        out.played += episodes
        out.played_rewards += rewards
        out.constant_groups += len(dropped)
        if not dynamic_sampling:
            out.kept, out.kept_rewards = episodes, rewards
            break
        out.kept += [episodes[i] for i in kept]
        out.kept_rewards += [rewards[i] for i in kept]
        out.dropped_groups += len(dropped)
        need = groups - out.kept_groups
    return out


def penalise_overlong(episodes: list[RolloutEpisode], rewards: list[dict], penalty: float) -> list[dict]:
    """The rewards with ``penalty`` taken off the score of every truncated episode (``overlong: penalty``);
    each such reward gets ``overlong_penalty`` set to it, the others 0."""
    out = []
    for e, r in zip(episodes, rewards):
        cut = penalty if truncated(e) else 0.0
        out.append({**r, "score": r["score"] - cut, "overlong_penalty": cut})
    return out


def mask_overlong(batch: dict, episodes: list[RolloutEpisode]) -> int:
    """Zero the ``loss_mask`` rows of the truncated episodes (``overlong: mask``; call it after the
    advantages are computed, so their scores still count in their group's statistics). Returns how
    many rows were masked."""
    rows = [i for i, e in enumerate(episodes) if truncated(e)]
    if rows:
        batch["loss_mask"][rows] = 0
    return len(rows)


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
    """Reward mean/std and components, accuracy, rounds, calls, response length, how episodes ended.

    Shares over all rounds of all episodes: ``valid_tool_call_share`` (get_caption and video_qa
    calls the rules accepted) and ``invalid_round_share`` (malformed rounds); over episodes:
    ``truncated_share`` (cut by the token budget or the round limit)."""
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
    rounds = sum(e.costs.get("rounds", len(e.actions)) for e in episodes)
    calls = sum(e.costs.get("get_caption_calls", 0) + e.costs.get("video_qa_calls", 0) for e in episodes)
    invalid = sum(e.costs.get("invalid_rounds", 0) for e in episodes)
    out[f"{prefix}/valid_tool_call_share"] = calls / rounds if rounds else 0.0
    out[f"{prefix}/invalid_round_share"] = invalid / rounds if rounds else 0.0
    out[f"{prefix}/truncated_share"] = mean(1.0 if truncated(e) else 0.0 for e in episodes)
    finishes = Counter(e.finish for e in episodes)
    for kind in ("answer", "max_rounds", "budget"):
        out[f"{prefix}/finish_{kind}"] = finishes.get(kind, 0) / n
    return out
