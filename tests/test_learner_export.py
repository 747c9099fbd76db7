"""The learner's exported checkpoint serves in vLLM with the learner's log-probs; optimizer offload trains.

Learners run in Ray actors (gloo), as in the platform; vLLM runs in the pytest process (in-process
engine core, like tests/test_rollout.py).
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from longvideo_r1.trainer.learner import LearnerConfig
from longvideo_r1.trainer.learner_group import LearnerGroup
from tests.test_learner import sft_batch

pytestmark = pytest.mark.slow


def right_padded(sequences: list[tuple[list[int], list[int]]], pad_id: int) -> dict:
    """``(prompt ids, generated ids)`` pairs as a batch; the loss mask is on the generated tokens."""
    width = max(len(p) + len(g) for p, g in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for r, (prompt, gen) in enumerate(sequences):
        n = len(prompt) + len(gen)
        ids[r, :n] = torch.tensor(prompt + gen)
        attn[r, :n] = 1
        mask[r, len(prompt): n] = 1
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": mask}


def teacher_forced_logprobs(model_dir, batch: dict) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    out = torch.zeros(batch["loss_mask"].shape)
    out[:, 1:] = torch.log_softmax(logits.float(), -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return out * batch["loss_mask"]


def test_exported_checkpoint_serves_in_vllm_with_the_learners_logprobs(ray_local, tiny_qwen3_dir, tmp_path):
    from longvideo_r1.rollout.engine import Sampling, VLLMEngine

    group = LearnerGroup(LearnerConfig(model=str(tiny_qwen3_dir), lr=1e-2, micro_batch_tokens=4096, seed=0))
    try:
        losses = [group.sft_step(sft_batch(s))["loss"] for s in range(2)]
        exported = group.export(str(tmp_path / "export"))

        engine = VLLMEngine(exported, max_model_len=2048)
        tok = engine.tokenizer
        questions = ["Where is the red car?", "What happens after the dialogue ends? Answer with a letter.",
                     "Count the people."]
        prompts = [list(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                tokenize=True, return_dict=False)) for q in questions]
        gens = engine.generate(prompts, [Sampling(max_tokens=16, temperature=1.0, stop=())] * len(prompts))
        del engine
        assert all(g.token_ids and len(g.logprobs) == len(g.token_ids) for g in gens)

        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        batch = right_padded([(p, list(g.token_ids)) for p, g in zip(prompts, gens)], pad)
        learner_lp = group.logprobs(batch)
    finally:
        group.shutdown()

    mask = batch["loss_mask"].bool()
    vllm_lp = torch.tensor([lp for g in gens for lp in g.logprobs])     # row-major, as mask order
    assert vllm_lp.shape == learner_lp[mask].shape
    assert all(math.isfinite(x) for x in losses)
    diff = (learner_lp[mask] - vllm_lp).abs().max().item()
    assert diff < 2e-3, f"vLLM's sampled-token log-probs differ from the learner's by {diff:.2e}"
    # vLLM served the trained weights, not the starting model: those log-probs are far off
    before = teacher_forced_logprobs(tiny_qwen3_dir, batch)
    assert (before[mask] - vllm_lp).abs().max().item() > 50 * max(diff, 1e-5)
    # and transformers reads the same checkpoint the same way
    torch.testing.assert_close(teacher_forced_logprobs(exported, batch)[mask], learner_lp[mask], atol=1e-4, rtol=0)


def test_zero2_with_the_optimizer_offloaded_to_cpu_trains(ray_local, tiny_qwen3_dir):
    """DeepSpeedCPUAdam (JIT-compiled on first use, ~50 s without a torch-extensions cache) steps
    the offloaded optimizer state; its updates equal torch's AdamW, so the losses match a plain loop."""
    batch = sft_batch(21, rows=6)
    lr = 1e-3

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    expected = []
    for _ in range(3):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        lp = torch.log_softmax(logits.float(), -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
        mask = batch["loss_mask"][:, 1:].float()
        loss = -(lp * mask).sum() / mask.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        expected.append(loss.item())
    del model, opt

    config = LearnerConfig(model=str(tiny_qwen3_dir), zero_stage=2, offload_optimizer=True, lr=lr,
                           micro_batch_tokens=100, seed=0)          # several micro-batches per step
    group = LearnerGroup(config)
    try:
        stats = [group.sft_step(batch) for _ in range(3)]
    finally:
        group.shutdown()
    losses = [s["loss"] for s in stats]
    assert losses[0] > losses[1] > losses[2]
    assert all(math.isfinite(s["grad_norm"]) and s["grad_norm"] > 0 for s in stats)
    assert losses == pytest.approx(expected, rel=1e-4)
