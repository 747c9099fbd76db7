"""The RL math (longvideo_r1.trainer.algos) against verl 0.9.1's own numbers, plus properties.

tests/fixtures/verl_core_algos.pt is written by scripts/verl_golden.py with verl itself (its
docstring has the commands); each case records the verl call (function, tensor inputs, kwargs) and
its outputs, and is replayed here through our API.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from longvideo_r1.trainer import algos

FIXTURE = Path(__file__).parent / "fixtures" / "verl_core_algos.pt"
GOLDEN = torch.load(FIXTURE, weights_only=True)
INPUTS = GOLDEN["inputs"]
TOL = {"rtol": 1e-6, "atol": 1e-6}


def close(actual, expected, **kw):
    """assert_close for tensors or python floats (verl's 0-d results are stored as floats)."""
    opts = {**TOL, "equal_nan": True, **kw}
    if not isinstance(expected, torch.Tensor):
        expected = torch.tensor(expected, dtype=torch.float64)
        actual = torch.as_tensor(actual).detach().to(torch.float64)
    else:
        actual = torch.as_tensor(actual).detach()
    torch.testing.assert_close(actual, expected, **opts)


# --------------------------------------------------------------------------- replay of verl cases

def replay(case: dict) -> None:
    fn, kw, out = case["fn"], case["kwargs"], case["outputs"]
    t = {arg: INPUTS[name].clone() for arg, name in case["tensors"].items()}

    if fn in ("masked_sum", "masked_mean"):
        close(getattr(algos, fn)(t["values"], t["mask"], dim=kw["axis"]), out["result"])
    elif fn == "masked_var":
        close(algos.masked_var(t["values"], t["mask"], unbiased=kw["unbiased"]), out["result"])
    elif fn == "masked_whiten":
        close(algos.masked_whiten(t["values"], t["mask"], shift_mean=kw["shift_mean"]), out["result"])
    elif fn == "compute_grpo_outcome_advantage":
        scores = t["token_level_rewards"].sum(dim=-1)
        adv, ret = algos.grpo_advantages(scores, kw["index"], t["response_mask"], eps=kw["epsilon"],
                                         norm_by_std=kw["norm_adv_by_std_in_grpo"])
        close(adv, out["advantages"])
        close(ret, out["returns"])
    elif fn == "compute_gae_advantage_return":
        adv, ret = algos.gae_advantages(t["token_level_rewards"], t["values"], t["response_mask"],
                                        gamma=kw["gamma"], lam=kw["lam"])
        close(adv, out["advantages"], rtol=1e-5, atol=1e-5)
        close(ret, out["returns"], rtol=1e-5, atol=1e-5)
    elif fn == "kl_penalty":
        logprobs = t["logprob"].requires_grad_(True)
        kl = algos.kl_penalty(logprobs, t["ref_logprob"], kw["kl_penalty"])
        (kl * INPUTS["mask"]).sum().backward()
        close(kl, out["kl"])
        close(logprobs.grad, out["grad_logprobs"])
    elif fn == "agg_loss":
        options = {k: v for k, v in kw.items() if k != "loss_agg_mode"}
        close(algos.agg_loss(t["loss_mat"], t["loss_mask"], kw["loss_agg_mode"], **options), out["loss"])
    elif fn == "compute_policy_loss_vanilla":
        cfg = kw["config"]
        logprobs = t["log_prob"].requires_grad_(True)
        loss, stats = algos.policy_loss(
            t["old_log_prob"], logprobs, t["advantages"], t["response_mask"],
            clip_low=cfg["clip_ratio_low"], clip_high=cfg["clip_ratio_high"],
            dual_clip=None if kw["dual_clip_off"] else cfg["clip_ratio_c"],
            agg=kw["loss_agg_mode"], **cfg["global_batch_info"])
        loss.backward()
        close(loss, out["loss"])
        close(logprobs.grad, out["grad_logprobs"])
        for name in ("clipfrac", "clipfrac_lower", "approx_kl"):
            close(stats[name], out[name])
    elif fn == "compute_value_loss":
        options = {k: v for k, v in kw.items() if k not in ("cliprange_value", "loss_agg_mode")}
        values = t["vpreds"].requires_grad_(True)
        loss, clipfrac = algos.value_loss(values, t["returns"], t["values"], t["response_mask"],
                                          clip=kw["cliprange_value"], agg=kw["loss_agg_mode"], **options)
        loss.backward()
        close(loss, out["loss"])
        close(clipfrac, out["clipfrac"])
        close(values.grad, out["grad_values"])
    elif fn == "apply_kl_penalty":
        rewards, kl_mean = algos.kl_in_reward(t["token_level_scores"], t["old_log_probs"], t["ref_log_prob"],
                                              t["response_mask"], beta=kw["kl_coef"], kind=kw["kl_penalty"])
        close(rewards, out["token_level_rewards"])
        close(kl_mean, out["kl_mean"])
    elif fn == "entropy_from_logits":
        close(algos.entropy_from_logits(t["logits"]), out["entropy"], rtol=1e-5, atol=1e-5)
    elif fn == "logprobs_from_logits":
        got = algos.logprobs_from_logits(t["logits"], t["labels"])
        close(got, out["logprobs"])
        close(got, out["logprobs_naive"], rtol=1e-5, atol=1e-5)
    else:
        raise AssertionError(f"no replay for verl function {fn!r} (case {case['name']})")


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=[c["name"] for c in GOLDEN["cases"]])
def test_matches_verl(case):
    replay(case)


