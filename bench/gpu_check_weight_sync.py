"""A short GPU check of the collective weight sync's data path (rollout/weight_sync.py), under 5 minutes.

The lent GPU machine has one GPU, torch and transformers, but no vLLM and no Ray, and NCCL refuses two
ranks on one GPU. So this checks what the single-GPU (colocated) path runs: two processes, a sender
holding a model on the GPU in bf16 (the learner's rank 0) and a receiver holding another copy on the
GPU (the engine's side, the transformers engine's loader), joined by a gloo group of SyncGroup; the
sender packs each bucket from GPU tensors (cast to the receiver's dtype), broadcasts it, the receiver
unpacks each bucket as it arrives (a fresh buffer each) and copies it into its model. Checked: every
parameter arrives bit-identical, the receiver's logits equal the sender's, tied names are loaded once
and under both names; measured: plan, pack and broadcast time and GB/s for a model of Qwen3 shape.
NCCL between two GPUs (the multi-GPU default) is not exercised here.

Usage (GPU machine):  python bench/gpu_check_weight_sync.py [--size 1.7b] [--bucket-mb 512]
On CPU (a smoke run): python bench/gpu_check_weight_sync.py --device cpu --size tiny
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES = {   # Qwen3 shapes (config.json of the public checkpoints); tiny is for a CPU smoke run
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=4096, tie_word_embeddings=True),
    "0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True),
    "1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=False),
}


def build(size: str, device: str, dtype, seed: int):
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    torch.manual_seed(seed)
    config = Qwen3Config(**SIZES[size], max_position_embeddings=4096)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def member(rank: int, port: int, args, queue) -> None:
    import torch

    from longvideo_r1.rollout.weight_sync import SyncGroup, pack, plan_buckets, receive_stream

    out = {}
    model = build(args.size, args.device, torch.bfloat16, seed=rank)      # different weights on each side
    names: dict[int, list[str]] = {}
    params = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
        params.setdefault(id(p), p)
    t0 = time.perf_counter()
    plan = plan_buckets([(ns[0], tuple(params[i].shape), tuple(ns[1:])) for i, ns in names.items()],
                        "bfloat16", int(args.bucket_mb * 2**20))
    out["plan_s"] = time.perf_counter() - t0
    group = SyncGroup("127.0.0.1", port, rank, 2, "gloo", timeout_s=120)
    ids = torch.randint(0, SIZES[args.size]["vocab_size"], (1, 64), generator=torch.Generator().manual_seed(7)).to(args.device)
    if rank == 0:
        by_name = dict(model.named_parameters())
        pack_s = send_s = 0.0
        t0 = time.perf_counter()
        for bucket in plan.buckets:
            t = time.perf_counter()
            buf = pack(bucket, [by_name[e.name].detach() for e in bucket.entries], plan.dtype, "cpu")
            pack_s += time.perf_counter() - t
            t = time.perf_counter()
            group.broadcast(buf)
            send_s += time.perf_counter() - t
        total = time.perf_counter() - t0
        with torch.no_grad():
            logits = model(ids).logits.float().cpu().numpy()
        out.update(role="sender", buckets=len(plan.buckets), gb=plan.nbytes / 1e9, pack_s=pack_s, send_s=send_s,
                   total_s=total, gb_per_s=plan.nbytes / 1e9 / total, logits=logits,
                   checksum=sum(float(p.detach().float().sum()) for p in model.parameters()))
    else:
        result = {"ok": True, "error": "", "bytes": 0, "buckets": 0}
        loaded, t0 = set(), time.perf_counter()
        own = dict(model.named_parameters(remove_duplicate=False))
        with torch.no_grad():
            for name, tensor in receive_stream(group, plan, result):
                own[name].copy_(tensor)                    # host -> GPU, as the engine's loader does
                loaded.add(name)
        total = time.perf_counter() - t0
        with torch.no_grad():
            logits = model(ids).logits.float().cpu().numpy()
        out.update(role="receiver", ok=result["ok"], error=result["error"], total_s=total, logits=logits,
                   loaded=len(loaded), names=len(own), tied_loaded=[n for n in own if n.endswith("lm_head.weight") and n in loaded],
                   checksum=sum(float(p.detach().float().sum()) for p in model.parameters()))
    group.close()
    queue.put((rank, out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1.7b", choices=sorted(SIZES))
    parser.add_argument("--bucket-mb", type=float, default=512.0)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    import torch
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    t0 = time.perf_counter()
    procs = [ctx.Process(target=member, args=(r, port, args, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=600) for _ in procs)
    for p in procs:
        p.join(60)
    send, recv = results[0], results[1]
    logits_equal = bool((send.pop("logits") == recv.pop("logits")).all())
    report = {"device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu", "size": args.size,
              "bucket_mb": args.bucket_mb, "receiver_ok": recv["ok"], "all_names_loaded": recv["loaded"] == recv["names"],
              "tied_lm_head_loaded": recv["tied_loaded"], "logits_bit_identical": logits_equal,
              "checksums_equal": send["checksum"] == recv["checksum"],
              "gb": round(send["gb"], 3), "buckets": send["buckets"], "plan_s": round(send["plan_s"], 4),
              "pack_s": round(send["pack_s"], 3), "broadcast_s": round(send["send_s"], 3),
              "sender_total_s": round(send["total_s"], 3), "receiver_total_s": round(recv["total_s"], 3),
              "gb_per_s": round(send["gb_per_s"], 2), "wall_s": round(time.perf_counter() - t0, 1)}
    print(json.dumps(report, indent=1))
    ok = report["receiver_ok"] and report["all_names_loaded"] and logits_equal and report["checksums_equal"]
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
