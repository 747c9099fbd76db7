"""A question about one video, as every annotation format is read into (:mod:`corpus.annotations`)
and as the agent plays it (:mod:`agent.episode`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Question:
    """A question about one video; ``answer`` and ``clue_intervals`` are known for training data."""

    video_id: str
    question: str
    options: list[str] | None = None
    answer: str | None = None
    clue_intervals: list[list[float]] | None = None
    qid: str | None = None
    task_type: str | None = None
    data_source: str = "lvr1_demo"

    @classmethod
    def from_row(cls, row: dict) -> "Question":
        """From a demo/CG-Bench-style JSON row (extra keys are ignored)."""
        return cls(row["video_id"], row["question"], row.get("options"), row.get("answer"),
                   row.get("clue_intervals"), row.get("qid"), row.get("task_type"),
                   row.get("data_source", "lvr1_demo"))
