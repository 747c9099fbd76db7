"""The learning result of pipeline runs: RL curves, validation before/after RL, the held-out table, wall time.

    python bench/bench_learning.py --run runs/demo-cpu [--run runs/demo-learning] [--png bench/learning_curves.png]

Reads what `lvr1 pipeline --config configs/<name>.yaml` wrote under each run folder (``summary.json``,
``rl/history.jsonl``, ``eval/<label>.jsonl``) and prints Markdown tables:

- wall time by stage (``summary.json``'s ``stage_seconds``);
- the RL curve, step by step: reward, accuracy, answered, valid tool calls per turn, invalid turns per
  turn, truncated episodes, get_caption calls per episode, the log-prob drift between the rollout and
  the learner, dropped groups (dynamic sampling); then the mean reward of the first two and the last
  two steps and their difference;
- validation (greedy) before RL and after RL;
- the held-out evaluation of every checkpoint and baseline: accuracy, reward, rounds, calls, F1.

With ``--png`` it draws the reward and accuracy curves of every run into one PNG.
Nothing is re-run: run the pipeline first (its command is printed with each run's tables).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CURVE = [  # history key, header, format
    ("rollout/reward_mean", "reward", "{:.3f}"),
    ("rollout/accuracy", "accuracy", "{:.3f}"),
    ("rollout/answered", "answered", "{:.2f}"),
    ("rollout/valid_tool_call_share", "valid calls/turn", "{:.2f}"),
    ("rollout/invalid_round_share", "invalid/turn", "{:.2f}"),
    ("rollout/truncated_share", "truncated", "{:.2f}"),
    ("rollout/get_caption_calls", "get_caption/ep", "{:.2f}"),
    ("rollout/logprob_diff_mean", "logprob drift", "{:.1e}"),
    ("rollout/dropped_groups", "dropped groups", "{:.0f}"),
    ("time/step_s", "step s", "{:.1f}"),
]
EVAL = [("accuracy", "accuracy", "{:.3f}"), ("reward", "reward", "{:.3f}"), ("rounds", "rounds", "{:.2f}"),
        ("get_caption_calls", "get_caption", "{:.2f}"), ("video_qa_calls", "video_qa", "{:.2f}"),
        ("invalid_rounds", "invalid rounds", "{:.2f}"), ("f1", "F1", "{:.3f}"), ("answered", "answered", "{:.2f}")]


def _fmt(value, how: str) -> str:
    return "–" if value is None else how.format(value)


def read_history(run: Path) -> list[dict]:
    path = run / "rl" / "history.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def rl_tables(history: list[dict]) -> tuple[list[str], dict]:
    steps = [h for h in history if h["step"] >= 0 and "rollout/reward_mean" in h]
    lines = ["| step | " + " | ".join(h for _, h, _ in CURVE) + " |", "|---:|" + "---:|" * len(CURVE)]
    for h in steps:
        lines.append(f"| {h['step'] + 1} | " + " | ".join(_fmt(h.get(k), f) for k, _, f in CURVE) + " |")
    rewards = [h["rollout/reward_mean"] for h in steps]
    figures = {}
    if len(rewards) >= 4:
        first, last = mean(rewards[:2]), mean(rewards[-2:])
        figures = {"reward_first_two": first, "reward_last_two": last, "reward_rise": last - first}
        lines += ["", f"Reward, mean of the first two steps {first:.3f}, of the last two {last:.3f}: "
                      f"rise {last - first:+.3f}."]
    vals = [h for h in history if "val/accuracy" in h]
    if vals:
        before, after = vals[0], vals[-1]
        figures.update({"val_accuracy_before": before["val/accuracy"], "val_accuracy_after": after["val/accuracy"],
                        "val_reward_before": before["val/reward_mean"], "val_reward_after": after["val/reward_mean"]})
        lines += ["", "| validation (greedy) | step | accuracy | reward | answered | invalid/turn | get_caption/ep |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name, h in (("before RL", before), ("after RL", after)):
            lines.append(f"| {name} | {h['step'] + 1} | {h['val/accuracy']:.3f} | {h['val/reward_mean']:.3f} | "
                         f"{_fmt(h.get('val/answered'), '{:.2f}')} | {_fmt(h.get('val/invalid_round_share'), '{:.2f}')} | "
                         f"{_fmt(h.get('val/get_caption_calls'), '{:.2f}')} |")
    return lines, figures


def eval_table(run: Path) -> list[str]:
    from longvideo_r1.eval.metrics import summarize_records
    from longvideo_r1.eval.report import load_results

    folder = run / "eval"
    if not folder.is_dir():
        return []
    results, _ = load_results(folder)
    lines = ["| policy | questions | " + " | ".join(h for _, h, _ in EVAL) + " |", "|---|---:|" + "---:|" * len(EVAL)]
    for label, records in results.items():
        m = summarize_records(records)
        m["invalid_rounds"] = mean([(r.get("costs") or {}).get("invalid_rounds") for r in records])
        lines.append(f"| {label} | {m['questions']} | " + " | ".join(_fmt(m.get(k), f) for k, _, f in EVAL) + " |")
    return lines


def plot(runs: list[tuple[str, list[dict]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, history in runs:
        steps = [h for h in history if h["step"] >= 0 and "rollout/reward_mean" in h]
        xs = [h["step"] + 1 for h in steps]
        axes[0].plot(xs, [h["rollout/reward_mean"] for h in steps], marker="o", ms=3, label=f"{name} rollout")
        axes[1].plot(xs, [h["rollout/accuracy"] for h in steps], marker="o", ms=3, label=f"{name} rollout")
        vals = [h for h in history if "val/accuracy" in h]
        if vals:
            vx = [h["step"] + 1 for h in vals]
            axes[0].plot(vx, [h["val/reward_mean"] for h in vals], ls="--", marker="s", ms=4, label=f"{name} validation")
            axes[1].plot(vx, [h["val/accuracy"] for h in vals], ls="--", marker="s", ms=4, label=f"{name} validation")
    for ax, title in zip(axes, ("reward", "accuracy")):
        ax.set_xlabel("RL step (0 = before RL)")
        ax.set_ylabel(title)
        ax.set_title(f"GRPO {title} on the demo corpus")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"\nwrote {path}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, help="a pipeline output folder (repeatable)")
    parser.add_argument("--png", help="write the reward and accuracy curves of all runs here")
    parser.add_argument("--json", help="write the headline figures of each run here")
    args = parser.parse_args(argv)
    curves, figures = [], {}
    for folder in map(Path, args.run):
        summary_path = folder / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        name = summary.get("name") or folder.name
        print(f"\n## {name} — `{folder}`\n")
        seconds = summary.get("stage_seconds") or {}
        if seconds:
            training = sum(seconds.get(k, 0.0) for k in ("sft", "rl", "eval"))
            print("| " + " | ".join(seconds) + " | SFT+RL+eval |")
            print("|" + "---:|" * (len(seconds) + 1))
            print("| " + " | ".join(f"{v:.0f}" for v in seconds.values()) + f" | {training:.0f} |\n")
        history = read_history(folder)
        lines, fig = rl_tables(history)
        print("\n".join(lines))
        table = eval_table(folder)
        if table:
            print("\nHeld-out evaluation (greedy):\n")
            print("\n".join(table))
        figures[name] = {**fig, "stage_seconds": seconds}
        curves.append((name, history))
    if args.png:
        plot(curves, Path(args.png))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
