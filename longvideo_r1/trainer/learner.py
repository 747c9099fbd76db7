"""The learner on one process: a DeepSpeed engine around a transformers causal LM (plus a value head for PPO).

One :class:`Learner` runs per data-parallel rank (one per GPU on clusters, gloo processes here);
:mod:`longvideo_r1.trainer.learner_group` places them as Ray actors (:class:`LearnerRank`) and splits the work. Everything a step
needs arrives as micro-batches of right-padded tensors:

- ``input_ids``, ``attention_mask`` [B, L]: prompt + response, as the rollout runner or the SFT
  tokeniser built them;
- ``loss_mask`` [B, L]: 1 on the tokens trained on (assistant turns; sampled tokens in RL, never
  observations or prompt); token ``t`` is scored by the logits at ``t − 1``;
- RL only: ``advantages`` and ``old_logprobs`` (the rollout log-probs: the importance ratio is taken
  against the policy that sampled), optionally ``ref_logprobs``, ``returns`` and ``old_values``.

Losses are normalised over the whole global step, not per micro-batch: a micro-batch contributes
its share of the step's token (or sequence) count, so the update is the same however the batch is
cut into micro-batches and ranks (tested), and DeepSpeed's own 1/GAS and rank-averaging are undone.

Memory: the vocabulary projection is evaluated only at trained positions, in chunks recomputed in
the backward pass, so a 151k-token vocabulary never materialises [B, L, V] logits.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from longvideo_r1.errors import InputError

LOSS_AGGREGATIONS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


@dataclass
class LearnerConfig:
    """The DeepSpeed learner (one entry per knob; YAML maps onto it)."""

    model: str = ""
    """transformers checkpoint folder (tiny-qwen3 or SmolLM2 from `lvr1 models prepare`, Qwen3-8B on clusters)"""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage 0-3"""
    dtype: str = "auto"
    """float32, bf16, or auto (bf16 on GPUs that support it, float32 on CPU)"""
    offload_optimizer: bool = False
    """ZeRO optimizer state in CPU memory (DeepSpeedCPUAdam; JIT-compiled on first use)"""
    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    schedule: str = "constant"
    """constant, linear or cosine decay after warmup (to min_lr_ratio · lr at total_steps)"""
    total_steps: int = 0
    """optimizer steps of the run (for linear/cosine decay)"""
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    """global gradient-norm clipping (0 = off)"""
    micro_batch_tokens: int = 8192
    """padded tokens (rows × longest row) per micro-batch; more micro-batches per step = gradient accumulation"""
    gradient_checkpointing: bool = False
    seed: int = 0
    threads: int = 0
    """CPU threads per rank (0: one per reserved CPU); see RolloutSection.threads"""
    logit_chunk: int = 1024
    """trained positions per chunk of the vocabulary projection"""
    # RL
    loss_agg: str = "token-mean"
    """token-mean, seq-mean-token-sum, seq-mean-token-mean or seq-mean-token-sum-norm"""
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = 3.0
    """dual-clip constant c bounding the loss of negative advantages (verl's default 3.0); None = off"""
    kl_coef: float = 0.0
    """weight of the KL-to-reference loss (0 = no reference model)"""
    kl_kind: str = "k3"
    """k1, k2, k3 (low-variance) or abs"""
    entropy_coef: float = 0.0
    value_head: bool = False
    """PPO: a value head on the policy's last hidden state"""
    value_coef: float = 0.5
    value_clip: float = 0.5
    ppo_epochs: int = 1


