"""A short GPU check of the rollout code path (run on a lent GPU machine; see bench/RESULTS.md).

The GPU machine has torch and transformers but no vLLM or Ray, so this checks what runs there: the
transformers engine on CUDA inside the episode runner (token accounting, answers, log-probs against
a teacher-forced forward pass, in-place weight updates) and its batched throughput.

Inputs travel with the working tree (prepared here by `python bench/gpu_check_rollout.py --prepare`):
runs/gpu-check/store (a small caption store) and runs/gpu-check/navigator (the tiny Qwen3 taught two
protocol turns, tests/navigator.py). Usage on the GPU machine:
    python bench/gpu_check_rollout.py [--episodes 256]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path("runs/gpu-check")


def prepare() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from longvideo_r1.agent.tools import Tools
    from longvideo_r1.corpus.store import CaptionStore
    from tests.navigator import VIDEOS, train_tiny_navigator
    from tests.test_store import build, make_video

    build(ROOT / "store", [make_video(v, f) for v, f in VIDEOS], shards=2)
    train_tiny_navigator(ROOT / "train", Tools(CaptionStore(ROOT / "store")))
    (ROOT / "train" / "navigator").rename(ROOT / "navigator")


def check(episodes: int) -> dict:
    import torch

    from longvideo_r1.agent.episode import Question
    from longvideo_r1.agent.tools import Tools
    from longvideo_r1.corpus.store import CaptionStore
    from longvideo_r1.rollout.engine import HFEngine, Sampling
    from longvideo_r1.rollout.episodes import RolloutConfig, RolloutTimings, run_rollouts, to_batch

    out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    t_start = time.perf_counter()

    def stage(name):
        print(f"[{time.perf_counter() - t_start:6.1f} s] {name}: {json.dumps(out)}", file=sys.stderr, flush=True)
    tools = Tools(CaptionStore(ROOT / "store"))
    engine = HFEngine(str(ROOT / "navigator"), device="cuda")
    questions = [Question(v, "What colour is the circle?", ["red", "blue", "green", "gray"], answer="B", qid=f"q{i}")
                 for i, v in enumerate(["vid_a", "vid_b"])]
    stage("engine loaded")
    eps = run_rollouts(engine, tools, questions, RolloutConfig(n=2, max_rounds=4, temperature=0.0))
    out["greedy_episodes_answer_B"] = sum(e.answer == "B" and e.visited == [(1, 1)] for e in eps)
    batch = to_batch(eps, engine.pad_id)
    out["mask_tokens"] = int(batch["loss_mask"].sum())
    stage("greedy episodes")

    # sampled log-probs vs a teacher-forced forward pass on the same tokens
    e = run_rollouts(engine, tools, questions[:1], RolloutConfig(n=1, max_rounds=1, temperature=1.5, max_turn_tokens=32))[0]
    ids = torch.tensor([e.prompt_ids + e.response_ids], device="cuda")
    with torch.no_grad():
        logits = engine.model(input_ids=ids).logits[0, len(e.prompt_ids) - 1:-1].float()
    ref = torch.log_softmax(logits, -1).gather(-1, ids[0, len(e.prompt_ids):, None])[:, 0].cpu()
    got = torch.tensor(e.logprobs)
    out["logprob_max_abs_diff"] = float((ref - got).abs().max())
    stage("log-probs")

    # weight update in place: fresh random weights make the navigator forget its turns, then restore
    gen = torch.Generator(device="cpu").manual_seed(0)
    trained = {k: v.clone() for k, v in engine.model.state_dict().items()}
    base = {k: (torch.randn(v.shape, generator=gen) * 0.02 if v.dim() > 1 else torch.ones(v.shape)).to(v)
            for k, v in trained.items()}
    engine.update_weights(base.items(), 1)
    forgot = run_rollouts(engine, tools, questions[:1], RolloutConfig(n=1, max_rounds=2, temperature=0.0, max_turn_tokens=16))
    engine.update_weights(trained.items(), 2)
    again = run_rollouts(engine, tools, questions[:1], RolloutConfig(n=1, max_rounds=4, temperature=0.0))
    out["update_weights_changes_behaviour"] = forgot[0].answer is None and again[0].answer == "B"
    stage("weight update")

    # batched throughput
    many = [questions[i % 2] for i in range(episodes // 4)]
    for label, turn_tokens in (("batched_greedy", 64), ("batched_sampled", 64)):
        timings = RolloutTimings()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = run_rollouts(engine, tools, many, RolloutConfig(n=4, max_rounds=4, max_turn_tokens=turn_tokens,
                                                              temperature=0.0 if "greedy" in label else 1.0), timings)
        wall = time.perf_counter() - t0
        tokens = sum(sum(r.response_mask) for r in res)
        out[label] = {"episodes": len(res), "wall_s": round(wall, 2), "episodes_per_s": round(len(res) / wall, 1),
                      "gen_tokens_per_s": round(tokens / wall), "generate_s": round(timings.generate_seconds, 2),
                      "tools_s": round(timings.tool_seconds, 3), "answered": sum(r.answer is not None for r in res)}
        stage(label)
    out["peak_gpu_mem_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--prepare", action="store_true")
    parser.add_argument("--episodes", type=int, default=256)
    args = parser.parse_args()
    if args.prepare:
        prepare()
    else:
        print(json.dumps(check(args.episodes), indent=1))
