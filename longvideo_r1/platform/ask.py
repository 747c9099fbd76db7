"""`lvr1 ask`: one question about one video, answered by a navigator, with the path it took.

The video's caption tree is built on demand (and kept in the store for the next question), the
episode is played, and the answer, every round and the costs are printed; the trace can be written
as JSON and drawn as a timeline.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from longvideo_r1.agent.episode import EpisodeConfig, Question
from longvideo_r1.agent.policies import make_policy
from longvideo_r1.agent.tools import Tools, run_episode
from longvideo_r1.corpus.build import build_store
from longvideo_r1.corpus.store import CaptionStore
from longvideo_r1.corpus.video import probe_video
from longvideo_r1.errors import InputError


def parse_clues(values: list[str] | None) -> list[list[float]] | None:
    """``["12.5-20", "300-310"]`` -> ``[[12.5, 20.0], [300.0, 310.0]]``."""
    if not values:
        return None
    clues = []
    for value in values:
        try:
            start, end = (float(x) for x in value.split("-", 1))
        except ValueError:
            raise InputError(f"--clue {value!r}: write START-END in seconds, e.g. --clue 120-135.5") from None
        if end < start:
            raise InputError(f"--clue {value!r}: the end is before the start")
        clues.append([start, end])
    return clues


def ensure_captioned(video_path: str | Path, store: str | Path, captioner: str = "offline",
                     captioner_options: dict | None = None) -> str:
    """Caption the video into ``store`` unless it is already there; returns its video id."""
    info = probe_video(video_path)
    try:
        CaptionStore(store).video(info.video_id)
        return info.video_id
    except InputError:
        pass
    print(f"[lvr1 ask] captioning {video_path} into {store} ({captioner} captioner)…", file=sys.stderr, flush=True)
    report = build_store(Path(video_path).parent, store, captioner, captioner_options,
                         videos=[(info.video_id, Path(video_path))], progress=False)
    if report.failed:
        raise InputError(next(iter(report.failed.values())))
    return info.video_id


def print_episode(episode, out=None, width: int = 160) -> None:
    """Each turn of ``episode`` on ``out`` (default: the current ``sys.stdout``, looked up at call time)."""
    out = out if out is not None else sys.stdout
    def short(text: str | None) -> str:
        text = " ".join((text or "").split())
        return text if len(text) <= width else text[: width - 1] + "…"

    for turn in episode.turns:
        action = turn.action
        what = action.call or (f"answer {action.answer}" if action.kind == "answer" else f"invalid: {action.message}")
        print(f"round {turn.round:>2}: {what}", file=out)
        if action.think:
            print(f"    think: {short(action.think)}", file=out)
        if turn.observation and action.kind != "answer":
            print(f"    saw:   {short(turn.observation)}", file=out)
    c = episode.costs
    verdict = "" if episode.correct is None else ("  (correct)" if episode.correct else
                                                  f"  (wrong; ground truth {episode.question.answer})")
    print(f"answer: {episode.answer}{verdict}", file=out)
    print(f"cost: {c.rounds} rounds, {c.get_caption_calls} get_caption, {c.video_qa_calls} video_qa, "
          f"{c.invalid_rounds} invalid; model seconds {c.model_seconds:.2f} (policy {c.policy_seconds:.2f}, "
          f"video_qa {c.video_qa_seconds:.2f})", file=out)


def ask(video: str, question: str, options: list[str] | None, store: str, policy: str = "retrieval",
        video_qa: str = "offline", video_qa_options: dict | None = None, captioner: str = "offline",
        captioner_options: dict | None = None, max_rounds: int = 30, answer: str | None = None,
        clues: list[list[float]] | None = None, policy_options: dict | None = None,
        trace_json: str | None = None, timeline_png: str | None = None):
    video_id = ensure_captioned(video, store, captioner, captioner_options)
    q = Question(video_id, question, options, answer, clues, qid="ask")
    backend = None
    if video_qa != "none":
        from longvideo_r1.agent.video_qa import make_video_qa
        backend = make_video_qa(video_qa, **(video_qa_options or {}))
    navigator = make_policy(policy, **(policy_options or {}))
    episode = run_episode(navigator, q, Tools(CaptionStore(store), backend), EpisodeConfig(max_rounds=max_rounds))
    trace = episode.to_json()
    if trace_json:
        Path(trace_json).write_text(json.dumps(trace, indent=1, ensure_ascii=False))
    if timeline_png:
        from longvideo_r1.eval.timeline import draw_timeline
        draw_timeline(trace, timeline_png)
    return episode
