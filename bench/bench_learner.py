"""Learner (SFT) throughput: the DeepSpeed learner vs a plain PyTorch loop on the same micro-batches.

Data: real SFT trajectories (the oracle teacher on the train split of runs/demo-cpu, written to a temp
file by ``generate_sft``; or ``--data FILE.jsonl``), tokenised with ``trainer.batches.tokenize_trajectory``
as the rollout runner builds contexts, and cut into micro-batches by ``sft_batches`` (one budget of
padded tokens per micro-batch; ``--micro-per-step`` of them make one optimizer step, i.e. gradient
accumulation). Every approach trains on the very same micro-batches, in the same order:

- learner ZeRO-0 / ZeRO-2: ``trainer.learner.Learner`` in-process (world size 1, gloo, float32);
- plain PyTorch: AdamW (same lr, betas, no weight decay), token-mean cross-entropy over the step's
  loss-mask tokens, global grad-norm clipping; it computes the full [B, L, V] logits, as a
  straightforward loop does. The learner projects only the trained positions (in chunks recomputed
  in the backward pass), so part of any gap is that design, not DeepSpeed.

One warm-up step, then ``--steps`` timed steps. Reported: trained (loss-mask) tokens/s, total tokens/s
(all real, non-pad tokens the step ran through), seconds per step, and the peak resident memory of
the process (``ru_maxrss``): each model × approach runs in its own subprocess, so it is per approach.

Usage: python bench/bench_learner.py [--models tiny-qwen3 smollm2] [--steps 5] [--data FILE.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

APPROACHES = ("learner-zero0", "learner-zero2", "plain")
# Per model: padded tokens per micro-batch, micro-batches per step, timed steps, approaches. A demo
# trajectory is 1.4k-3.9k tokens, so a 2,048-token budget is one trajectory per micro-batch. SmolLM2
# (~135M parameters) runs ~50 tokens/s forward+backward on 2 idle cores: one trajectory per step,
# 3 steps, ZeRO-2 only on request, keep the default run near 6 minutes.
DEFAULTS = {"tiny-qwen3": {"budget": 2048, "per_step": 2, "steps": 4, "approaches": APPROACHES},
            "smollm2": {"budget": 2048, "per_step": 1, "steps": 3, "approaches": ("learner-zero0", "plain")}}


def machine() -> str:
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{platform.machine()}, {os.cpu_count()} cores, {ram:.0f} GiB RAM, Python {platform.python_version()}, "
            f"CPU only; load average at start {load}")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024      # KiB on Linux


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def make_data(args) -> str:
    """The SFT JSONL to train on: --data, or oracle trajectories of the train split in a temp file."""
    if args.data:
        return args.data
    from longvideo_r1.agent.teacher import OracleTeacher
    from longvideo_r1.agent.video_qa import make_video_qa
    from longvideo_r1.trainer.sft_data import generate_sft

    run = Path(args.run)
    out = Path(tempfile.mkdtemp(prefix="bench-learner-")) / "sft.jsonl"
    summary = generate_sft(run / "corpus", run / "store", OracleTeacher(), out, split="train",
                           video_qa=make_video_qa("demo"), progress=False)
    print(f"SFT data: {summary['kept']} oracle trajectories of split train in {out} ({summary['seconds']} s)",
          file=sys.stderr, flush=True)
    return str(out)


def steps_of(model_dir: Path, data: str, budget: int, per_step: int, steps: int) -> tuple[list[list[dict]], dict]:
    """``steps`` + 1 optimizer steps of micro-batches (the first is the warm-up) and data statistics."""
    from transformers import AutoTokenizer

    from longvideo_r1.rollout.chat import ChatTokens
    from longvideo_r1.trainer.batches import sft_batches, tokenize_trajectory
    from longvideo_r1.trainer.sft_data import read_sft_records

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    chat = ChatTokens(tokenizer)
    examples = [tokenize_trajectory(chat, r["messages"]) for r in read_sft_records(data)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batches = sft_batches(examples, budget, pad, seed=0)
    need = (steps + 1) * per_step
    if len(batches) < need:
        raise SystemExit(f"only {len(batches)} micro-batches of {budget} tokens in {data}; need {need} "
                         "(fewer --steps or --micro-per-step, or more data)")
    batches = [{k: b[k] for k in ("input_ids", "attention_mask", "loss_mask")} for b in batches[:need]]
    lengths = [len(e["input_ids"]) for e in examples]
    info = {"trajectories": len(examples), "mean_tokens": sum(lengths) / len(lengths),
            "trained_fraction": sum(sum(e["loss_mask"]) for e in examples) / sum(lengths)}
    return [batches[i: i + per_step] for i in range(0, need, per_step)], info


def trained_tokens(step: list[dict]) -> int:
    # token t is scored by the logits at t - 1, so position 0 is never a target (it is always prompt)
    return sum(int(mb["loss_mask"][:, 1:].sum()) for mb in step)


def plain_loop(model_dir: Path, lr: float, clip: float):
    """The plain PyTorch SFT step: returns ``step(micro_batches) -> (loss, grad_norm)``."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config.use_cache = False
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=0.0)

    def step(micro_batches: list[dict]) -> tuple[float, float]:
        total = max(1, trained_tokens(micro_batches))
        loss_sum = 0.0
        for mb in micro_batches:
            logits = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits[:, :-1]
            lp = torch.log_softmax(logits.float(), -1).gather(-1, mb["input_ids"][:, 1:, None]).squeeze(-1)
            mask = mb["loss_mask"][:, 1:].float()
            loss = -(lp * mask).sum() / total
            loss.backward()
            loss_sum += float(loss.detach())
            del logits, lp, loss
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss_sum, float(norm)

    return step