def _check(config: LearnerConfig) -> None:
    if not config.model:
        raise InputError("learner: no model given; set learner.model to a transformers checkpoint folder "
                         "(e.g. one made by `lvr1 models prepare`)")
    if not Path(config.model, "config.json").is_file():
        raise InputError(f"learner model {config.model}: no config.json there; pass a transformers checkpoint folder")
    if config.zero_stage not in (0, 1, 2, 3):
        raise InputError(f"learner zero_stage={config.zero_stage}: choose 0, 1, 2 or 3")
    if config.dtype not in ("auto", "float32", "bf16"):
        raise InputError(f"learner dtype={config.dtype!r}: choose auto, float32 or bf16")
    if config.schedule not in ("constant", "linear", "cosine"):
        raise InputError(f"learner schedule={config.schedule!r}: choose constant, linear or cosine")
    if config.loss_agg not in LOSS_AGGREGATIONS:
        raise InputError(f"learner loss_agg={config.loss_agg!r}: choose one of {', '.join(LOSS_AGGREGATIONS)}")
    if config.kl_kind not in ("k1", "k2", "k3", "abs", "kl", "mse", "low_var_kl"):
        raise InputError(f"learner kl_kind={config.kl_kind!r}: choose k1, k2, k3 or abs")


def lr_factor(step: int, config: LearnerConfig) -> float:
    """Multiplier of ``config.lr`` at optimizer step ``step`` (0-based): linear warmup, then the schedule."""
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant" or config.total_steps <= config.warmup_steps:
        return 1.0
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.total_steps - config.warmup_steps))
    floor = config.min_lr_ratio
    if config.schedule == "linear":
        return floor + (1.0 - floor) * (1.0 - progress)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def use_bf16(config: LearnerConfig) -> bool:
    import torch

    if config.dtype == "bf16":
        return True
    if config.dtype == "float32":
        return False
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def token_outputs(lm, value_head, batch: dict, entropy: bool = False, values: bool = False, chunk: int = 1024,
                  one_call: bool = False) -> dict:
    """Log-probs (entropies, values) of the ``loss_mask`` tokens of ``batch`` under causal LM ``lm``.

    Token ``t`` is scored by the logits at ``t − 1``. The vocabulary projection runs only at those
    positions, ``chunk`` rows at a time and recomputed in the backward pass (no [B, L, V] tensor);
    ``one_call`` makes it a single call instead (ZeRO-3 gathers a module's weights collectively at
    every call, so every rank must call the head equally often).
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    from longvideo_r1.trainer import algos

    ids, attn, mask = batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
    base = lm.get_decoder() if hasattr(lm, "get_decoder") else lm.model
    hidden = base(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state
    rows, cols = mask[:, 1:].nonzero(as_tuple=True)
    h = hidden[rows, cols]
    labels = ids[rows, cols + 1]
    head = lm.get_output_embeddings()

    def project(h_chunk, y_chunk):
        # The chunk's positions go to algos' [B, T, V] functions as one sequence (B = 1), so each
        # takes a single vectorised logsumexp over the chunk.
        logits = head(h_chunk).float()[None]
        if not entropy:
            lp = algos.logprobs_from_logits(logits, y_chunk[None])[0]
            return lp, torch.zeros_like(lp)
        logz = torch.logsumexp(logits, dim=-1)       # one pass over the vocabulary serves both
        lp = algos.logprobs_from_logits(logits, y_chunk[None], logz=logz)[0]
        if entropy == "metric":          # reported, not trained: no graph through the softmax
            with torch.no_grad():
                return lp, algos.entropy_from_logits(logits.detach(), logz=logz.detach())[0]
        return lp, algos.entropy_from_logits(logits, logz=logz)[0]

    lps, ents = [], []
    if one_call:
        lp, ent = project(h, labels)
        lps, ents = [lp], [ent]
    else:
        size = max(1, chunk)
        for s in range(0, h.shape[0], size):
            args = (h[s: s + size], labels[s: s + size])
            lp, ent = checkpoint(project, *args, use_reentrant=False) if torch.is_grad_enabled() else project(*args)
            lps.append(lp)
            ents.append(ent)
    # An empty micro-batch (a rank with less work) still needs a loss attached to the graph.
    flat_lp = torch.cat(lps) if lps else h.sum(-1).float() * 0.0
    blank = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    out = {"logprobs": blank.index_put((rows, cols + 1), flat_lp)}
    if entropy:
        out["entropy"] = blank.index_put((rows, cols + 1), torch.cat(ents) if ents else flat_lp)
    if values:
        out["values"] = blank.index_put((rows, cols + 1), value_head(h).squeeze(-1).float())
    return out


class PolicyModel:
    """Namespace for building the trainable module (a plain ``nn.Module`` subclass made lazily)."""

    @staticmethod
    def build(config: LearnerConfig):
        import torch
        from torch import nn
        from transformers import AutoModelForCausalLM

        class _Policy(nn.Module):
            def __init__(self, lm, value_head: bool):
                super().__init__()
                self.lm = lm
                hidden = lm.config.hidden_size
                self.value_head = nn.Linear(hidden, 1) if value_head else None
                if self.value_head is not None:
                    nn.init.zeros_(self.value_head.weight)
                    nn.init.zeros_(self.value_head.bias)

            def forward(self, batch: dict, **options) -> dict:
                return token_outputs(self.lm, self.value_head, batch, **options)

        try:
            lm = AutoModelForCausalLM.from_pretrained(config.model, dtype=torch.float32)
        except (OSError, ValueError) as exc:
            raise InputError(f"learner model {config.model}: cannot be loaded ({' '.join(str(exc).split())[:300]})") from None
        if config.gradient_checkpointing:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lm.config.use_cache = False
        return _Policy(lm, config.value_head)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(rank: int = 0, world_size: int = 1, master_addr: str = "127.0.0.1",
                     master_port: int | None = None) -> None:
    """torch.distributed for DeepSpeed: NCCL with GPUs, gloo on CPU (``DS_ACCELERATOR=cpu``)."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # Under Ray each rank sees one GPU (local rank 0); under torchrun LOCAL_RANK picks the GPU.
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if world_size > 1 and "TORCHELASTIC_RUN_ID" in os.environ else 0
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(local_rank),
                       "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port or _free_port())})
    os.environ.setdefault("LOCAL_WORLD_SIZE", "1")
    import torch.distributed as dist

    if dist.is_initialized():
        return
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo",
                               verbose=False, rank=rank, world_size=world_size)


