"""Run every benchmark of the platform and write their tables into bench/RESULTS.md.

Benchmarks (each its own script, run as a subprocess; its Markdown output is kept as printed):

- ``store``: caption-store lookups vs the per-call JSON approach (bench_store.py);
- ``rollout``: vLLM batched vs transformers batched vs the reference demo's naive loop (bench_rollout.py);
- ``step``: where a batched vLLM decode step goes (bench_vllm_step.py);
- ``learner``: SFT tokens/s through the DeepSpeed learner vs a plain PyTorch loop (bench_learner.py);
- ``baselines``: every baseline navigator on the demo corpus (bench_baselines.py);
- ``rl_step``: the end-to-end RL step time by phase, read from a pipeline run's ``rl/history.jsonl``.

The generated section of RESULTS.md lies between ``<!-- run_all:start -->`` and
``<!-- run_all:end -->`` (appended the first time); the hand-written analysis around it is kept.
Each benchmark's section names the machine and the 1-minute load average before and after it ran
(the CPU figures are only comparable on an idle machine). Needs the main job's output for
``rollout``, ``learner``, ``baselines`` and ``rl_step`` (``--run``, default runs/demo-cpu).

Usage: python bench/run_all.py [--only store rollout …] [--quick] [--run runs/demo-cpu] [--out bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
START, END = "<!-- run_all:start -->", "<!-- run_all:end -->"
NAMES = ("store", "rollout", "step", "learner", "baselines", "rl_step")


def commands(run: str, quick: bool) -> dict[str, list[str]]:
    py = sys.executable
    return {
        "store": [py, str(HERE / "bench_store.py")] + (["--videos", "200", "--lookups", "20000"] if quick else []),
        "rollout": [py, str(HERE / "bench_rollout.py"), "--run", run]
                   + (["--models", "tiny-qwen3", "--episodes", "16", "--skip-transformers"] if quick else []),
        "step": [py, str(HERE / "bench_vllm_step.py")] + (["--steps", "16"] if quick else []),
        "learner": [py, str(HERE / "bench_learner.py"), "--run", run] + (["--models", "tiny-qwen3"] if quick else []),
        "baselines": [py, str(HERE / "bench_baselines.py"), "--run", run] + (["--splits", "test"] if quick else []),
    }


def machine() -> str:
    mem = ""
    try:
        kib = int(next(line for line in open("/proc/meminfo") if line.startswith("MemTotal")).split()[1])
        mem = f", {kib / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    return f"{platform.machine()}, {os.cpu_count()} cores{mem}, Python {platform.python_version()}"


def rl_step_table(run: Path) -> str:
    """Mean seconds per phase of the RL steps recorded by a pipeline run."""
    path = run / "rl" / "history.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: run the main job first (lvr1 pipeline --config configs/demo-cpu.yaml)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("step", -1) >= 0 and "time/step_s" in r]
    if not rows:
        raise ValueError(f"{path}: no RL step recorded yet")
    phases = [k for k in rows[0] if k.startswith("time/")]

    def mean(key):
        return sum(r[key] for r in rows) / len(rows)

    lines = [f"{len(rows)} RL steps of `{run}` ({rows[0].get('rollout/response_tokens', 0):.0f} response tokens "
             "per episode at the first step):", "",
             "| phase | mean s per step | share |", "|---|---:|---:|"]
    total = mean("time/step_s")
    for key in phases:
        if key != "time/step_s":
            lines.append(f"| {key[5:-2]} | {mean(key):.1f} | {mean(key) / total:.0%} |")
    lines.append(f"| **step** | **{total:.1f}** | |")
    lines.append("")
    lines.append(f"Sampled tokens per second of rollout: {mean('rollout/sampled_tokens_per_s'):.0f}.")
    return "\n".join(lines)


def _tables(stdout: str) -> str:
    """A script's printed results without library log lines (vLLM and DeepSpeed log to stdout)."""
    noise = re.compile(r"^\(\w+ pid=\d+\)|^\[\d{4}-\d\d-\d\d [\d:,]+\] \[(INFO|WARNING)\]|^(INFO|WARNING) \d\d-\d\d ")
    return "\n".join(line for line in stdout.strip().splitlines() if not noise.match(line))


def run_one(name: str, cmd: list[str] | None, run: Path) -> str:
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    if cmd is None:
        body, ok = rl_step_table(run), True
    else:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=HERE.parent)
        ok = proc.returncode == 0
        body = _tables(proc.stdout) if ok else f"**failed** (exit {proc.returncode}); see its output above."
    seconds = time.perf_counter() - t0
    shown = " ".join(Path(c).name if c.endswith(".py") else c for c in (cmd or [])[1:]) or f"rl/history.jsonl of {run}"
    head = (f"### {name} — `{shown}`\n\n{machine()}; load average {load0:.1f} before, "
            f"{os.getloadavg()[0]:.1f} after; {seconds:.0f} s.\n")
    print(f"run_all: {name} {'done' if ok else 'FAILED'} in {seconds:.0f} s", file=sys.stderr, flush=True)
    return head + "\n" + body + "\n"


def write(out: Path, sections: list[str]) -> None:
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    block = f"{START}\n## Generated by `python bench/run_all.py` ({stamp})\n\n" + "\n".join(sections) + f"\n{END}"
    text = out.read_text() if out.is_file() else "# Benchmark results\n"
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    out.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=NAMES, default=list(NAMES))
    parser.add_argument("--quick", action="store_true", help="smaller runs of each benchmark (minutes, not an hour)")
    parser.add_argument("--run", default="runs/demo-cpu", help="the main job's output folder")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
    args = parser.parse_args()
    cmds = commands(args.run, args.quick)
    sections = [run_one(name, cmds.get(name), Path(args.run)) for name in NAMES if name in args.only]
    write(Path(args.out), sections)
    print(f"run_all: wrote {len(sections)} section(s) into {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
