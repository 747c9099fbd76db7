"""Shared fixtures: a small demo corpus generated once per test session."""

from __future__ import annotations

import json
import os
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


@pytest.fixture(autouse=True)
def _keeps_the_ordinary_scheduler():
    """A test that leaves this process on a real-time scheduling policy fails (and the policy is put
    back): every later thread and Ray process would inherit it, and on 2 cores spinning threads at
    SCHED_FIFO 99 starve the rest (SVT-AV1 does this when run as root; tests/media.py)."""
    before = os.sched_getscheduler(0), os.sched_getparam(0)
    yield
    after = os.sched_getscheduler(0), os.sched_getparam(0)
    if after != before:
        os.sched_setscheduler(0, *before)
        pytest.fail(f"the test left this process on scheduling policy {after[0]} (priority {after[1].sched_priority}), "
                    f"not {before[0]}; put it back (tests/media.py encode_ramp shows how)")


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> DemoCorpus:
    """Three videos of about two minutes each (real H.264 files, subtitles, questions)."""
    root = tmp_path_factory.mktemp("demo_corpus")
    return DemoCorpus(root, generate_demo_corpus(root, videos=DEMO_VIDEOS, minutes=DEMO_MINUTES, seed=DEMO_SEED))


@pytest.fixture(scope="session")
def demo_store(demo_corpus, tmp_path_factory) -> Path:
    """The demo corpus captioned by the demo captioner into one store, shared by the test modules
    (read-only: a test that writes to a store builds its own)."""
    from longvideo_r1.corpus.build import build_store

    root = tmp_path_factory.mktemp("demo_store") / "store"
    report = build_store(demo_corpus.root / "videos", root, "demo", progress=False)
    assert report.failed == {} and sorted(report.built) == sorted(demo_corpus.video_ids)
    return root


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory) -> Path:
    """A randomly initialised tiny Qwen3 with the real Qwen3 tokenizer (vLLM and transformers load it)."""
    from longvideo_r1.models import make_tiny_qwen3

    return make_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3") / "model")


@pytest.fixture(scope="session")
def rollout_tools(tmp_path_factory):
    """Tools over a small store of synthetic caption trees (tests/navigator.py VIDEOS), no video_qa."""
    from longvideo_r1.agent.tools import Tools
    from longvideo_r1.corpus.store import CaptionStore
    from tests.navigator import VIDEOS
    from tests.test_store import build, make_video

    root = tmp_path_factory.mktemp("rollout-store") / "store"
    build(root, [make_video(video, frames) for video, frames in VIDEOS], shards=2)
    return Tools(CaptionStore(root))


@pytest.fixture(scope="session")
def tiny_navigator_dir(tmp_path_factory, rollout_tools) -> Path:
    """A tiny Qwen3 taught to call get_caption((1,1)) and then answer B on the rollout test questions."""
    from tests.navigator import train_tiny_navigator

    return train_tiny_navigator(tmp_path_factory.mktemp("tiny-navigator"), rollout_tools)


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance (2 CPUs, no dashboard) for one test module."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