def test_fixture_is_verl_091_and_covers_the_api():
    assert GOLDEN["verl_version"] == "0.9.1"
    fns = {c["fn"] for c in GOLDEN["cases"]}
    assert fns == {"masked_sum", "masked_mean", "masked_var", "masked_whiten", "compute_grpo_outcome_advantage",
                   "compute_gae_advantage_return", "kl_penalty", "agg_loss", "compute_policy_loss_vanilla",
                   "compute_value_loss", "apply_kl_penalty", "entropy_from_logits", "logprobs_from_logits"}
    policy = [c for c in GOLDEN["cases"] if c["fn"] == "compute_policy_loss_vanilla"]
    assert {c["kwargs"]["loss_agg_mode"] for c in policy} == set(algos.AGG_MODES)
    # the inputs really exercise clipping, dual clipping and the clamps
    assert any(c["outputs"]["clipfrac_lower"] > 0 for c in policy)
    assert all(c["outputs"]["clipfrac_lower"] == 0 for c in policy if c["kwargs"]["dual_clip_off"])
    assert all(c["outputs"]["clipfrac"] > 0 for c in policy)
    assert (INPUTS["logprobs"] - INPUTS["old_logprobs"]).abs().max() > 20
    k3 = next(c for c in GOLDEN["cases"] if c["name"] == "kl_penalty/k3")
    assert k3["outputs"]["kl"].max() == 10.0


# ------------------------------------------------------------------------------------- properties

def _mask(rows: list[str]) -> torch.Tensor:
    return torch.tensor([[int(ch) for ch in row] for row in rows])


MASK = _mask(["001110011100", "011111000000", "000110001111", "001000100100"])


def test_grpo_normalises_within_groups():
    scores = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.25, 0.9, 0.9, 2.0, -1.0, 0.3, 0.6, 0.2])
    groups = torch.tensor([7, 7, 7, 7, 3, 3, 3, 5, 5, 9, 9, 11])     # sizes 4, 3, 2, 2, 1
    mask = torch.ones(12, 5)
    mask[:, :2] = 0
    adv, ret = algos.grpo_advantages(scores, groups, mask)
    torch.testing.assert_close(adv, ret)
    per_sample = adv[:, -1]
    for gid in (7, 3, 5, 9):
        member = per_sample[groups == gid]
        assert abs(float(member.mean())) < 1e-6
        assert float(member.std()) == pytest.approx(1.0, abs=1e-4)   # unbiased std, up to eps
    assert float(per_sample[11]) == pytest.approx(0.2 / (1 + 1e-6))  # a group of one keeps its score
    assert (adv[:, :2] == 0).all()                                    # zero off the mask
    assert (adv[:, 2:] == per_sample[:, None]).all()                  # broadcast over the mask

    plain, _ = algos.grpo_advantages(scores, groups.tolist(), mask, norm_by_std=False)
    torch.testing.assert_close(plain[:4, -1], scores[:4] - scores[:4].mean())
    same, _ = algos.grpo_advantages(torch.tensor([0.5, 0.5, 0.5]), ["a", "a", "a"], torch.ones(3, 2))
    assert (same == 0).all()                                          # equal scores: no signal


def test_grpo_zero_on_masked_positions_with_holes():
    scores = torch.tensor([1.0, 0.0, 0.3, 0.8])
    adv, _ = algos.grpo_advantages(scores, ["p", "p", "q", "q"], MASK)
    assert (adv[MASK == 0] == 0).all()
    assert (adv[MASK == 1] != 0).all()


def test_gae_with_unit_gamma_lambda_and_zero_values_is_reward_to_go():
    torch.manual_seed(0)
    rewards = torch.randn(MASK.shape) * MASK
    _, returns = algos.gae_advantages(rewards, torch.zeros(MASK.shape), MASK, gamma=1.0, lam=1.0)
    to_go = rewards.flip(-1).cumsum(-1).flip(-1)
    torch.testing.assert_close(returns[MASK == 1], to_go[MASK == 1])


