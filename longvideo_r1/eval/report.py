"""The evaluation report: a Markdown file and PNG plots made from the result files of ``lvr1 eval``.

``write_report(results_dir, out_dir)`` reads every ``<label>.jsonl`` of ``results_dir`` (the order of
the last run's ``run.json`` first, then the others by name) and writes to ``out_dir`` (default: the
same folder):

- ``report.md``: a table of policies × metrics (accuracy, rounds, get_caption and video_qa calls,
  fraction of the video visited, localisation F1, reward, model seconds per question) and a table of
  accuracy per task type;
- ``accuracy_vs_calls.png``: accuracy against tool calls per question, one labelled point per policy;
- ``per_task_accuracy.png``: accuracy per task type, one bar per policy;
- ``navigation_<n>_<qid>.png``: for a few questions every policy finished, one row per policy showing
  the segments it read (medium and low), where it asked video_qa, and the clue intervals.

It returns the paths (for MLflow's ``log_artifact``) and the metrics as plain dicts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from longvideo_r1.corpus import tree
from longvideo_r1.errors import InputError
from longvideo_r1.eval.metrics import summarize_records

MAX_MAPS = 3
_COLUMNS = [  # key, header, format
    ("questions", "questions", "{:d}"),
    ("accuracy", "accuracy", "{:.3f}"),
    ("rounds", "rounds", "{:.2f}"),
    ("get_caption_calls", "get_caption", "{:.2f}"),
    ("video_qa_calls", "video_qa", "{:.2f}"),
    ("visited_fraction", "visited %", "pct"),
    ("f1", "F1", "{:.3f}"),
    ("reward", "reward", "{:.3f}"),
    ("model_seconds", "model s/q", "{:.3f}"),
]


def _fmt(value, how: str) -> str:
    if value is None:
        return "–"
    if how == "pct":
        return f"{100 * value:.1f}"
    return how.format(value)


def load_results(results_dir: str | Path) -> tuple[dict[str, list[dict]], dict]:
    """``({label: records}, run.json contents)`` of a results folder."""
    from longvideo_r1.eval.evaluate import read_results

    root = Path(results_dir)
    if not root.is_dir():
        raise InputError(f"results folder {root}: no such folder; run `lvr1 eval --out {root}` first")
    run = {}
    if (root / "run.json").is_file():
        try:
            run = json.loads((root / "run.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            run = {}
    order = [p["label"] for p in run.get("policies", []) if isinstance(p, dict) and "label" in p]
    files = {p.stem: p for p in sorted(root.glob("*.jsonl"))}
    labels = [x for x in order if x in files] + [x for x in sorted(files) if x not in order]
    results = {label: read_results(files[label]) for label in labels}
    results = {k: v for k, v in results.items() if v}
    if not results:
        raise InputError(f"results folder {root}: no result lines yet (no <policy>.jsonl with finished questions)")
    return results, run


# ====================================================================== plots

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy_vs_calls(metrics: dict[str, dict], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    for label, m in metrics.items():
        x, y = m.get("calls") or 0.0, m.get("accuracy") or 0.0
        ax.scatter([x], [y], s=60, zorder=3)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 5), fontsize=9)
    xs = [m.get("calls") or 0.0 for m in metrics.values()]
    ax.set_xlim(left=0, right=max(xs + [1.0]) * 1.2)
    ax.set_ylim(-0.03, 1.05)
    ax.set_xlabel("tool calls per question (get_caption + video_qa)")
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy against navigation cost")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_per_task(metrics: dict[str, dict], tasks: list[str], path: Path) -> Path:
    plt = _pyplot()
    labels = list(metrics)
    fig, ax = plt.subplots(figsize=(max(6.4, 1.3 * len(tasks) * max(1, len(labels)) / 2 + 2), 4.4), dpi=110)
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        per_task = metrics[label].get("accuracy_per_task", {})
        xs = [t + (i - (len(labels) - 1) / 2) * width for t in range(len(tasks))]
        ys = [per_task.get(task) or 0.0 for task in tasks]
        ax.bar(xs, ys, width=width * 0.95, label=label)
    ax.set_xticks(range(len(tasks)), [t if len(t) <= 18 else t[:17] + "…" for t in tasks],
                  rotation=20 if len(tasks) > 4 else 0, ha="right" if len(tasks) > 4 else "center", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy per task type")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_navigation(question_records: dict[str, dict], path: Path) -> Path:
    """One row per policy: segments read (medium light, low dark), video_qa marks, clues shaded."""
    plt = _pyplot()
    first = next(iter(question_records.values()))
    width, duration = first["width"], first["duration"]
    labels = list(question_records)
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.7 * len(labels)), dpi=110)
    for clue in first.get("clue_intervals") or []:
        ax.axvspan(clue[0], max(clue[1], clue[0] + duration / 400), color="#2ca02c", alpha=0.25, lw=0)
    for row, label in enumerate(reversed(labels)):
        r = question_records[label]
        for order, ids in enumerate(r["visited"], start=1):
            start, end = tree.segment_interval(tuple(ids), width, duration)
            low = len(ids) == 3
            ax.barh(row + (0.0 if low else 0.12), max(end - start, duration / 500), left=start,
                    height=0.36 if low else 0.6, color="#ff7f0e" if low else "#1f77b4", alpha=0.85 if low else 0.35,
                    edgecolor="none")
        for ids in r.get("video_qa_segments") or []:
            start, end = tree.segment_interval(tuple(ids), width, duration)
            ax.plot([(start + end) / 2], [row + 0.38], marker="v", color="#d62728", markersize=6)
    ax.set_yticks(range(len(labels)), [
        f"{label} ({'right' if question_records[label].get('correct') else 'wrong'}, "
        f"{question_records[label]['calls']['get_caption']}+{question_records[label]['calls']['video_qa']} calls)"
        for label in reversed(labels)], fontsize=8)
    ax.set_xlim(0, duration)
    ax.set_ylim(-0.6, len(labels) - 0.3)
    ax.set_xlabel("seconds  (blue: medium caption read, orange: low caption read, red ▼: video_qa, green: clues)")
    text = first.get("question") or ""
    ax.set_title(f"{first['qid']}: {text[:100]}{'…' if len(text) > 100 else ''}  (answer {first.get('truth')})",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def pick_map_questions(results: dict[str, list[dict]], limit: int = MAX_MAPS) -> list[str]:
    """Question ids every policy finished, one per task type first, questions with clues first."""
    common = set.intersection(*[{r["qid"] for r in records} for records in results.values()])
    first = next(iter(results.values()))
    candidates = sorted((r for r in first if r["qid"] in common),
                        key=lambda r: (not r.get("clue_intervals"), r["qid"]))
    chosen, tasks_seen = [], set()
    for r in candidates:
        if len(chosen) < limit and (r.get("task_type") not in tasks_seen):
            chosen.append(r["qid"])
            tasks_seen.add(r.get("task_type"))
    for r in candidates:
        if len(chosen) < limit and r["qid"] not in chosen:
            chosen.append(r["qid"])
    return chosen


# ====================================================================== the report

def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]


def write_report(results_dir: str | Path, out_dir: str | Path | None = None, max_maps: int = MAX_MAPS) -> dict:
    """Write ``report.md`` and the PNG plots; returns ``{"report", "plots", "metrics", "per_task"}``.

    ``plots`` maps a plot name to its path; ``metrics`` maps each policy label to its summary
    (:func:`~longvideo_r1.eval.metrics.summarize_records`); ``per_task`` maps each task type to
    ``{label: accuracy}``.
    """
    results, run = load_results(results_dir)
    out = Path(out_dir) if out_dir else Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {label: summarize_records(records) for label, records in results.items()}
    tasks = sorted({t for m in metrics.values() for t in m.get("accuracy_per_task", {})})
    per_task = {t: {label: m["accuracy_per_task"].get(t) for label, m in metrics.items()} for t in tasks}
    specs = {p["label"]: p.get("spec") for p in run.get("policies", []) if isinstance(p, dict) and "label" in p}
    for label, records in results.items():
        specs.setdefault(label, records[0].get("spec"))

    plots = {"accuracy_vs_calls": plot_accuracy_vs_calls(metrics, out / "accuracy_vs_calls.png"),
             "per_task_accuracy": plot_per_task(metrics, tasks, out / "per_task_accuracy.png")}
    by_qid = {label: {r["qid"]: r for r in records} for label, records in results.items()}
    for n, qid in enumerate(pick_map_questions(results, max_maps), start=1):
        plots[f"navigation_{n}"] = plot_navigation({label: by_qid[label][qid] for label in results},
                                                   out / f"navigation_{n}_{_safe(qid)}.png")

    lines = [f"# Evaluation: {run.get('benchmark', Path(results_dir).name)}", ""]
    if run:
        lines += [f"Benchmark `{run.get('benchmark_path')}` ({run.get('format')}, split {run.get('split')}, "
                  f"{run.get('questions')} questions{', limit ' + str(run['limit']) if run.get('limit') else ''}); "
                  f"caption store `{run.get('store')}`; at most {run.get('max_rounds')} rounds; video_qa "
                  f"{run.get('video_qa')}.", ""]
    lines += ["## Policies", "",
              "| policy | spec | " + " | ".join(h for _, h, _ in _COLUMNS) + " |",
              "|---|---|" + "---:|" * len(_COLUMNS)]
    for label, m in metrics.items():
        cells = [_fmt(m.get(key), how) for key, _, how in _COLUMNS]
        lines.append(f"| {label} | `{specs.get(label)}` | " + " | ".join(cells) + " |")
    f1_counts = {m.get("f1_questions", 0) for m in metrics.values()}
    lines += ["", "Means per question. *visited %*: union of the segments read over the video's length. "
              f"*F1*: localisation F1 of the segments read against the clue intervals (over the "
              f"{'/'.join(str(c) for c in sorted(f1_counts))} questions that have them). *reward*: "
              "`compute_score` (answer + F1 − 0.2·repeat; answer alone without clues). *model s/q*: compute "
              "seconds of the navigator and the video_qa model per question (the paper's accounting).", ""]
    lines += ["## Accuracy per task type", "",
              "| task | questions | " + " | ".join(metrics) + " |",
              "|---|---:|" + "---:|" * len(metrics)]
    for t in tasks:
        count = max(m.get("questions_per_task", {}).get(t, 0) for m in metrics.values())
        lines.append(f"| {t} | {count} | " + " | ".join(_fmt(per_task[t][label], "{:.3f}") for label in metrics) + " |")
    lines += ["", "## Plots", "", "![accuracy against calls](accuracy_vs_calls.png)", "",
              "![accuracy per task](per_task_accuracy.png)", ""]
    maps = [k for k in plots if k.startswith("navigation_")]
    if maps:
        lines += ["## Where each policy looked", ""]
        lines += [f"![{k}]({plots[k].name})" for k in maps] + [""]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"report": report, "plots": plots, "metrics": metrics, "per_task": per_task}
