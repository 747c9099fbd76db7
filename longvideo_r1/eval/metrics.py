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


# ---------------------------------------------------------------- per-question records (lvr1 eval)

def visited_fraction(visited_ids, width: int, duration: float) -> float:
    """Length of the union of the get_caption segments' time ranges over the video's duration."""
    if not duration:
        return 0.0
    spans = [tree.segment_interval(tuple(ids), width, duration) for ids in visited_ids]
    return total_length(union_intervals(spans)) / duration


def localisation(visited_ids, width: int, duration: float, clue_intervals,
                 gap: float = RewardConfig.clue_merge_gap) -> tuple[float, float, float] | None:
    """``(coverage, precision, F1)`` of the visited segments against the merged clues; None without clues."""
    if not clue_intervals:
        return None
    spans = [tree.segment_interval(tuple(ids), width, duration) for ids in visited_ids]
    return localisation_f1(spans, merge_clues([tuple(c) for c in clue_intervals], gap))


def summarize_records(records: list[dict]) -> dict:
    """Means over the result lines of one policy (``lvr1 eval`` JSONL records).

    Accuracy counts a missing answer as wrong; a question with several task types counts toward
    each. F1 is averaged over the questions that have clue intervals (``f1_questions`` of them),
    reward over the questions that have one; model seconds follow the paper (policy + video_qa
    compute time per question).
    """
    n = len(records)
    if n == 0:
        return {"questions": 0}

    def mean(xs):
        xs = [x for x in xs if x is not None]
        return sum(xs) / len(xs) if xs else None

    per_task = defaultdict(list)
    for r in records:
        for task in r.get("task_types") or [r.get("task_type") or "all"]:
            per_task[task].append(bool(r.get("correct")))
    calls = [r["calls"] for r in records]
    costs = [r["costs"] for r in records]
    f1s = [r.get("f1") for r in records]
    return {
        "questions": n,
        "answered": mean([r.get("answer") is not None for r in records]),
        "accuracy": mean([bool(r.get("correct")) for r in records if r.get("correct") is not None]),
        "accuracy_per_task": {k: mean(v) for k, v in sorted(per_task.items())},
        "questions_per_task": {k: len(v) for k, v in sorted(per_task.items())},
        "rounds": mean([r["rounds"] for r in records]),
        "get_caption_calls": mean([c["get_caption"] for c in calls]),
        "video_qa_calls": mean([c["video_qa"] for c in calls]),
        "calls": mean([c["get_caption"] + c["video_qa"] for c in calls]),
        "invalid_rounds": mean([c.get("invalid", 0) for c in calls]),
        "visited_fraction": mean([r.get("visited_fraction") for r in records]),
        "f1": mean(f1s),
        "f1_questions": sum(1 for f in f1s if f is not None),
        "reward": mean([r.get("reward") for r in records]),
        "model_seconds": mean([c["model_seconds"] for c in costs]),
        "policy_seconds": mean([c["policy_seconds"] for c in costs]),
        "video_qa_seconds": mean([c["video_qa_seconds"] for c in costs]),
    }
