"""Every baseline navigator on the demo corpus: accuracy, rounds, calls, localisation F1, reward.

Runs on the main job's output (`lvr1 pipeline --config configs/demo-cpu.yaml` writes
runs/demo-cpu/corpus and runs/demo-cpu/store) with the demo video_qa backend, and prints a
Markdown table per split. The oracle walks to the clue intervals: with answers from the ground truth
(the SFT teacher, 100% by construction) and from the evidence it read (what perfect navigation
plus our heuristic reader achieves).

Usage: python bench/bench_baselines.py [--run runs/demo-cpu] [--splits test all] [--max-rounds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

from longvideo_r1.agent.episode import EpisodeConfig, Question
from longvideo_r1.agent.policies import make_policy
from longvideo_r1.agent.tools import Tools
from longvideo_r1.agent.video_qa import make_video_qa
from longvideo_r1.corpus.store import CaptionStore
from longvideo_r1.eval.metrics import summarize, timed_run

POLICIES = [
    ("random (10 calls)", "random", {}),
    ("retrieval (top 4 + video_qa)", "retrieval", {}),
    ("exhaustive (every caption)", "exhaustive", {}),
    ("oracle, answers from evidence", "oracle", {"answer_from": "evidence"}),
    ("oracle, answers the truth (SFT teacher)", "oracle", {}),
]


def fmt(x, digits=2):
    return "–" if x is None else f"{x:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/demo-cpu", help="output folder of the demo pipeline")
    parser.add_argument("--splits", nargs="+", default=["test", "all"])
    parser.add_argument("--max-rounds", type=int, default=30)
    args = parser.parse_args()

    run = Path(args.run)
    rows = [json.loads(line) for line in (run / "corpus" / "questions.jsonl").read_text().splitlines() if line]
    tools = Tools(CaptionStore(run / "store"), make_video_qa("demo"))
    config = EpisodeConfig(max_rounds=args.max_rounds)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    for split in args.splits:
        questions = [Question.from_row(r) for r in rows if split == "all" or r["split"] == split]
        print(f"\n## Baselines on the demo corpus, split {split} ({len(questions)} questions, "
              f"max {args.max_rounds} rounds)\n")
        print("| navigator | accuracy | rounds | get_caption | video_qa | visited % | F1 | reward | "
              "model s/q | wall s | accuracy per task |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for label, name, options in POLICIES:
            episodes, wall = timed_run(make_policy(name, **options), questions, tools, config)
            m = summarize(episodes)
            tasks = ", ".join(f"{k} {v:.2f}" for k, v in m["accuracy_per_task"].items())
            print(f"| {label} | {fmt(m['accuracy'])} | {fmt(m['rounds'], 1)} | {fmt(m['get_caption_calls'], 1)} | "
                  f"{fmt(m['video_qa_calls'], 1)} | {fmt(100 * m['visited_fraction'], 1)} | {fmt(m['f1'])} | "
                  f"{fmt(m['reward'])} | {fmt(m['model_seconds'])} | {wall:.0f} | {tasks} |", flush=True)


if __name__ == "__main__":
    main()
