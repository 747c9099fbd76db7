"""The DeepSpeed learner on Ray (gloo here): numerically right, resumable, exportable, syncable.

Every learner runs in Ray actors (one process per rank), as it does in the platform; the pytest
process itself never initialises torch.distributed.
"""

from __future__ import annotations

import math

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM

from longvideo_r1.errors import InputError
from longvideo_r1.trainer.learner import LearnerConfig, global_agg_options, lr_factor
from longvideo_r1.trainer.learner_group import (
    LearnerGroup,
    assign_to_ranks,
    micro_batches,
    step_normalisers,
)

pytestmark = pytest.mark.slow


def sft_batch(seed: int = 0, rows: int = 6, width: int = 40) -> dict:
    """Right-padded rows of uneven length; the loss mask has holes like observation blocks."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 3000, (rows, width), generator=g)
    attn = torch.zeros_like(ids)
    loss = torch.zeros_like(ids)
    for r in range(rows):
        n = int(torch.randint(width // 2, width + 1, (1,), generator=g))
        attn[r, :n] = 1
        loss[r, 8:n] = 1
        loss[r, 14:18] = 0          # an observation block inside the response
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss * attn}


def config(model, **kw) -> LearnerConfig:
    base = dict(model=str(model), lr=1e-3, grad_clip=1.0, micro_batch_tokens=4096, seed=0)
    base.update(kw)
    return LearnerConfig(**base)


def plain_pytorch_losses(model_dir, batches, lr, clip):
    """The same SFT update written as a plain PyTorch loop: token-mean CE, AdamW, norm clipping.

    Returns the losses, the final parameters and each parameter's gradient at every step."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses, grads = [], {name: [] for name, _ in model.named_parameters()}
    for batch in batches:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        lp = torch.log_softmax(logits.float(), -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
        mask = batch["loss_mask"][:, 1:].float()
        loss = -(lp * mask).sum() / mask.sum()
        loss.backward()
        for name, param in model.named_parameters():
            grads[name].append(param.grad.detach().clone())
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, dict(model.named_parameters()), grads


def assert_same_weights(actual, expected, grads, lr, terms, betas=(0.9, 0.999)):
    """``actual`` equals ``expected`` (a plain AdamW loop from the same start) as far as float32 allows.

    Both start from the same weights, so they differ by the difference of their summed Adam updates
    lr·m̂/(√v̂+ε). What float noise can do to an update depends on how well the element's gradient is
    resolved (``grads``: its gradient in the plain loop at each step):

    * A gradient entry is a float32 sum of about ``terms`` products (one per token position); summed
      in another order (another CPU's kernels, other micro-batches or ranks) it moves by at most
      ~terms·eps times the size of the products, taken to be at most the tensor's largest entry.
      Where an entry is at least 100× that at every step it is known to 1 %, so m̂ and √v̂ move by
      ≤ 1 % each and the step's update by ≤ 2 % of lr: those elements must agree to 0.02·lr per step.
      A wrong update is off by more: lr × 1.1 moves every first step by 0.1·lr, and a lost
      micro-batch changes the gradients themselves (both fail here; checked when this was written).
    * Elsewhere the gradient is at the noise level (embedding rows of tokens not in the batch, sums
      that cancel), and Adam, dividing by √v̂, turns noise into a step of up to a whole lr, even
      with its sign flipped. How many elements that hits depends on the CPU's summation order
      (0.02 % of the weights differed by > 0.02·lr on an Intel Xeon, far fewer on AMD EPYC), so
      these are held only to Adam's bound: |m̂/√v̂| ≤ sqrt(Σ_i a_i²/b_i) at step t (Cauchy–Schwarz
      over the bias-corrected weights a_i of the gradients in m̂ and b_i in v̂), about 1.
    """
    eps = torch.finfo(torch.float32).eps
    diff = (actual.float() - expected.detach().float()).abs()
    steps = len(grads)
    resolution = torch.stack([g.abs() / g.abs().max().clamp_min(1e-30) for g in grads]).amin(0)
    resolved = resolution >= 100 * terms * eps
    assert resolved.any(), "no element's gradient is above float noise: the comparison would check nothing"
    worst = diff[resolved].max().item()
    assert worst <= 0.02 * lr * steps, f"a well-resolved element is {worst / lr:.3f} lr off after {steps} steps"
    b1, b2 = betas
    adam_bound = 0.0
    for t in range(1, steps + 1):
        a = [(1 - b1) * b1 ** (t - i) / (1 - b1 ** t) for i in range(1, t + 1)]
        b = [(1 - b2) * b2 ** (t - i) / (1 - b2 ** t) for i in range(1, t + 1)]
        adam_bound += lr * math.sqrt(sum(x * x / y for x, y in zip(a, b)))
    assert diff.max().item() <= 2 * adam_bound


def weights(group) -> dict:
    return dict(ray.get(group.publish_weights()))


def test_sft_equals_plain_pytorch_for_any_split_into_micro_batches_and_ranks(ray_local, tiny_qwen3_dir):
    batches = [sft_batch(s) for s in range(3)]
    expected, reference, grads = plain_pytorch_losses(tiny_qwen3_dir, batches, 1e-3, 1.0)
    terms = max(b["input_ids"].numel() for b in batches)

    one = LearnerGroup(config(tiny_qwen3_dir), num_workers=1)
    whole = [one.sft_step(b) for b in batches]
    one_weights = weights(one)
    one.shutdown()
    # two gloo ranks, each taking several small micro-batches (gradient accumulation)
    two = LearnerGroup(config(tiny_qwen3_dir, micro_batch_tokens=60), num_workers=2)
    split = [two.sft_step(b) for b in batches]
    two_weights = weights(two)
    two.shutdown()

    assert [s["loss"] for s in whole] == pytest.approx(expected, rel=1e-5)
    assert [s["loss"] for s in split] == pytest.approx(expected, rel=1e-5)
    assert all(s["grad_norm"] > 0 for s in whole)
    assert [s["grad_norm"] for s in split] == pytest.approx([s["grad_norm"] for s in whole], rel=1e-4)
    assert expected[-1] < expected[0]
    for name, param in reference.items():
        assert_same_weights(one_weights[name], param, grads[name], 1e-3, terms)
        assert_same_weights(two_weights[name], param, grads[name], 1e-3, terms)


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_stages_train_the_same_and_export_full_weights(ray_local, tiny_qwen3_dir, tmp_path, stage):
    batches = [sft_batch(s) for s in range(2)]
    expected, reference, grads = plain_pytorch_losses(tiny_qwen3_dir, batches, 1e-3, 1.0)
    terms = max(b["input_ids"].numel() for b in batches)
    group = LearnerGroup(config(tiny_qwen3_dir, zero_stage=stage, micro_batch_tokens=100), num_workers=2)
    losses = [group.sft_step(b)["loss"] for b in batches]
    assert losses == pytest.approx(expected, rel=1e-5)
    published = weights(group)
    out = group.export(str(tmp_path / "export"))
    group.shutdown()
    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    for name, param in reference.items():
        assert published[name].shape == param.shape            # gathered, not a ZeRO-3 shard
        assert_same_weights(published[name], param, grads[name], 1e-3, terms)
        assert_same_weights(dict(exported.named_parameters())[name], param, grads[name], 1e-3, terms)


def test_resume_continues_with_the_same_losses(ray_local, tiny_qwen3_dir, tmp_path):
    cfg = config(tiny_qwen3_dir, warmup_steps=1, schedule="cosine", total_steps=4, micro_batch_tokens=100)
    batches = [sft_batch(10 + s) for s in range(4)]

    straight = LearnerGroup(cfg)
    full = [straight.sft_step(b) for b in batches]
    straight.shutdown()

    first = LearnerGroup(cfg)
    for b in batches[:2]:
        first.sft_step(b)
    first.save(str(tmp_path / "ckpt"), {"position": 2})
    first.shutdown()                               # the learner process is gone
    resumed = LearnerGroup(cfg)
    state = resumed.load(str(tmp_path / "ckpt"))
    assert state == {"position": 2} and resumed.step == 2
    rest = [resumed.sft_step(b) for b in batches[state["position"]:]]
    resumed.shutdown()
    assert [s["loss"] for s in rest] == [s["loss"] for s in full[2:]]
    assert [s["lr"] for s in rest] == [s["lr"] for s in full[2:]]
    assert [s["lr"] for s in full] == pytest.approx([1e-3 * lr_factor(i, cfg) for i in range(4)])


def test_resume_without_a_checkpoint_is_a_clear_error(ray_local, tiny_qwen3_dir, tmp_path):
    group = LearnerGroup(config(tiny_qwen3_dir))
    try:
        with pytest.raises(InputError, match="nothing to resume"):
            try:
                group.load(str(tmp_path / "none"))
            except ray.exceptions.RayTaskError as exc:
                raise exc.as_instanceof_cause() from None
    finally:
        group.shutdown()


def test_placed_ranks_reserve_the_learner_role_alone_and_give_it_back(ray_local, tiny_qwen3_dir):
    from ray.util import placement_group_table

    from longvideo_r1.cluster.resources import PlacementConfig, RoleResources

    def reserved() -> list:
        return [(g["name"].split("-")[1], g["bundles"]) for g in placement_group_table().values()
                if g["state"] == "CREATED"]

    # the other roles keep their defaults (a rollout engine, reward and caption-store actors): none is reserved
    group = LearnerGroup.placed(config(tiny_qwen3_dir), PlacementConfig(learner=RoleResources(2, 0.5, 0.0)))
    try:
        assert reserved() == [("learner", {0: {"CPU": 0.5}, 1: {"CPU": 0.5}})]
        assert group.sft_eval(sft_batch(0)) > 0 and group.step == 0
    finally:
        group.shutdown()
    assert reserved() == []


def rl_batch(seed=0, rows=4):
    b = sft_batch(seed, rows=rows)
    b["advantages"] = torch.tensor([1.0, -1.0, 0.5, -0.5][:rows])[:, None] * b["loss_mask"].float()
    return b


def test_rl_step_moves_probability_towards_positive_advantages_with_kl_and_entropy(ray_local, tiny_qwen3_dir):
    cfg = config(tiny_qwen3_dir, lr=3e-3, kl_coef=0.1, kl_kind="k3", entropy_coef=0.01, micro_batch_tokens=80)
    group = LearnerGroup(cfg)
    batch = rl_batch()
    before = group.logprobs(batch)
    ref = group.ref_logprobs(batch)
    torch.testing.assert_close(ref, before)                 # the reference is the starting policy
    assert (before[batch["loss_mask"] == 0] == 0).all()
    stats = []
    for _ in range(3):
        batch["old_logprobs"] = before
        batch["ref_logprobs"] = ref
        stats.append(group.rl_step(batch))
    after = group.logprobs(batch)
    group.shutdown()
    mask = batch["loss_mask"].bool()
    gain = ((after - before) * mask).sum(-1) / mask.sum(-1)
    assert gain[0] > 0 and gain[2] > 0 and gain[1] < 0 and gain[3] < 0
    # first step: ratio 1, so the token-mean policy loss is minus the mean advantage and KL is 0
    adv = batch["advantages"][mask]
    assert stats[0]["policy_loss"] == pytest.approx(-adv.mean().item(), abs=1e-5)
    assert stats[0]["kl"] == pytest.approx(0.0, abs=1e-7) and stats[0]["clipfrac"] == 0.0
    assert stats[-1]["kl"] > 0 and stats[-1]["clipfrac"] > 0 and stats[-1]["entropy"] > 0
    for key in ("loss", "grad_norm", "lr", "approx_kl", "tokens"):
        assert key in stats[-1]


def test_under_zero3_the_reference_is_sharded_over_the_ranks_and_scores_like_the_start(ray_local, tiny_qwen3_dir):
    group = LearnerGroup(config(tiny_qwen3_dir, zero_stage=3, kl_coef=0.1, lr=3e-3, micro_batch_tokens=80),
                         num_workers=2)
    try:
        batch = rl_batch()
        before = group.logprobs(batch)
        torch.testing.assert_close(group.ref_logprobs(batch), before)
        held = ray.get([r.__ray_call__.remote(lambda self: (sum(p.ds_tensor.numel() for p in self.ref.parameters()),
                                                            sum(p.ds_numel for p in self.ref.parameters())))
                        for r in group.ranks])
        total = held[0][1]
        assert all(full == total for _, full in held)
        # each rank holds about half (DeepSpeed pads each parameter's partition to equal sizes)
        assert all(0.4 * total < local < 0.6 * total for local, _ in held)
        batch["old_logprobs"], batch["ref_logprobs"] = before, group.ref_logprobs(batch)
        group.rl_step(batch)
        torch.testing.assert_close(group.ref_logprobs(batch), batch["ref_logprobs"])   # frozen
        assert not torch.allclose(group.logprobs(batch), before)                       # the policy moved
    finally:
        group.shutdown()


def test_ppo_value_head_learns_the_returns(ray_local, tiny_qwen3_dir):
    group = LearnerGroup(config(tiny_qwen3_dir, value_head=True, lr=1e-2, value_clip=10.0))
    batch = rl_batch(seed=3)
    batch["old_logprobs"] = group.logprobs(batch)
    batch["advantages"] = torch.zeros_like(batch["old_logprobs"])
    batch["returns"] = 0.7 * batch["loss_mask"].float()
    values = group.values(batch)
    assert (values == 0).all()                                # zero-initialised head
    losses = []
    for _ in range(4):
        batch["old_values"] = group.values(batch)
        losses.append(group.rl_step(batch)["value_loss"])
    with pytest.raises(InputError, match="lacks returns, old_values"):
        group.rl_step({k: batch[k] for k in ("input_ids", "attention_mask", "loss_mask", "advantages", "old_logprobs")})
    published = dict(ray.get(group.publish_weights()))
    group.shutdown()
    assert losses[-1] < losses[0]
    # the value head is not a language-model weight: it stays out of the published weights
    assert published and not any("value_head" in name for name in published)


def test_published_weights_update_a_rollout_engine(ray_local, tiny_qwen3_dir):
    from longvideo_r1.rollout.engine import HFEngine

    group = LearnerGroup(config(tiny_qwen3_dir, lr=1e-2))
    batch = sft_batch(5)
    group.sft_step(batch)
    ref = group.publish_weights()          # owned by the learner: valid while the group lives
    logprobs = group.logprobs(batch)
    published = ray.get(ref)
    group.shutdown()
    engine = HFEngine(str(tiny_qwen3_dir))
    engine.update_weights(published, version=1)
    assert engine.version == 1
    state = dict(published)
    assert not any(name.startswith("value_head") for name in state)
    with torch.no_grad():
        logits = engine.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    lp = torch.log_softmax(logits.float(), -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    mask = batch["loss_mask"][:, 1:].bool()
    torch.testing.assert_close(lp[mask], logprobs[:, 1:][mask], atol=1e-4, rtol=1e-4)


def test_bf16_learner_trains(ray_local, tiny_qwen3_dir):
    group = LearnerGroup(config(tiny_qwen3_dir, dtype="bf16", zero_stage=1))
    losses = [group.sft_step(sft_batch(7))["loss"] for _ in range(3)]
    state = dict(ray.get(group.publish_weights()))
    group.shutdown()
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert next(iter(state.values())).dtype == torch.bfloat16


# --------------------------------------------------------------------------- pure helpers


def test_micro_batches_cover_every_row_once_within_the_budget():
    batch = sft_batch(1, rows=9)
    pieces = micro_batches(batch, 70)
    rows = sorted(r for idx, _ in pieces for r in idx)
    assert rows == list(range(9))
    lengths = batch["attention_mask"].sum(-1)
    for idx, mb in pieces:
        assert mb["input_ids"].shape[1] == int(lengths[idx].max())
        assert len(idx) == 1 or mb["input_ids"].numel() <= 70
        torch.testing.assert_close(mb["loss_mask"], batch["loss_mask"][idx, : mb["input_ids"].shape[1]])
    shares = assign_to_ranks(pieces, 2)
    assert sorted(len(s) for s in shares) and sum(len(s) for s in shares) == len(pieces)
    assert step_normalisers(batch)["tokens"] == int(batch["loss_mask"].sum())


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_micro_batch_shares_add_up_to_the_global_aggregate(mode):
    from longvideo_r1.trainer import algos

    batch = sft_batch(2, rows=7)
    values = torch.randn(batch["loss_mask"].shape, generator=torch.Generator().manual_seed(0))
    norm = step_normalisers(batch)
    options = global_agg_options(norm)
    whole = algos.agg_loss(values, batch["loss_mask"].float(), mode, **options)
    parts = sum(algos.agg_loss(values[idx, : mb["input_ids"].shape[1]], mb["loss_mask"].float(), mode, **options)
                for idx, mb in micro_batches(batch, 50))
    torch.testing.assert_close(parts, whole)
    mask = batch["loss_mask"].float()
    cols = mask.any(0).nonzero().flatten()
    window = slice(int(cols.min()), int(cols.max()) + 1)
    expected = algos.agg_loss(values[:, window], mask[:, window], mode)
    torch.testing.assert_close(whole, expected)


def test_bad_learner_configs_are_named(tmp_path):
    from longvideo_r1.trainer.learner import _check

    with pytest.raises(InputError, match="no model given"):
        _check(LearnerConfig())
    with pytest.raises(InputError, match="no config.json"):
        _check(LearnerConfig(model=str(tmp_path)))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InputError, match="zero_stage=4"):
        _check(LearnerConfig(model=str(tmp_path), zero_stage=4))
    with pytest.raises(InputError, match="loss_agg"):
        _check(LearnerConfig(model=str(tmp_path), loss_agg="mean"))


def test_old_checkpoints_are_deleted_after_a_save_and_the_kept_one_resumes(ray_local, tiny_qwen3_dir, tmp_path):
    cfg = config(tiny_qwen3_dir, micro_batch_tokens=100)
    ckpt = tmp_path / "ckpt"
    group = LearnerGroup(cfg)
    try:
        for step in range(5):
            group.sft_step(sft_batch(20 + step))
            group.save(str(ckpt), {"position": step + 1}, keep_last=2, keep_every=2, save_hf=step >= 3)
    finally:
        group.shutdown()
    # steps 1-5 saved; kept: the newest two (4, 5) and every 2nd (2, 4); 1 and 3 deleted
    assert sorted(p.name for p in ckpt.iterdir() if p.is_dir()) == ["step000002", "step000004", "step000005"]
    # the transformers copies (asked for at steps 4 and 5) sit in their checkpoints and load as they are
    assert [p.parent.name for p in sorted(ckpt.glob("*/hf"))] == ["step000004", "step000005"]
    from transformers import AutoModelForCausalLM

    four, five = (AutoModelForCausalLM.from_pretrained(ckpt / t / "hf") for t in ("step000004", "step000005"))
    assert any(not torch.equal(a, b) for a, b in zip(four.parameters(), five.parameters()))   # step 5's update
    assert (ckpt / "latest").read_text().strip() == "step000005"
    resumed = LearnerGroup(cfg)
    try:
        assert resumed.load(str(ckpt)) == {"position": 5} and resumed.step == 5
        assert resumed.load(str(ckpt), tag="step000002") == {"position": 2}
    finally:
        resumed.shutdown()
