"""Run a navigator over questions and summarise the episodes: accuracy, cost and localisation."""

from __future__ import annotations

import time
from collections import defaultdict

from longvideo_r1.agent.episode import Episode, EpisodeConfig, Question
from longvideo_r1.agent.tools import Tools, run_episode
from longvideo_r1.reward.score import (RewardConfig, localisation_f1, merge_clues, score_calls, total_length,
                                        union_intervals)
from longvideo_r1.corpus import tree


def run_questions(policy, questions: list[Question], tools: Tools,
                  config: EpisodeConfig | None = None) -> list[Episode]:
    return [run_episode(policy, q, tools, config) for q in questions]


def summarize(episodes: list[Episode], reward: RewardConfig | None = None) -> dict:
    """Means over episodes; F1 and reward only over questions that have clue intervals."""
    reward = reward or RewardConfig()
    n = len(episodes)
    if n == 0:
        return {"questions": 0}
    f1s, scores, visited_fraction = [], [], []
    per_task = defaultdict(list)
    for ep in episodes:
        q = ep.question
        per_task[q.task_type or "all"].append(bool(ep.correct))
        visited = [tree.segment_interval(ids, ep.width, ep.duration) for ids in ep.visited]
        covered = total_length(union_intervals(visited))
        visited_fraction.append(covered / ep.duration if ep.duration else 0.0)
        if q.clue_intervals and q.answer is not None:
            f1s.append(localisation_f1(visited, merge_clues(q.clue_intervals, reward.clue_merge_gap))[2])
            scores.append(score_calls(ep.answer, q.answer, ep.visited, ep.width, ep.duration, q.clue_intervals,
                                      reward)["score"])
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return {
        "questions": n,
        "accuracy": mean([bool(ep.correct) for ep in episodes]),
        "accuracy_per_task": {k: mean(v) for k, v in sorted(per_task.items())},
        "rounds": mean([len(ep.turns) for ep in episodes]),
        "get_caption_calls": mean([ep.costs.get_caption_calls for ep in episodes]),
        "video_qa_calls": mean([ep.costs.video_qa_calls for ep in episodes]),
        "invalid_rounds": mean([ep.costs.invalid_rounds for ep in episodes]),
        "answered": mean([ep.answer is not None for ep in episodes]),
        "visited_fraction": mean(visited_fraction),
        "f1": mean(f1s),
        "reward": mean(scores),
        "model_seconds": mean([ep.costs.model_seconds for ep in episodes]),
    }


def timed_run(policy, questions, tools, config=None) -> tuple[list[Episode], float]:
    t0 = time.perf_counter()
    episodes = run_questions(policy, questions, tools, config)
    return episodes, time.perf_counter() - t0
