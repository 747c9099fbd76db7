"""The corpus splits and the episode rules that training data are built with (SFT trajectories and
RL rows alike): the rows of one split of a corpus, the caption-store tools over them, and the RL
rollout runner's episode rules, so SFT contexts equal RL contexts."""

from __future__ import annotations

from pathlib import Path

from longvideo_r1.agent.episode import EpisodeConfig
from longvideo_r1.agent.protocol import DEFAULT_SYSTEM_PROMPT
from longvideo_r1.corpus.annotations import read_splits_json
from longvideo_r1.errors import InputError
from longvideo_r1.jsonl import json_lines
from longvideo_r1.rollout.episodes import RolloutConfig

MAX_ROUNDS = RolloutConfig.max_rounds
"""rounds per episode: the RL rollout limit (15), so SFT contexts equal RL contexts"""
ABILITY = "video_navigation"


def episode_config(max_rounds: int = MAX_ROUNDS, system_template: str = DEFAULT_SYSTEM_PROMPT) -> EpisodeConfig:
    """The episode rules of the RL rollout runner (what both SFT data and RL rows are built with)."""
    if max_rounds < 1:
        raise InputError(f"--max-rounds {max_rounds}: give 1 or more rounds")
    return EpisodeConfig(max_rounds=max_rounds, keep_malformed=True, last_round_note="append",
                         system_template=system_template)


# ====================================================================== the corpus

def read_questions(path: Path) -> list[dict]:
    """Every row of a corpus's ``questions.jsonl`` (each with ``video_id`` and ``question``; a row
    without ``qid`` gets ``<video_id>:<line>``)."""
    rows = []
    for n, row in json_lines(path.read_text(encoding="utf-8"), f"corpus questions {path}", "fix the line"):
        if not isinstance(row, dict) or not row.get("video_id") or not row.get("question"):
            raise InputError(f"corpus questions {path} line {n}: a question needs video_id and question")
        row.setdefault("qid", f"{row['video_id']}:{n}")
        rows.append(row)
    return rows


def load_corpus_split(corpus_dir: str | Path, split: str) -> list[dict]:
    """The rows of ``questions.jsonl`` that belong to ``split`` (by their ``split`` key or ``splits.json``)."""
    root = Path(corpus_dir)
    if not root.is_dir():
        raise InputError(f"corpus {root}: no such folder; make one with `lvr1 corpus demo --out {root}` or give "
                         "a folder holding questions.jsonl (and videos/, splits.json)")
    path = root / "questions.jsonl"
    if not path.is_file():
        raise InputError(f"corpus {root}: no questions.jsonl; a corpus folder holds questions.jsonl, "
                         "splits.json and videos/ (see `lvr1 corpus demo`)")
    splits = read_splits_json(root / "splits.json") or {}
    rows = read_questions(path)
    in_split = set(splits.get(split) or [])
    chosen = [r for r in rows if r.get("split", split if r["video_id"] in in_split else None) == split]
    known = list(dict.fromkeys([*splits, *(r["split"] for r in rows if r.get("split"))]))
    if not chosen and split not in known:
        raise InputError(f"split {split!r} is not in corpus {root}: choose one of {', '.join(known) or '(none)'} "
                         "with --split")
    return chosen


def open_tools(store: str | Path, video_ids, video_qa=None):
    """Tools over the caption store; every video in ``video_ids`` must be in it."""
    from longvideo_r1.agent.tools import Tools
    from longvideo_r1.corpus.store import CaptionStore

    captions = CaptionStore(store).require(video_ids)
    return Tools(captions, video_qa)