def test_gae_skips_masked_positions():
    torch.manual_seed(1)
    rewards = torch.randn(MASK.shape)
    values = torch.randn(MASK.shape)
    adv, ret = algos.gae_advantages(rewards, values, MASK, gamma=0.9, lam=0.8)
    # rewards and values on masked positions do not matter at all
    noisy_r = torch.where(MASK.bool(), rewards, torch.randn(MASK.shape) * 100)
    noisy_v = torch.where(MASK.bool(), values, torch.randn(MASK.shape) * 100)
    adv2, ret2 = algos.gae_advantages(noisy_r, noisy_v, MASK, gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv2[MASK == 1], adv[MASK == 1])
    torch.testing.assert_close(ret2[MASK == 1], ret[MASK == 1])
    # an observation hole costs no discount step: row 0 turn 1 ends at t=4, turn 2 starts at t=7
    row_r = rewards[0] * MASK[0]
    _, r0 = algos.gae_advantages(row_r[None].repeat(2, 1), torch.zeros(2, 12), MASK[:1].repeat(2, 1), gamma=0.5, lam=1.0)
    assert float(r0[0, 4]) == pytest.approx(float(row_r[4] + 0.5 * r0[0, 7]), abs=1e-6)


def test_token_level_outcome_places_score_on_last_sampled_token():
    rewards = algos.token_level_outcome(torch.tensor([1.0, -2.0, 0.5, 3.0]), MASK)
    assert rewards.tolist()[0] == [0] * 9 + [1.0, 0, 0]
    assert float(rewards[1, 5]) == -2.0 and float(rewards[2, 11]) == 0.5 and float(rewards[3, 9]) == 3.0
    assert int((rewards != 0).sum()) == 4
    empty = algos.token_level_outcome(torch.tensor([1.0]), torch.zeros(1, 5, dtype=torch.bool))
    assert (empty == 0).all()
    golden = algos.token_level_outcome(INPUTS["scores"], INPUTS["mask"])
    torch.testing.assert_close(golden, INPUTS["outcome_rewards"])


def test_k3_is_non_negative_and_aliases_agree():
    torch.manual_seed(2)
    lp = torch.randn(64, 32) * 5
    ref = torch.randn(64, 32) * 5
    ref[0, 0], ref[0, 1] = lp[0, 0] + 60, lp[0, 1] - 60                # beyond the ±20 clamp
    k3 = algos.kl_penalty(lp, ref, "k3")
    assert (k3 >= 0).all() and torch.isfinite(k3).all() and float(k3.max()) <= 10
    torch.testing.assert_close(k3, algos.kl_penalty(lp, ref, "low_var_kl"))
    torch.testing.assert_close(algos.kl_penalty(lp, ref, "kl"), lp - ref)
    torch.testing.assert_close(algos.kl_penalty(lp, ref, "mse"), 0.5 * (lp - ref) ** 2)
    assert (algos.kl_penalty(lp, lp, "k3") == 0).all()


def test_policy_loss_gradient_is_zero_for_clipped_tokens():
    old = torch.zeros(1, 6)
    #              clipped: A>0 r>1.2 | A<0 r<0.8 | A<0 r>3 (dual) | inside: A>0, A<0, A>0 r<0.8
    log_ratio = torch.tensor([[0.5, -0.5, 2.0, 0.05, -0.05, -0.5]])
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0, -1.0, 1.0]])
    lp = log_ratio.clone().requires_grad_(True)
    loss, stats = algos.policy_loss(old, lp, adv, torch.ones(1, 6), dual_clip=3.0, agg="token-sum")
    loss.backward()
    grad = lp.grad[0]
    assert (grad[:3] == 0).all()
    assert (grad[3:] != 0).all()
    torch.testing.assert_close(grad[3:], -adv[0, 3:] * torch.exp(log_ratio[0, 3:]))
    assert float(stats["clipfrac"]) == pytest.approx(2 / 6)
    assert float(stats["clipfrac_lower"]) == pytest.approx(1 / 6)
    assert float(stats["approx_kl"]) == pytest.approx(float(-log_ratio.mean()))
    # without dual clip the runaway negative-advantage token keeps its (large) gradient
    lp2 = log_ratio.clone().requires_grad_(True)
    loss2, stats2 = algos.policy_loss(old, lp2, adv, torch.ones(1, 6), agg="token-sum")
    loss2.backward()
    assert float(lp2.grad[0, 2]) == pytest.approx(math.exp(2.0))
    assert float(stats2["clipfrac_lower"]) == 0


