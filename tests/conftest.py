"""Shared fixtures: a small demo corpus generated once per test session."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from longvideo_r1.corpus.demo import generate_demo_corpus

DEMO_VIDEOS = 3
DEMO_MINUTES = 2.0
DEMO_SEED = 11


@dataclass
class DemoCorpus:
    root: Path
    summary: dict
    minutes: float = DEMO_MINUTES   # each video lasts this long, within ±20 %

    def video(self, video_id: str) -> Path:
        return self.root / "videos" / f"{video_id}.mp4"

    def script(self, video_id: str) -> dict:
        """The hidden ground truth: only tests may read it."""
        return json.loads((self.root / "generator" / f"{video_id}.json").read_text())

    def questions(self) -> list[dict]:
        return [json.loads(line) for line in (self.root / "questions.jsonl").read_text().splitlines()]

    @property
    def video_ids(self) -> list[str]:
        return [v["video_id"] for v in self.summary["videos"]]


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> DemoCorpus:
    """Three videos of about two minutes each (real H.264 files, subtitles, questions)."""
    root = tmp_path_factory.mktemp("demo_corpus")
    return DemoCorpus(root, generate_demo_corpus(root, videos=DEMO_VIDEOS, minutes=DEMO_MINUTES, seed=DEMO_SEED))