def learner_loop(model_dir: Path, lr: float, clip: float, zero: int, budget: int):
    from longvideo_r1.trainer.learner import Learner, LearnerConfig

    config = LearnerConfig(model=str(model_dir), zero_stage=zero, dtype="float32", lr=lr, grad_clip=clip,
                           micro_batch_tokens=budget, seed=0)
    learner = Learner(config, rank=0, world_size=1)

    def step(micro_batches: list[dict]) -> tuple[float, float]:
        stats = learner.sft_step(micro_batches, trained_tokens(micro_batches))
        return stats.loss, stats.grad_norm

    return step


def run_one(model_name: str, approach: str, args) -> dict:
    import torch

    from longvideo_r1.models import prepare_models

    model_dir = prepare_models(args.models_dir, [model_name])[model_name]
    budget = args.micro_batch_tokens or DEFAULTS[model_name]["budget"]
    per_step = args.micro_per_step or DEFAULTS[model_name]["per_step"]
    steps, info = steps_of(model_dir, args.data, budget, per_step, args.steps or DEFAULTS[model_name]["steps"])
    t = time.perf_counter()
    if approach == "plain":
        step = plain_loop(model_dir, args.lr, args.clip)
    else:
        step = learner_loop(model_dir, args.lr, args.clip, int(approach[-1]), budget)
    load_s = time.perf_counter() - t
    rss_loaded = peak_rss_mib()
    t = time.perf_counter()
    warm_loss, _ = step(steps[0])
    warm_s = time.perf_counter() - t
    losses, norms, seconds = [], [], []
    load_before, cpu_before = os.getloadavg()[0], cpu_seconds()
    for mb in steps[1:]:
        t = time.perf_counter()
        loss, norm = step(mb)
        seconds.append(time.perf_counter() - t)
        losses.append(loss)
        norms.append(norm)
        print(f"  {model_name} {approach}: step {len(seconds)} {seconds[-1]:.1f} s loss {loss:.4f}",
              file=sys.stderr, flush=True)
    wall = sum(seconds)
    cpu = cpu_seconds() - cpu_before
    trained = sum(trained_tokens(s) for s in steps[1:])
    total = sum(int(mb["attention_mask"].sum()) for s in steps[1:] for mb in s)
    padded = sum(int(mb["attention_mask"].numel()) for s in steps[1:] for mb in s)
    return {"model": model_name, "approach": approach, "steps": len(seconds), "micro_per_step": per_step,
            "micro_batch_tokens": budget, "threads": torch.get_num_threads(), "load_s": load_s, "warmup_s": warm_s,
            "wall_s": wall, "s_per_step": wall / len(seconds), "trained_tokens": trained, "total_tokens": total,
            "padded_tokens": padded, "trained_tokens_per_s": trained / wall, "total_tokens_per_s": total / wall,
            "cpu_s": cpu, "trained_tokens_per_cpu_s": trained / cpu,
            "load_average": [load_before, os.getloadavg()[0]],
            "peak_rss_mib": peak_rss_mib(), "rss_after_load_mib": rss_loaded, "warmup_loss": warm_loss,
            "losses": losses, "grad_norms": norms, **info}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny-qwen3", "smollm2"])
    parser.add_argument("--approaches", nargs="+", choices=APPROACHES,
                        help="default per model: " + "; ".join(f"{k} {' '.join(v['approaches'])}"
                                                               for k, v in DEFAULTS.items()))
    parser.add_argument("--models-dir", default="runs/models")
    parser.add_argument("--run", default="runs/demo-cpu", help="main-job folder with corpus/ and store/")
    parser.add_argument("--data", help="SFT JSONL (lvr1 data sft); default: oracle trajectories made in a temp file")
    def per_model(key):
        return "(default per model: " + ", ".join(f"{k} {v[key]}" for k, v in DEFAULTS.items()) + ")"

    parser.add_argument("--steps", type=int, help="timed optimizer steps after one warm-up step " + per_model("steps"))
    parser.add_argument("--micro-batch-tokens", type=int, help="padded tokens per micro-batch " + per_model("budget"))
    parser.add_argument("--micro-per-step", type=int, help="micro-batches per optimizer step " + per_model("per_step"))
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:   # child process: one model, one approach
        print(json.dumps(run_one(args.one[0], args.one[1], args)))
        return
    header = machine()
    args.data = make_data(args)
    results = []
    for name in args.models:
        for approach in args.approaches or DEFAULTS[name]["approaches"]:
            cmd = [sys.executable, __file__, "--one", name, approach, "--data", args.data,
                   "--models-dir", args.models_dir, "--lr", str(args.lr), "--clip", str(args.clip)]
            if args.steps:
                cmd += ["--steps", str(args.steps)]
            if args.micro_batch_tokens:
                cmd += ["--micro-batch-tokens", str(args.micro_batch_tokens)]
            if args.micro_per_step:
                cmd += ["--micro-per-step", str(args.micro_per_step)]
            t = time.perf_counter()
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
            lines = proc.stdout.strip().splitlines()
            if proc.returncode != 0 or not lines or not lines[-1].startswith("{"):
                print(f"benchmark of {name} {approach} failed (see its output above)", file=sys.stderr)
                continue
            results.append(json.loads(lines[-1]))
            results[-1]["process_s"] = time.perf_counter() - t
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    if not results:
        raise SystemExit("no approach finished")
    first = results[0]
    print(f"\n## Learner (SFT) throughput (timed steps after 1 warm-up step, float32, lr {args.lr}, "
          f"clip {args.clip})\n")
    print(f"machine: {header}; torch threads {first['threads']}\n")
    print(f"data: {first['trajectories']} SFT trajectories ({args.data}); micro-batches from `sft_batches` "
          "(seed 0), identical for every approach of a model; per tokenizer:")
    for name in dict.fromkeys(r["model"] for r in results):
        r = next(r for r in results if r["model"] == name)
        print(f"- {name}: mean {r['mean_tokens']:.0f} tokens per trajectory, {100 * r['trained_fraction']:.0f}% "
              "of them trained (assistant turns)")
    print()
    print("| model | approach | steps × micro-batches × tokens | trained tokens/s | total tokens/s | s/step | "
          "trained tokens per CPU-s | peak RSS MiB | load avg | loss (first → last) | vs plain |")
    print("|---|---|---|---:|---:|---:|---:|---:|---|---|---:|")
    for r in results:
        plain = next((p for p in results if p["model"] == r["model"] and p["approach"] == "plain"), None)
        ratio = f"{r['trained_tokens_per_s'] / plain['trained_tokens_per_s']:.2f}×" if plain else "–"
        label = {"plain": "plain PyTorch (full logits)", "learner-zero0": "learner ZeRO-0",
                 "learner-zero2": "learner ZeRO-2"}[r["approach"]]
        print(f"| {r['model']} | {label} | {r['steps']} × {r['micro_per_step']} × ≤{r['micro_batch_tokens']} | "
              f"{r['trained_tokens_per_s']:,.1f} | {r['total_tokens_per_s']:,.0f} | {r['s_per_step']:.2f} | "
              f"{r['trained_tokens_per_cpu_s']:,.1f} | {r['peak_rss_mib']:,.0f} | "
              f"{r['load_average'][0]:.1f}–{r['load_average'][1]:.1f} | "
              f"{r['losses'][0]:.4f} → {r['losses'][-1]:.4f} | {ratio} |")
    print("\nvs plain = trained tokens/s of the approach / those of the plain loop (target: ≥ 1.0×). "
          "Trained tokens per CPU-second (the process's user + system time over the timed steps) is less "
          "sensitive to other load on the machine; the load average (1 min) is at the first and last timed step.")
    print("The plain loop materialises [B, L, V] logits (and their log-softmax and gradients); the learner "
          "projects only the loss-mask positions, in chunks recomputed in the backward pass.")
    for r in results:
        if r["approach"] == "plain":
            continue
        plain = next((p for p in results if p["model"] == r["model"] and p["approach"] == "plain"), None)
        if plain:
            diff = max(abs(a - b) for a, b in zip(r["losses"], plain["losses"]))
            print(f"- {r['model']} {r['approach']}: largest loss difference to the plain loop over the timed steps "
                  f"{diff:.2e}")


if __name__ == "__main__":
    main()
