"""A navigation map of one episode: which segments the agent read, in what order, against the clues."""

from __future__ import annotations

from pathlib import Path

from longvideo_r1.corpus import tree


def draw_timeline(trace: dict, path: str | Path, title: str | None = None) -> Path:
    """Write a PNG of an episode trace (``Episode.to_json()``): one row per level plus video_qa.

    Visited segments are drawn at their nominal time ranges and numbered in call order; the
    question's clue intervals, when known, are shaded across all rows.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width, duration = trace["width"], trace["duration"]
    rows = {"high": 3, "medium": 2, "low": 1, "video_qa": 0}
    fig, ax = plt.subplots(figsize=(11, 3.2), dpi=110)
    for clue in trace["question"].get("clue_intervals") or []:
        ax.axvspan(clue[0], max(clue[1], clue[0] + duration / 400), color="#2ca02c", alpha=0.25, lw=0)
    for h in range(1, width + 1):   # the high level is always given to the agent
        start, end = tree.segment_interval((h,), width, duration)
        ax.barh(rows["high"], end - start, left=start, height=0.6, color="#c7c7c7", edgecolor="white")
    calls = [(turn["action"]["kind"], tuple(turn["action"]["ids"]))
             for turn in trace["turns"] if turn["action"].get("kind") in ("get_caption", "video_qa")]
    for order, (kind, ids) in enumerate(calls, start=1):
        start, end = tree.segment_interval(ids, width, duration)
        row = rows["video_qa"] if kind == "video_qa" else rows[tree.level_of(ids)]
        colour = "#d62728" if kind == "video_qa" else ("#1f77b4" if len(ids) == 2 else "#ff7f0e")
        ax.barh(row, max(end - start, duration / 500), left=start, height=0.6, color=colour, alpha=0.85)
        if len(calls) <= 40:
            ax.text((start + end) / 2, row + 0.36, str(order), ha="center", va="bottom", fontsize=7)
    ax.set_yticks(list(rows.values()), [f"{k} ({width ** tree.LEVEL_DEPTH[k]})" if k != "video_qa" else k
                                        for k in rows])
    ax.set_xlim(0, duration)
    ax.set_ylim(-0.6, 3.8)
    ax.set_xlabel("seconds")
    answer = trace.get("answer")
    verdict = "" if trace.get("correct") is None else (" (correct)" if trace["correct"] else " (wrong)")
    question = trace["question"]["question"]
    ax.set_title(title or f"{question[:90]}{'…' if len(question) > 90 else ''}\nanswer: {answer}{verdict}; "
                 f"{trace['rounds']} rounds, {trace['costs']['get_caption_calls']} get_caption, "
                 f"{trace['costs']['video_qa_calls']} video_qa", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
