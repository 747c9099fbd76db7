"""Write verl's own outputs for the RL math into tests/fixtures/verl_core_algos.pt.

``tests/test_algos.py`` replays every case recorded here through ``longvideo_r1.trainer.algos``
and asserts the same numbers. verl pins transformers < 5.11, so it lives in its own venv, never in
``.venv``; this script imports only verl and torch (not ``longvideo_r1``). To regenerate:

    python3.11 -m venv /tmp/verl-venv
    /tmp/verl-venv/bin/pip install -q torch==2.13.0 verl==0.9.1
    /tmp/verl-venv/bin/pip install -q cachetools uvicorn fastapi   # for verl.trainer.ppo.ray_trainer
    /tmp/verl-venv/bin/python scripts/verl_golden.py

(``verl.trainer.ppo.core_algos`` needs nothing beyond verl's own dependencies; the three extra
packages are only imported by ``ray_trainer``, home of ``apply_kl_penalty``, the "KL in the reward"
step.) The inputs are deterministic (fixed seed), so a rerun writes the same numbers.

Fixture layout (a plain dict, loadable with ``torch.load(..., weights_only=True)``):

* ``verl_version``, ``torch_version``: strings;
* ``inputs``: name → tensor (float32 unless noted) shared by the cases;
* ``cases``: a list of dicts ``{"name", "fn", "tensors", "kwargs", "outputs"}``: ``fn`` is the
  verl function called, ``tensors`` maps each of its tensor arguments to an input name, ``kwargs``
  holds its other arguments exactly as passed (an ActorConfig's fields for the policy loss, the
  group ids for GRPO), and ``outputs`` maps output names to tensors or python floats.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("VERL_DISABLE_FLASH_ATTN_CE", "1")   # the plain torch path for logprobs

import numpy as np
import torch

import verl
import verl.utils.torch_functional as verl_F
from verl import DataProto
from verl.trainer.ppo import core_algos
from verl.workers.config import ActorConfig

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "verl_core_algos.pt"
SEED = 20261101
B, T = 8, 18
NO_DUAL_CLIP = 1e10     # verl always dual-clips (clip_ratio_c); a huge c turns it off


def build_inputs() -> dict[str, torch.Tensor]:
    """Deterministic inputs: masks with prompt prefix, observation holes and right padding."""
    g = torch.Generator().manual_seed(SEED)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    # (prompt length, [(turn length, observation length after it), ...]); the rest is padding
    layouts = [
        (3, [(4, 3), (5, 0)]),
        (2, [(3, 2), (2, 2), (4, 0)]),
        (4, [(10, 0)]),                # one turn, no hole
        (3, [(2, 4), (3, 0)]),
        (2, [(1, 3), (1, 2), (2, 0)]),   # single-token turns
        (5, [(6, 2), (5, 0)]),         # no padding at the end
        (3, [(3, 3), (4, 0)]),
        (2, [(14, 0)]),
    ]
    mask = torch.zeros(B, T, dtype=torch.int64)
    for row, (prompt, turns) in enumerate(layouts):
        t = prompt
        for turn, obs in turns:
            mask[row, t:t + turn] = 1
            t += turn + obs
        assert t <= T, (row, t)
    mask_empty_row = mask.clone()
    mask_empty_row[6] = 0           # a sequence with no sampled token (excluded by the seq-mean modes)

    old_logprobs = -(randn(B, T).abs() * 1.5) - 0.05
    delta = randn(B, T) * 0.3
    # large log-ratios so that clipping, dual clipping and the ±20 clamp all fire
    delta[0, 4], delta[1, 3], delta[2, 6], delta[3, 4] = 1.5, -2.0, 2.5, 0.9
    delta[5, 7], delta[5, 8], delta[6, 4], delta[7, 10] = 25.0, -30.0, 3.0, -1.2
    logprobs = old_logprobs + delta
    advantages = randn(B, T)
    advantages[0, 4], advantages[2, 6], advantages[6, 4] = -1.0, -0.7, -2.0   # negative A, ratio > 3
    ref_logprobs = logprobs + randn(B, T) * 0.5
    ref_logprobs[4, 2], ref_logprobs[4, 3], ref_logprobs[7, 5] = -40.0, 5.0, logprobs[7, 5] + 3.0  # k3 clamps

    values = randn(B, T) * 0.5
    old_values = values + randn(B, T) * 0.6
    returns = randn(B, T)
    dense_rewards = randn(B, T) * 0.1            # on every position, masked ones included

    scores = torch.tensor([1.0, 0.0, 0.5, 1.0, 1.0, 0.7, 0.3, -0.2])
    # the outcome reward on each sequence's last sampled token (as the reward manager places it)
    outcome = torch.zeros(B, T)
    for row in range(B):
        last = int(torch.nonzero(mask[row]).max())
        outcome[row, last] = scores[row]

    x = randn(B, T) * 2.0 + 0.5
    x_nan = x.clone()
    x_nan[mask == 0] = float("nan")              # NaN only where the mask is 0

    logits = randn(4, 6, 11) * 3.0
    labels = torch.randint(0, 11, (4, 6), generator=g)

    return {
        "mask": mask, "mask_empty_row": mask_empty_row, "mask_bool": mask.bool(),
        "old_logprobs": old_logprobs, "logprobs": logprobs, "ref_logprobs": ref_logprobs,
        "advantages": advantages, "values": values, "old_values": old_values, "returns": returns,
        "dense_rewards": dense_rewards, "outcome_rewards": outcome,
        "gae_rewards": outcome + dense_rewards, "scores": scores,
        "x": x, "x_nan": x_nan, "loss_mat": randn(B, T),
        "logits": logits, "labels": labels,
    }


def out(value):
    """0-d tensors become python floats (smaller fixture); others stay tensors."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        return float(value.item()) if value.dim() == 0 else value.clone()
    return float(value)


