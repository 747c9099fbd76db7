"""Rollout throughput: vLLM batched vs transformers batched vs the reference demo's naive loop.

Same questions (the demo corpus), same model, same sampling and budgets for every approach, in one
process on one machine:

- vllm batched: the episode runner batches the next turn of every active episode (token in/out);
- transformers batched: the same runner on the transformers engine;
- naive (the reference demo): one episode at a time, and every round re-renders the whole chat with
  the template and re-tokenises it before generating (here with the same vLLM engine).

Prints episodes/s, generated tokens/s and where the time goes. Run after the main job (it needs
runs/demo-cpu). Each model runs in its own subprocess so engines do not share memory.

Usage: python bench/bench_rollout.py [--models tiny-qwen3 smollm2] [--episodes 32] [--max-rounds 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def naive_rollouts(engine, tools, questions, config):
    """One episode at a time; each round re-renders and re-tokenises the whole conversation."""
    from longvideo_r1.agent.episode import EpisodeConfig
    from longvideo_r1.rollout.engine import Sampling

    timing = {"generate": 0.0, "tools": 0.0, "tokenize": 0.0}
    tokens = 0
    episodes = []
    for g, q in enumerate(questions):
        for k in range(config.n):
            ep = tools.start(q, EpisodeConfig(max_rounds=config.max_rounds, keep_malformed=True))
            while not ep.done:
                t = time.perf_counter()
                ids = engine.tokenizer.apply_chat_template(ep.prompt(), tokenize=True, add_generation_prompt=True,
                                                           return_dict=False)
                timing["tokenize"] += time.perf_counter() - t
                t = time.perf_counter()
                gen = engine.generate([list(ids)], [Sampling(max_tokens=config.max_turn_tokens,
                                                             temperature=config.temperature,
                                                             seed=hash((g, k, ep.round)) & 0x7FFFFFFF)])[0]
                timing["generate"] += time.perf_counter() - t
                tokens += len(gen.token_ids)
                t = time.perf_counter()
                text = engine.tokenizer.decode(gen.token_ids, skip_special_tokens=True)
                timing["tokenize"] += time.perf_counter() - t
                action = ep.submit(text)
                if action.kind in ("get_caption", "video_qa"):
                    t = time.perf_counter()
                    obs, secs = tools.run(q.video_id, action)
                    timing["tools"] += time.perf_counter() - t
                    ep.observe(obs, secs)
            episodes.append(ep)
    return episodes, tokens, timing


def run_one(model_name: str, args) -> dict:
    from longvideo_r1.agent.episode import Question
    from longvideo_r1.agent.tools import Tools
    from longvideo_r1.agent.video_qa import make_video_qa
    from longvideo_r1.corpus.store import CaptionStore
    from longvideo_r1.models import prepare_models
    from longvideo_r1.rollout.engine import HFEngine, VLLMEngine
    from longvideo_r1.rollout.episodes import RolloutConfig, RolloutTimings, run_rollouts

    model_dir = prepare_models(args.models_dir, [model_name])[model_name]
    run = Path(args.run)
    rows = [json.loads(line) for line in (run / "corpus" / "questions.jsonl").read_text().splitlines() if line]
    questions = [Question.from_row(r) for r in rows][: max(1, args.episodes // args.n)]
    tools = Tools(CaptionStore(run / "store"), make_video_qa("demo"))
    config = RolloutConfig(n=args.n, max_rounds=args.max_rounds, max_turn_tokens=args.turn_tokens,
                           temperature=1.0, max_response_tokens=16384, max_observation_tokens=2048)
    out = {"model": model_name, "episodes": len(questions) * args.n}

    t = time.perf_counter()
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(args.kv_cache_gib)
    engine = VLLMEngine(str(model_dir), max_model_len=args.max_model_len, dtype=args.dtype)
    out["vllm_start_s"] = time.perf_counter() - t
    run_rollouts(engine, tools, questions[:1], RolloutConfig(n=1, max_rounds=1, max_turn_tokens=8))  # warm-up

    def measure(label, fn):
        t0 = time.perf_counter()
        tokens, timing = fn()
        wall = time.perf_counter() - t0
        out[label] = {"wall_s": wall, "episodes_per_s": out["episodes"] / wall, "gen_tokens_per_s": tokens / wall,
                      "generated_tokens": tokens, **{f"{k}_s": v for k, v in timing.items()}}
        print(f"  {model_name} {label}: {wall:.1f} s, {out['episodes'] / wall:.2f} episodes/s, "
              f"{tokens / wall:.0f} tokens/s", file=sys.stderr, flush=True)

    def batched(eng):
        def fn():
            timings = RolloutTimings()
            episodes = run_rollouts(eng, tools, questions, config, timings)
            tokens = sum(sum(e.response_mask) for e in episodes)
            return tokens, {"generate": timings.generate_seconds, "tools": timings.tool_seconds,
                            "tokenize": timings.tokenize_seconds}
        return fn

    measure("vllm_batched", batched(engine))

    def naive():
        _, tokens, timing = naive_rollouts(engine, tools, questions, config)
        return tokens, timing

    measure("naive_vllm", naive)
    del engine
    if not args.skip_transformers:
        hf = HFEngine(str(model_dir))
        measure("transformers_batched", batched(hf))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny-qwen3", "smollm2"])
    parser.add_argument("--models-dir", default="runs/models")
    parser.add_argument("--run", default="runs/demo-cpu")
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--max-rounds", type=int, default=4)
    parser.add_argument("--turn-tokens", type=int, default=64)
    parser.add_argument("--max-model-len", type=int, default=8192)
    parser.add_argument("--dtype", default="auto", help="vLLM dtype (auto = float32 on CPU; bfloat16 needs AVX512-BF16/AMX)")
    parser.add_argument("--kv-cache-gib", type=int, default=1, help="VLLM_CPU_KVCACHE_SPACE for the benchmark's engine")
    parser.add_argument("--skip-transformers", action="store_true", help="measure vLLM batched and naive only")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:   # child process: one model
        print(json.dumps(run_one(args.one, args)))
        return
    results = []
    for name in args.models:
        cmd = [sys.executable, __file__, "--one", name] + [a for a in sys.argv[1:] if a != "--models"
                                                            and a not in args.models]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            print(f"benchmark of {name} failed (see its output above)", file=sys.stderr)
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(f"\n## Rollout throughput ({args.episodes} episodes = {args.episodes // args.n} demo questions × n={args.n}, "
          f"{args.max_rounds} rounds, ≤{args.turn_tokens} tokens per turn, temperature 1.0)\n")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, CPU only\n")
    print("| model | approach | wall s | episodes/s | generated tokens/s | generate s | tools s | tokenise s | vs naive |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        naive = r["naive_vllm"]["episodes_per_s"]
        for label in ("vllm_batched", "transformers_batched", "naive_vllm"):
            if label not in r:
                continue
            m = r[label]
            print(f"| {r['model']} | {label.replace('_', ' ')} | {m['wall_s']:.1f} | {m['episodes_per_s']:.2f} | "
                  f"{m['gen_tokens_per_s']:.0f} | {m['generate_s']:.1f} | {m['tools_s']:.2f} | {m['tokenize_s']:.2f} | "
                  f"{m['episodes_per_s'] / naive:.1f}x |")
        print(f"| {r['model']} | (vLLM engine start) | {r['vllm_start_s']:.1f} | | | | | | |")


if __name__ == "__main__":
    main()