def global_agg_options(normalisers: dict) -> dict:
    """``agg_loss`` options that normalise by the whole global step (``learner_group.step_normalisers``):
    with them a micro-batch's loss is its share of the step's aggregate, so the update does not
    depend on how the batch was cut into micro-batches and ranks."""
    return {"batch_num_tokens": max(1, normalisers["tokens"]), "global_batch_size": max(1, normalisers["sequences"]),
            "loss_scale_factor": max(1, normalisers["horizon"])}


@dataclass
class StepStats:
    loss: float = 0.0
    grad_norm: float = 0.0
    lr: float = 0.0
    tokens: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "extra"}
        out.update(self.extra)
        return out


class Learner:
    """One data-parallel rank: the DeepSpeed engine, an optional frozen reference model, the losses."""

    def __init__(self, config: LearnerConfig, rank: int = 0, world_size: int = 1, master_addr: str = "127.0.0.1",
                 master_port: int | None = None):
        _check(config)
        import numpy as np
        import torch

        self.config = config
        self.rank, self.world_size = rank, world_size
        init_distributed(rank, world_size, master_addr, master_port)
        import deepspeed

        random.seed(config.seed)
        np.random.seed(config.seed)
        torch.manual_seed(config.seed)
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        self.bf16 = use_bf16(config)
        module = PolicyModel.build(config)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(config.model)
        params = [p for p in module.parameters() if p.requires_grad]
        ds_config = {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": config.grad_clip,
            "zero_optimization": {"stage": config.zero_stage},
            "bf16": {"enabled": self.bf16},
            "steps_per_print": 1 << 30,
            "wall_clock_breakdown": False,
            "zero_allow_untested_optimizer": True,
        }
        if config.offload_optimizer:
            if config.zero_stage == 0:
                raise InputError("learner offload_optimizer needs zero_stage 1, 2 or 3")
            ds_config["zero_optimization"]["offload_optimizer"] = {"device": "cpu", "pin_memory": self.device.type == "cuda"}
            ds_config["optimizer"] = {"type": "AdamW", "params": {"lr": config.lr, "betas": list(config.betas),
                                                                 "weight_decay": config.weight_decay}}
            optimizer = None
        else:
            optimizer = torch.optim.AdamW(params, lr=config.lr, betas=tuple(config.betas),
                                          weight_decay=config.weight_decay)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=module, model_parameters=params, optimizer=optimizer, config=ds_config,
            lr_scheduler=(lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, config))))
        self.ref = None
        if config.kl_coef > 0:
            self.ref = self._load_reference()
        self.step = 0
        self._norm = None

    # ------------------------------------------------------------------ building blocks

    def _load_reference(self):
        import torch
        from transformers import AutoModelForCausalLM

        dtype = torch.bfloat16 if self.bf16 else torch.float32
        ref = AutoModelForCausalLM.from_pretrained(self.config.model, dtype=dtype)
        ref.eval().requires_grad_(False)
        if self.config.zero_stage != 3:
            return ref.to(self.device)
        # ZeRO-3: the reference is sharded over the ranks like the policy (each rank keeps 1/world of
        # it; a forward gathers one module at a time), instead of a whole copy on every rank
        import deepspeed

        config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3},
                  "bf16": {"enabled": self.bf16}, "steps_per_print": 1 << 30, "wall_clock_breakdown": False}
        self.ref_engine, *_ = deepspeed.initialize(model=ref, config=config)
        return self.ref_engine.module

    @property
    def lm(self):
        return self.engine.module.lm

    def _to_device(self, batch: dict) -> dict:
        return {k: (v.to(self.device) if hasattr(v, "to") else v) for k, v in batch.items()}

    def token_outputs(self, which: str, batch: dict, entropy: bool = False, values: bool = False) -> dict:
        """Log-probs (and entropies, values) of every ``loss_mask`` token, as [B, L] tensors (0 elsewhere).

        ``which`` = ``policy`` runs through the DeepSpeed engine (its forward bookkeeping is what makes
        ZeRO-3 accumulate gradients over micro-batches); ``ref`` runs the frozen reference model.
        """
        options = {"entropy": entropy, "values": values, "chunk": self.config.logit_chunk,
                   "one_call": self.config.zero_stage == 3}
        if which == "ref":
            return token_outputs(self.ref, None, batch, **options)
        return self.engine(batch, **options)

    def _prepare_step(self, micro_batches: int) -> None:
        """DeepSpeed accumulates ``micro_batches`` backward passes into this optimizer step."""
        if micro_batches != self.engine.gradient_accumulation_steps():
            self.engine.set_train_batch_size(micro_batches * self.world_size)

    def _mark_boundary(self, index: int, micro_batches: int) -> None:
        """Tell DeepSpeed whether micro-batch ``index`` ends the step. Left to itself it counts
        micro-batches over the whole run, so after a step with another number of them it would update
        in the middle of a step (from part of its gradient) and carry the rest into the next one."""
        self.engine.set_gradient_accumulation_boundary(index == micro_batches - 1)

    def _step_engine(self) -> None:
        """``engine.step()``; records the pre-clipping gradient norm where DeepSpeed does not (ZeRO-0, fp32)."""
        import torch

        if self.engine.is_gradient_accumulation_boundary() and self.config.zero_stage == 0 and not self.bf16:
            grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
            self._norm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
        self.engine.step()

    def _finish_step(self, stats: StepStats, t0: float) -> StepStats:
        norm = self.engine.get_global_grad_norm() if self._norm is None else self._norm
        self._norm = None
        stats.grad_norm = float(norm) if norm is not None else 0.0
        stats.lr = float(self.scheduler.get_last_lr()[0]) if self.scheduler is not None else self.config.lr
        stats.seconds = time.perf_counter() - t0
        self.step += 1
        return stats

    # ------------------------------------------------------------------ SFT

    def sft_step(self, micro_batches: list[dict], total_tokens: int) -> StepStats:
        """One optimizer step of next-token cross-entropy on the ``loss_mask`` tokens.

        ``total_tokens``: trained tokens of the whole global step over every rank (the normaliser).
        """
        t0 = time.perf_counter()
        self._prepare_step(len(micro_batches))
        self.engine.train()
        stats = StepStats()
        lr_before = float(self.scheduler.get_last_lr()[0])
        for k, mb in enumerate(micro_batches):
            self._mark_boundary(k, len(micro_batches))
            mb = self._to_device(mb)
            lp = self.token_outputs("policy", mb)["logprobs"]
            token_sum = -(lp * mb["loss_mask"].float()).sum()
            loss = token_sum / max(1, total_tokens) * len(micro_batches) * self.world_size
            self.engine.backward(loss)
            self._step_engine()
            stats.loss += float(token_sum.detach()) / max(1, total_tokens)
            stats.tokens += int(mb["loss_mask"].sum())
        out = self._finish_step(stats, t0)
        out.lr = lr_before
        return out

    def sft_eval(self, micro_batches: list[dict]) -> tuple[float, int]:
        """Summed token loss and token count (the caller divides after summing over ranks)."""
        import torch

        self.engine.eval()
        total, tokens = 0.0, 0
        with torch.no_grad():
            for mb in micro_batches:
                mb = self._to_device(mb)
                lp = self.token_outputs("policy", mb)["logprobs"]
                total += float(-(lp * mb["loss_mask"].float()).sum())
                tokens += int(mb["loss_mask"].sum())
        return total, tokens

    # ------------------------------------------------------------------ RL

    def _evaluate(self, micro_batches: list[dict], which: str, key: str, **options) -> list:
        """``key`` of :meth:`token_outputs` for each micro-batch, without gradients, on the CPU."""
        import torch

        self.engine.eval()
        with torch.no_grad():
            return [self.token_outputs(which, self._to_device(mb), **options)[key].cpu() for mb in micro_batches]

    def logprobs(self, micro_batches: list[dict]) -> list:
        """[B, L] log-probs of the current policy at each micro-batch's ``loss_mask`` tokens (0 elsewhere)."""
        return self._evaluate(micro_batches, "policy", "logprobs")

    def ref_logprobs(self, micro_batches: list[dict]) -> list:
        """Like :meth:`logprobs`, under the frozen reference model."""
        if self.ref is None:
            raise InputError("reference log-probs need a reference model: set learner.kl_coef > 0")
        return self._evaluate(micro_batches, "ref", "logprobs")

    def values(self, micro_batches: list[dict]) -> list:
        """[B, L] value-head outputs at each micro-batch's ``loss_mask`` tokens (0 elsewhere)."""
        if self.engine.module.value_head is None:
            raise InputError("values need a value head: set learner.value_head: true (PPO)")
        return self._evaluate(micro_batches, "policy", "values", values=True)

    def rl_step(self, micro_batches: list[dict], normalisers: dict) -> StepStats:
        """One optimizer step of the clipped policy loss (+ KL, entropy and value terms).

        ``normalisers``: ``tokens`` and ``sequences`` of the global step over every rank, and
        ``horizon`` (the padded response length, for seq-mean-token-sum-norm).

        Besides the losses it reports the drift between the rollout and the learner:
        ``logprob_diff_mean`` (this rank's share of the step's token mean) and ``logprob_diff_max`` of
        ``|log-prob of the sampled token under these weights − old_logprobs|`` over the ``loss_mask``
        tokens. Every micro-batch's forward runs before the one optimizer step, so in a step's first
        ppo epoch these are the weights the rollout should have sampled with: the drift is then about
        0, and a weight sync that did not happen shows as a large one.
        """
        from longvideo_r1.trainer import algos

        c = self.config
        t0 = time.perf_counter()
        self._prepare_step(len(micro_batches))
        self.engine.train()
        lr_before = float(self.scheduler.get_last_lr()[0])
        sums: dict[str, float] = {}
        count = {"tokens": 0}

        def add(name, value):
            sums[name] = sums.get(name, 0.0) + float(value)

        sums["logprob_diff_mean"] = sums["logprob_diff_max"] = 0.0

        agg = global_agg_options(normalisers)
        for k, mb in enumerate(micro_batches):
            self._mark_boundary(k, len(micro_batches))
            mb = self._to_device(mb)
            mask = mb["loss_mask"].float()
            share = float(mask.sum()) / agg["batch_num_tokens"]     # weight of this micro-batch's token means
            out = self.token_outputs("policy", mb, entropy=True if c.entropy_coef > 0 else "metric",
                                     values=c.value_head)
            lp = out["logprobs"]
            drift = (lp.detach() - mb["old_logprobs"]).abs() * mask
            add("logprob_diff_mean", drift.sum() / agg["batch_num_tokens"])
            sums["logprob_diff_max"] = max(sums["logprob_diff_max"], float(drift.max()) if drift.numel() else 0.0)
            loss, pg = algos.policy_loss(mb["old_logprobs"], lp, mb["advantages"], mask, c.clip_low, c.clip_high,
                                         c.dual_clip, c.loss_agg, **agg)
            add("policy_loss", loss.detach())
            for name in ("clipfrac", "approx_kl") + (("clipfrac_lower",) if c.dual_clip is not None else ()):
                add(name, pg[name] * share)
            ent = algos.agg_loss(out["entropy"], mask, c.loss_agg, **agg)
            add("entropy", ent.detach())
            if c.entropy_coef > 0:
                loss = loss - c.entropy_coef * ent
            if c.kl_coef > 0:
                kl_loss = algos.agg_loss(algos.kl_penalty(lp, mb["ref_logprobs"], c.kl_kind), mask, c.loss_agg, **agg)
                add("kl", kl_loss.detach())
                loss = loss + c.kl_coef * kl_loss
            if c.value_head:
                vf_loss, vf_clipfrac = algos.value_loss(out["values"], mb["returns"], mb["old_values"], mask,
                                                        c.value_clip, c.loss_agg, **agg)
                add("value_loss", vf_loss.detach())
                add("value_clipfrac", vf_clipfrac * share)
                loss = loss + c.value_coef * vf_loss
            add("loss", loss.detach())
            self.engine.backward(loss * len(micro_batches) * self.world_size)   # undo DeepSpeed's 1/GAS and rank mean
            self._step_engine()
            count["tokens"] += int(mask.sum())
        stats = StepStats(loss=sums.pop("loss", 0.0), tokens=count["tokens"], extra=sums)
        out = self._finish_step(stats, t0)
        out.lr = lr_before
        return out

    # ------------------------------------------------------------------ weights, checkpoints

    def full_state_dict(self, include_value_head: bool = False) -> dict | None:
        """Full (gathered) parameters of the language model with transformers names, on rank 0 (None elsewhere).

        Under ZeRO-3 every rank must call this (the gather is collective).
        """
        import torch

        module = self.engine.module
        state = {}
        named = list(module.lm.named_parameters())
        if include_value_head and module.value_head is not None:
            named += [(f"value_head.{n}", p) for n, p in module.value_head.named_parameters()]
        if self.config.zero_stage == 3:
            import deepspeed

            for name, param in named:
                with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                    if self.rank == 0:
                        state[name] = param.detach().to("cpu", copy=True)
        elif self.rank == 0:
            state = {name: param.detach().to("cpu", copy=True) for name, param in named}
        if self.rank != 0:
            return None
        dtype = torch.bfloat16 if self.bf16 else torch.float32
        return {k: v.to(dtype) for k, v in state.items()}

    def publish_weights(self):
        """Put the full weights in the Ray object store (rank 0); returns the ObjectRef (None elsewhere).

        A parameter shared by several names (tied input and output embeddings) goes out under each of
        them: vLLM's in-place reload (0.32) refreshes the output embedding of a tied model only when
        it is named, and otherwise samples with the old one (caught by ``rollout/logprob_diff_mean``).
        """
        state = self.full_state_dict()
        if state is None:
            return None
        first: dict[int, str] = {}
        for name, param in self.lm.named_parameters(remove_duplicate=False):
            source = first.setdefault(id(param), name)
            if source != name and source in state:
                state[name] = state[source]
        import ray

        return ray.put(list(state.items()))

    # ---------------------------------------------- collective weight sync (rollout/weight_sync.py)

    def weight_plan(self, dtype: str, bucket_bytes: int):
        """The buckets every receiver expects: the language model's parameters in model order (full
        shapes under ZeRO-3), a tied parameter once with its other names as aliases."""
        from longvideo_r1.rollout.weight_sync import plan_buckets

        names: dict[int, list[str]] = {}
        params = {}
        for name, param in self.lm.named_parameters(remove_duplicate=False):
            names.setdefault(id(param), []).append(name)
            params.setdefault(id(param), param)
        specs = [(ns[0], tuple(getattr(params[i], "ds_shape", params[i].shape)), tuple(ns[1:]))
                 for i, ns in names.items()]
        return plan_buckets(specs, dtype, bucket_bytes)

    def join_sync_group(self, host: str, port: int, world_size: int, backend: str, timeout_s: float) -> int:
        """Rank 0 hosts the group's store at ``host:port`` and is its rank 0 (the sender); other ranks
        only take part in the ZeRO-3 gathers of :meth:`send_weights`."""
        self.leave_sync_group()
        if self.rank == 0:
            from longvideo_r1.rollout.weight_sync import SyncGroup

            device = self.device if backend == "nccl" else "cpu"
            self._sync = SyncGroup(host, port, 0, world_size, backend, timeout_s, device)
        return self.rank

    def send_weights(self, plan) -> dict:
        """Broadcast the weights bucket by bucket (every rank calls this: under ZeRO-3 each bucket is
        gathered from all ranks). A failed broadcast (a receiver died or timed out) aborts the group
        and the ranks still run the remaining gathers, so DeepSpeed's own group stays in step."""
        import contextlib

        from longvideo_r1.rollout.weight_sync import pack

        t0 = time.perf_counter()
        group = getattr(self, "_sync", None)
        result = {"ok": self.rank != 0 or group is not None, "error": "" if self.rank != 0 or group is not None
                  else "learner rank 0 is not in a weight-sync group", "bytes": 0, "buckets": 0}
        params = dict(self.lm.named_parameters())
        for bucket in plan.buckets:
            tensors = [params[e.name] for e in bucket.entries]
            gather = contextlib.nullcontext()
            if self.config.zero_stage == 3:
                import deepspeed

                gather = deepspeed.zero.GatheredParameters(tensors, modifier_rank=None)
            with gather:
                if self.rank != 0 or not result["ok"]:
                    continue
                try:
                    group.broadcast(pack(bucket, [t.detach() for t in tensors], plan.dtype, group.device))
                except Exception as exc:
                    result.update(ok=False, error=" ".join(str(exc).split())[:300])
                    group.close(abort=True)
                    continue
                result["bytes"] += bucket.nbytes
                result["buckets"] += 1
        result["seconds"] = time.perf_counter() - t0
        return result

    def leave_sync_group(self) -> None:
        group, self._sync = getattr(self, "_sync", None), None
        if group is not None:
            group.close()

    def save_checkpoint(self, directory: str, client_state: dict | None = None, keep_last: int = 0,
                        keep_every: int = 0) -> str:
        """Model, optimizer, scheduler, RNG states and ``client_state`` (data position, …) under ``directory``.

        Then rank 0 (it sees the folder every rank wrote to) deletes older checkpoints beyond
        ``keep_last`` (0 keeps all), keeping every ``keep_every``-th step
        (:func:`longvideo_r1.trainer.loop.prune_checkpoints`)."""
        import numpy as np
        import torch

        tag = f"step{self.step:06d}"
        rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        state = {"step": self.step, "client": client_state or {}, f"rng_rank{self.rank}": rng}
        self.engine.save_checkpoint(directory, tag=tag, client_state=state)
        if self.rank == 0 and keep_last > 0:   # DeepSpeed's save ends with a barrier: every shard is written
            from longvideo_r1.trainer.loop import prune_checkpoints

            prune_checkpoints(directory, keep_last, keep_every)
        return tag

    def load_checkpoint(self, directory: str, tag: str | None = None) -> dict:
        import numpy as np
        import torch

        path, state = self.engine.load_checkpoint(directory, tag=tag)
        if path is None:
            raise InputError(f"checkpoint {directory}: nothing to resume from (no 'latest' tag or tag {tag!r} "
                             "missing); start without --resume")
        self.step = state["step"]
        rng = state.get(f"rng_rank{self.rank}")
        if rng is not None:
            random.setstate(rng["python"])
            np.random.set_state(rng["numpy"])
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["cuda"])
        return state["client"]

    def export(self, directory: str) -> str | None:
        """A transformers checkpoint (safetensors + tokenizer + config) that transformers and vLLM load."""
        state = self.full_state_dict()
        if state is None:
            return None
        import torch
        from transformers import AutoModelForCausalLM

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        dtype = torch.bfloat16 if self.bf16 else torch.float32
        model = AutoModelForCausalLM.from_config(self.lm.config, dtype=dtype)
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = {k for k in missing if k.endswith("lm_head.weight") and getattr(self.lm.config, "tie_word_embeddings", False)}
        if set(missing) - tied or unexpected:
            raise RuntimeError(f"export: state does not fit the model (missing {sorted(set(missing) - tied)[:3]}, "
                               f"unexpected {unexpected[:3]})")
        model.tie_weights()
        model.config.use_cache = True
        model.save_pretrained(out, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
        gen = Path(self.config.model, "generation_config.json")
        if gen.is_file():
            (out / "generation_config.json").write_text(gen.read_text())
        return str(out)


class LearnerRank(Learner):
    """A :class:`Learner` as a Ray actor: what :class:`~longvideo_r1.trainer.learner_group.LearnerGroup`
    starts, one per data-parallel rank. Its remote methods are the learner's own (``sft_step``,
    ``logprobs``, ``rl_step``, ``save_checkpoint``, …) plus the three below.

    It comes up in two calls because the ranks meet at an address on rank 0's node, which only rank
    0 can pick: every rank is started empty, rank 0 names a free port (:meth:`rendezvous`), then all
    ranks :meth:`setup` together (DeepSpeed's init blocks until every rank has joined).
    """

    def __init__(self):     # the Learner is built by setup(), once the rendezvous is known
        pass

    def ready(self) -> int:
        return os.getpid()

    def rendezvous(self) -> tuple[str, int]:
        import ray

        return ray.util.get_node_ip_address(), _free_port()

    def setup(self, config: LearnerConfig, rank: int, world_size: int, master_addr: str, master_port: int) -> None:
        super().__init__(config, rank, world_size, master_addr, master_port)

    def get_step(self) -> int:
        """Optimizer steps taken (an attribute is not callable through Ray)."""
        return self.step