def main() -> int:
    torch.manual_seed(SEED)
    inp = build_inputs()
    cases: list[dict] = []

    def case(name, fn, tensors, kwargs, outputs):
        cases.append({"name": name, "fn": fn, "tensors": tensors, "kwargs": kwargs,
                      "outputs": {k: out(v) for k, v in outputs.items()}})

    # ---- verl.utils.torch_functional masked statistics
    for xname in ("x", "x_nan"):
        for maskname in ("mask", "mask_bool"):
            for axis in (None, -1):
                args = {"values": xname, "mask": maskname}
                case(f"masked_sum/{xname}/{maskname}/{axis}", "masked_sum", args, {"axis": axis},
                     {"result": verl_F.masked_sum(inp[xname], inp[maskname], axis)})
                case(f"masked_mean/{xname}/{maskname}/{axis}", "masked_mean", args, {"axis": axis},
                     {"result": verl_F.masked_mean(inp[xname], inp[maskname], axis)})
    for unbiased in (True, False):
        case(f"masked_var/{unbiased}", "masked_var", {"values": "x", "mask": "mask"}, {"unbiased": unbiased},
             {"result": verl_F.masked_var(inp["x"], inp["mask"], unbiased)})
    for shift in (True, False):
        case(f"masked_whiten/{shift}", "masked_whiten", {"values": "x", "mask": "mask"}, {"shift_mean": shift},
             {"result": verl_F.masked_whiten(inp["x"], inp["mask"], shift)})

    # ---- GRPO: groups of 3, 2 (equal scores), 1 and 2
    groups = ["q0", "q0", "q0", "q1", "q1", "q2", "q3", "q3"]
    for norm in (True, False):
        for eps in (1e-6, 1e-3):
            kwargs = {"index": groups, "epsilon": eps, "norm_adv_by_std_in_grpo": norm}
            adv, ret = core_algos.compute_grpo_outcome_advantage(
                token_level_rewards=inp["outcome_rewards"].clone(), response_mask=inp["mask"],
                index=np.array(groups, dtype=object), epsilon=eps, norm_adv_by_std_in_grpo=norm)
            case(f"grpo/{norm}/{eps}", "compute_grpo_outcome_advantage",
                 {"token_level_rewards": "outcome_rewards", "response_mask": "mask"}, kwargs,
                 {"advantages": adv, "returns": ret})

    # ---- GAE
    for rewards in ("gae_rewards", "outcome_rewards"):
        for gamma, lam in ((1.0, 1.0), (0.99, 0.95), (0.9, 0.0)):
            adv, ret = core_algos.compute_gae_advantage_return(
                token_level_rewards=inp[rewards], values=inp["values"], response_mask=inp["mask"],
                gamma=gamma, lam=lam)
            case(f"gae/{rewards}/{gamma}/{lam}", "compute_gae_advantage_return",
                 {"token_level_rewards": rewards, "values": "values", "response_mask": "mask"},
                 {"gamma": gamma, "lam": lam}, {"advantages": adv, "returns": ret})

    # ---- kl_penalty, every kind (and the straight-through '+' forms: value and gradient)
    for kind in ("k1", "kl", "abs", "k2", "mse", "k3", "low_var_kl", "k1+", "abs+", "k3+", "k2+"):
        logprobs = inp["logprobs"].clone().requires_grad_(True)
        kl = core_algos.kl_penalty(logprobs, inp["ref_logprobs"], kind)
        (kl * inp["mask"]).sum().backward()
        case(f"kl_penalty/{kind}", "kl_penalty", {"logprob": "logprobs", "ref_logprob": "ref_logprobs"},
             {"kl_penalty": kind}, {"kl": kl, "grad_logprobs": logprobs.grad})

    # ---- agg_loss: every mode, with local and global normalisers
    modes = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
    global_infos = {
        "local": {},
        "scale32": {"loss_scale_factor": 32},
        "dp2": {"dp_size": 2, "batch_num_tokens": 150, "global_batch_size": 15},
    }
    for mode in modes:
        for maskname in ("mask", "mask_empty_row"):
            for info_name, info in global_infos.items():
                if info_name == "scale32" and mode != "seq-mean-token-sum-norm":
                    continue
                loss = core_algos.agg_loss(inp["loss_mat"], inp[maskname], mode, **info)
                case(f"agg_loss/{mode}/{maskname}/{info_name}", "agg_loss",
                     {"loss_mat": "loss_mat", "loss_mask": maskname}, {"loss_agg_mode": mode, **info},
                     {"loss": loss})

    # ---- vanilla policy loss: every mode × dual clip on/off × symmetric/asymmetric clip
    for mode in modes:
        for dual in (None, 3.0):
            for low, high in ((0.2, 0.2), (0.2, 0.28)):
                for info_name in ("local", "dp2") if (dual, low, high) == (3.0, 0.2, 0.28) else ("local",):
                    info = dict(global_infos[info_name])
                    cfg_kwargs = {
                        "clip_ratio": low, "clip_ratio_low": low, "clip_ratio_high": high,
                        "clip_ratio_c": NO_DUAL_CLIP if dual is None else dual,
                        "loss_agg_mode": mode, "global_batch_info": info,
                    }
                    config = ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1, **cfg_kwargs)
                    logprobs = inp["logprobs"].clone().requires_grad_(True)
                    loss, metrics = core_algos.compute_policy_loss_vanilla(
                        old_log_prob=inp["old_logprobs"], log_prob=logprobs, advantages=inp["advantages"],
                        response_mask=inp["mask"], loss_agg_mode=mode, config=config)
                    loss.backward()
                    case(f"policy_loss/{mode}/{dual}/{low}-{high}/{info_name}", "compute_policy_loss_vanilla",
                         {"old_log_prob": "old_logprobs", "log_prob": "logprobs", "advantages": "advantages",
                          "response_mask": "mask"},
                         {"loss_agg_mode": mode, "config": cfg_kwargs, "dual_clip_off": dual is None},
                         {"loss": loss, "grad_logprobs": logprobs.grad,
                          "clipfrac": metrics["actor/pg_clipfrac"], "approx_kl": metrics["actor/ppo_kl"],
                          "clipfrac_lower": metrics["actor/pg_clipfrac_lower"]})

    # ---- value loss
    for mode in modes:
        for clip in (0.5, 0.2):
            for info_name in ("local", "dp2") if clip == 0.2 else ("local",):
                info = dict(global_infos[info_name])
                vpreds = inp["values"].clone().requires_grad_(True)
                loss, clipfrac = core_algos.compute_value_loss(
                    vpreds=vpreds, returns=inp["returns"], values=inp["old_values"], response_mask=inp["mask"],
                    cliprange_value=clip, loss_agg_mode=mode, **info)
                loss.backward()
                case(f"value_loss/{mode}/{clip}/{info_name}", "compute_value_loss",
                     {"vpreds": "values", "returns": "returns", "values": "old_values", "response_mask": "mask"},
                     {"cliprange_value": clip, "loss_agg_mode": mode, **info},
                     {"loss": loss, "clipfrac": clipfrac, "grad_values": vpreds.grad})

    # ---- KL in the reward (ray_trainer.apply_kl_penalty with a fixed coefficient)
    from verl.trainer.ppo.ray_trainer import apply_kl_penalty

    for kind in ("k1", "k3", "abs"):
        for maskname in ("mask", "mask_empty_row"):
            beta = 0.05
            data = DataProto.from_dict(tensors={
                "response_mask": inp[maskname], "token_level_scores": inp["dense_rewards"],
                "old_log_probs": inp["logprobs"], "ref_log_prob": inp["ref_logprobs"]})
            data, metrics = apply_kl_penalty(data, core_algos.FixedKLController(kl_coef=beta), kl_penalty=kind)
            case(f"kl_in_reward/{kind}/{maskname}", "apply_kl_penalty",
                 {"response_mask": maskname, "token_level_scores": "dense_rewards", "old_log_probs": "logprobs",
                  "ref_log_prob": "ref_logprobs"},
                 {"kl_penalty": kind, "kl_coef": beta},
                 {"token_level_rewards": data.batch["token_level_rewards"],
                  "kl_mean": metrics["actor/reward_kl_penalty"]})

    # ---- logits helpers
    case("entropy_from_logits", "entropy_from_logits", {"logits": "logits"}, {},
         {"entropy": verl_F.entropy_from_logits(inp["logits"])})
    case("logprobs_from_logits", "logprobs_from_logits", {"logits": "logits", "labels": "labels"}, {},
         {"logprobs": verl_F.logprobs_from_logits(inp["logits"], inp["labels"]),
          "logprobs_naive": verl_F.logprobs_from_logits_naive(inp["logits"], inp["labels"])})

    fixture = {
        "verl_version": str(verl.__version__), "torch_version": str(torch.__version__), "seed": SEED,
        "no_dual_clip_c": NO_DUAL_CLIP, "inputs": inp, "cases": cases,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB, {len(cases)} cases, verl {verl.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