def test_policy_loss_at_ratio_one_is_minus_mean_advantage():
    torch.manual_seed(3)
    lp = torch.randn(MASK.shape)
    adv = torch.randn(MASK.shape)
    for dual in (None, 3.0):
        loss, stats = algos.policy_loss(lp, lp.clone(), adv, MASK, dual_clip=dual)
        assert float(loss) == pytest.approx(float(-adv[MASK == 1].mean()), abs=1e-6)
        assert float(stats["clipfrac"]) == 0 and float(stats["approx_kl"]) == 0


def test_agg_loss_modes_and_empty_batches():
    loss = torch.arange(12.0).reshape(2, 6)
    mask = _mask(["011100", "000000"])
    assert float(algos.agg_loss(loss, mask, "token-mean")) == pytest.approx(2.0)
    assert float(algos.agg_loss(loss, mask, "seq-mean-token-sum")) == pytest.approx(6.0)    # empty row excluded
    assert float(algos.agg_loss(loss, mask, "seq-mean-token-mean")) == pytest.approx(2.0)
    assert float(algos.agg_loss(loss, mask, "seq-mean-token-sum-norm")) == pytest.approx(1.0)   # / T = 6
    assert float(algos.agg_loss(loss, mask, "seq-mean-token-sum-norm", loss_scale_factor=3)) == pytest.approx(2.0)
    empty = torch.zeros(2, 6)
    for mode in algos.AGG_MODES:
        assert float(algos.agg_loss(loss, empty, mode)) == 0.0          # verl gives NaN here
    with pytest.raises(ValueError, match="batch_num_tokens"):
        algos.agg_loss(loss, mask, "token-mean", dp_size=2)


def test_value_loss_has_half_factor_and_clips():
    values = torch.tensor([[1.0, 0.0]])
    old = torch.tensor([[0.0, 0.0]])
    ret = torch.tensor([[0.0, 2.0]])
    loss, clipfrac = algos.value_loss(values, ret, old, torch.ones(1, 2), clip=0.5)
    # token 0: max((1-0)^2, (0.5-0)^2) = 1; token 1: 4; token-mean 2.5, times 0.5
    assert float(loss) == pytest.approx(1.25)
    assert float(clipfrac) == 0.0


def test_kl_in_reward():
    torch.manual_seed(4)
    r, lp, ref = torch.randn(MASK.shape), torch.randn(MASK.shape), torch.randn(MASK.shape)
    same, _ = algos.kl_in_reward(r, lp, ref, MASK, beta=0.0)
    torch.testing.assert_close(same, r)
    penalised, kl_mean = algos.kl_in_reward(r, lp, ref, MASK, beta=0.1, kind="k3")
    torch.testing.assert_close(penalised[MASK == 0], r[MASK == 0])
    torch.testing.assert_close(penalised, r - 0.1 * algos.kl_penalty(lp, ref, "k3") * MASK)
    assert kl_mean.dim() == 0 and float(kl_mean) > 0


def test_logits_helpers():
    logits = torch.zeros(2, 3, 7)
    torch.testing.assert_close(algos.entropy_from_logits(logits), torch.full((2, 3), math.log(7)))
    big = torch.tensor([[[1e4, 0.0, -1e4]]])
    ent = algos.entropy_from_logits(big)
    assert torch.isfinite(ent).all() and float(ent) == pytest.approx(0.0, abs=1e-6)
    torch.manual_seed(5)
    logits = torch.randn(3, 4, 50) * 4
    labels = torch.randint(0, 50, (3, 4))
    want = torch.log_softmax(logits, -1).gather(-1, labels[..., None])[..., 0]
    torch.testing.assert_close(algos.logprobs_from_logits(logits, labels), want)
    half = algos.logprobs_from_logits(logits.bfloat16(), labels)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), want, rtol=0.05, atol=0.1)


def test_errors_name_the_problem():
    a, b = torch.zeros(2, 3), torch.zeros(2, 4)
    with pytest.raises(ValueError, match=r"'k4'.*k1.*k3.*low_var_kl"):
        algos.kl_penalty(a, a, "k4")
    with pytest.raises(ValueError, match=r"'token-max'.*token-mean.*seq-mean-token-sum-norm"):
        algos.agg_loss(a, a, "token-max")
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        algos.masked_mean(a, b)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        algos.policy_loss(a, a, a, b)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        algos.gae_advantages(a, b, a)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        algos.value_loss(a, a, b, a)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        algos.kl_penalty(a, b, "k1")
    with pytest.raises(ValueError, match="groups has 3 ids"):
        algos.grpo_advantages(torch.zeros(2), [1, 2, 3], a)
    with pytest.raises(ValueError, match="dual_clip"):
        algos.policy_loss(a, a, a, a, dual_clip=1.0)
    with pytest.raises(ValueError, match="one element"):
        algos.masked_var(a, torch.tensor([[1, 0, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="labels"):
        algos.logprobs_from_logits(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
