"""The RL math of the learner as plain torch functions (no Ray, no DeepSpeed, no model).

Conventions
-----------
* Token tensors are ``[B, T]``: ``B`` sequences, ``T`` positions of the (padded) sequence.
* ``mask`` ``[B, T]`` (bool, int or float 0/1) is 1 on the tokens the policy sampled and 0 on the
  prompt, the padding and the tool-observation blocks between turns, so a row may look like
  ``0 0 0 1 1 1 0 0 1 1 0 0`` (prompt, turn 1, observation, turn 2, padding).
* Every function checks that its token tensors share one shape and raises ``ValueError`` naming
  both shapes otherwise.

The numbers are those of verl 0.9.1 (``verl.trainer.ppo.core_algos`` and
``verl.utils.torch_functional``); ``tests/test_algos.py`` replays verl's own outputs, written by
``scripts/verl_golden.py`` into ``tests/fixtures/verl_core_algos.pt``. Facts worth knowing:

* GAE skips masked positions: the recursion runs over the sampled tokens only (an observation
  block costs no discount step, and a reward or value placed on a masked position is ignored),
  while a masked position *reports* the advantage carried from the next sampled token. The
  advantages are then whitened over the mask (and so are the masked positions), so GAE outputs are
  not zero off the mask; only masked losses use them.
* GRPO gives a group of one sample mean 0 and std 1: its advantage is its raw score/(1+eps), not 0.
  The std of a larger group is the unbiased one (n−1).
* verl always applies dual clip (``clip_ratio_c`` defaults to 3.0); here ``dual_clip=None`` turns it
  off, so pass ``dual_clip=3.0`` for verl's default behaviour.
* The log-ratio is clamped to [−20, 20] before ``exp`` (and ``approx_kl`` uses the clamped value);
  k3 clamps its log-ratio to [−20, 20] and its result to [−10, 10].
* ``seq-mean-token-sum-norm`` divides by ``loss_scale_factor``, which defaults to ``T``, the padded
  width of this batch: pass a constant to keep the scale fixed across batches.
* The value loss carries a factor 0.5.

Two deliberate differences, both on degenerate input where verl returns NaN: the aggregations
count an empty batch (no token / no sequence with a token) as 1, so the loss is 0; and the
sequence-level aggregations ignore NaN/inf on masked positions, like ``masked_sum`` does.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, NamedTuple

import torch

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGG_MODES",
    "AdvantageEstimator",
    "advantage_estimator",
    "KL_KINDS",
    "agg_loss",
    "entropy_from_logits",
    "gae_advantages",
    "grpo_advantages",
    "kl_in_reward",
    "kl_penalty",
    "logprobs_from_logits",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "policy_loss",
    "token_level_outcome",
    "value_loss",
]

#: KL estimator names and the estimator each one means (verl's names are accepted as aliases).
KL_KINDS: dict[str, str] = {
    "k1": "k1", "kl": "k1",
    "abs": "abs",
    "k2": "k2", "mse": "k2",
    "k3": "k3", "low_var_kl": "k3",
}

#: Loss aggregation modes (verl's ``loss_agg_mode`` values).
AGG_MODES: tuple[str, ...] = (
    "token-mean",
    "token-sum",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)

_LOG_RATIO_CLAMP = 20.0     # |log π/π_old| and |log π_ref/π| are clamped to this before exp
_K3_CLAMP = 10.0            # the k3 estimate is clamped to [-10, 10]
_WHITEN_EPS = 1e-8          # masked_whiten: rsqrt(var + eps)
_MEAN_EPS = 1e-8            # masked_mean: sum / (count + eps)


# ---------------------------------------------------------------------------------------- checks

def _same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}; "
                         "they must be equal")


def _two_dim(name: str, x: torch.Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name} must be [B, T]; got shape {tuple(x.shape)}")


def _as_float_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The mask as 0/1 in ``like``'s floating dtype (bool and integer masks included)."""
    dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
    return mask.to(dtype)


# ---------------------------------------------------------------------------------- masked stats

def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """Sum of ``x`` over the positions where ``mask`` is non-zero.

    ``x``, ``mask``: the same shape (e.g. ``[B, T]``). ``dim=None`` sums everything (0-d result);
    otherwise the result has ``x``'s shape without ``dim`` (``dim=-1`` gives ``[B]``).
    NaN/inf on masked-out positions do not leak into the sum. A non-binary mask weights ``x``.
    """
    _same_shape("x", x, "mask", mask)
    kept = torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return (kept * mask).sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is non-zero: ``sum / (count + 1e-8)``.

    Shapes as :func:`masked_sum`. An empty mask (along ``dim``) gives 0, not NaN.
    """
    return masked_sum(x, mask, dim) / (mask.sum(dim=dim) + _MEAN_EPS)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over the whole mask (all dims at once): a 0-d tensor.

    ``unbiased=True`` applies Bessel's correction ``n/(n−1)`` with ``n = mask.sum()``, and then
    raises ``ValueError`` when ``n`` is 0 or 1 (the correction is undefined).
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n == 0:
            raise ValueError("masked_var: the mask selects no element; at least two are needed")
        if n == 1:
            raise ValueError("masked_var: the mask selects one element; the unbiased variance needs two "
                             "(use a larger batch or unbiased=False)")
        var = var * (n / (n - 1))
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """``(x − mean) / sqrt(var + 1e-8)`` with mean and unbiased variance taken over the mask.

    Applied to every position of ``x`` (masked ones included); the result has ``x``'s shape.
    ``shift_mean=False`` adds the mean back after scaling. Raises ``ValueError`` when the mask
    selects fewer than two elements.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + _WHITEN_EPS)
    if not shift_mean:
        out = out + mean
    return out


# ------------------------------------------------------------------------------------ advantages

def _scores_and_mask(scores: torch.Tensor, mask: torch.Tensor) -> None:
    if scores.dim() != 1:
        raise ValueError(f"scores must be [B] (one score per sample); got shape {tuple(scores.shape)}")
    _two_dim("mask", mask)
    if mask.shape[0] != scores.shape[0]:
        raise ValueError(f"scores has shape {tuple(scores.shape)} but mask has shape {tuple(mask.shape)}; "
                         "they need the same batch size B")


def _group_ids(groups: Sequence[Hashable] | torch.Tensor, batch: int) -> list[Hashable]:
    if isinstance(groups, torch.Tensor) or hasattr(groups, "tolist"):
        ids = groups.tolist()
    else:
        ids = list(groups)
    if len(ids) != batch:
        raise ValueError(f"groups has {len(ids)} ids but scores has {batch} entries; give one group id per sample")
    return ids


def grpo_advantages(
    scores: torch.Tensor,
    groups: Sequence[Hashable] | torch.Tensor,
    mask: torch.Tensor,
    eps: float = 1e-6,
    norm_by_std: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO outcome advantages: each score normalised within its group, spread over the mask.

    ``scores`` ``[B]`` (one outcome reward per sample), ``groups`` length ``B`` (hashable ids; the
    samples of one prompt share an id), ``mask`` ``[B, T]``.
    ``a_i = (s_i − mean_g) / (std_g + eps)`` (``std_g`` unbiased) or ``s_i − mean_g`` when
    ``norm_by_std`` is False (Dr.GRPO). A group of one sample uses mean 0 and std 1 (its advantage
    is its own score, divided by ``1 + eps``); a group of equal scores gets 0.
    Returns ``(advantages, returns)``, both ``[B, T]`` and equal: ``a_i · mask[i]``.
    """
    _scores_and_mask(scores, mask)
    ids = _group_ids(groups, scores.shape[0])
    members: dict[Hashable, list[int]] = {}
    for i, gid in enumerate(ids):
        members.setdefault(gid, []).append(i)
    with torch.no_grad():
        normed = scores.detach().clone()
        for rows in members.values():
            idx = torch.tensor(rows, device=scores.device)
            group = scores.detach()[idx]
            if len(rows) == 1:
                mean, std = 0.0, 1.0
            else:
                mean, std = group.mean(), group.std()
            centred = group - mean
            normed[idx] = centred / (std + eps) if norm_by_std else centred
        advantages = normed.unsqueeze(-1) * mask
    return advantages, advantages.clone()


def gae_advantages(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the sampled tokens, then whitened over the mask.

    ``token_rewards``, ``values``, ``mask``: ``[B, T]``. Going backwards over positions, on a
    sampled token ``t``: ``δ_t = r_t + γ·V_next − V_t``, ``A_t = δ_t + γλ·A_next``, and ``V_next``,
    ``A_next`` become ``V_t``, ``A_t``. On a masked position nothing changes (``V_next`` and
    ``A_next`` carry over: an observation block between turns costs no discount step and its
    reward/value are ignored) and the position reports the carried ``A_next`` (0 after the last
    sampled token). ``returns = A + values`` (before whitening, every position); ``advantages =
    masked_whiten(A, mask)``. Returns ``(advantages, returns)``, both ``[B, T]``. Raises
    ``ValueError`` when the mask holds fewer than two tokens (whitening needs two).
    """
    _two_dim("token_rewards", token_rewards)
    _same_shape("token_rewards", token_rewards, "values", values)
    _same_shape("token_rewards", token_rewards, "mask", mask)
    with torch.no_grad():
        rewards = token_rewards.detach()
        vals = values.detach()
        sampled = mask.bool()
        next_value = torch.zeros_like(vals[:, 0])
        carry = torch.zeros_like(vals[:, 0])
        columns: list[torch.Tensor] = []
        for t in range(rewards.shape[1] - 1, -1, -1):
            delta = rewards[:, t] + gamma * next_value - vals[:, t]
            step = delta + gamma * lam * carry
            on = sampled[:, t]
            next_value = torch.where(on, vals[:, t], next_value)
            carry = torch.where(on, step, carry)
            columns.append(carry)
        raw = torch.stack(columns[::-1], dim=1)
        returns = raw + vals
        advantages = masked_whiten(raw, mask)
    return advantages, returns


def token_level_outcome(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each sequence's scalar score on its last sampled token (the PPO token reward).

    ``scores`` ``[B]``, ``mask`` ``[B, T]`` → ``[B, T]`` in ``scores``' dtype (float), zero except
    at ``(i, last t with mask[i, t] == 1)``. A row without any sampled token stays all zeros (no
    token to credit).
    """
    _scores_and_mask(scores, mask)
    dtype = scores.dtype if scores.is_floating_point() else torch.get_default_dtype()
    out = torch.zeros(mask.shape, dtype=dtype, device=scores.device)
    on = mask.bool()
    positions = torch.arange(mask.shape[1], device=mask.device).expand(mask.shape)
    last = torch.where(on, positions, torch.full_like(positions, -1)).amax(dim=1)   # [B], -1 = no token
    rows = torch.nonzero(last >= 0, as_tuple=True)[0]
    out[rows, last[rows]] = scores[rows].to(dtype)
    return out


# -------------------------------------------------------------------------------------------- KL

def _kl_kind(kind: str) -> tuple[str, bool]:
    """``(estimator, straight_through)`` for a kind name; a trailing '+' asks for k2 gradients."""
    straight = isinstance(kind, str) and kind.endswith("+")
    base = kind[:-1] if straight else kind
    if base not in KL_KINDS:
        choices = ", ".join(sorted(KL_KINDS)) + " (a trailing '+' gives k2 gradients, e.g. 'k3+')"
        raise ValueError(f"unknown KL kind {kind!r}; choose one of {choices}")
    return KL_KINDS[base], straight


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token KL estimate between the policy and the reference, ``[B, T]``.

    With ``d = logprobs − ref_logprobs``:

    * ``"k1"`` / ``"kl"``: ``d``;
    * ``"abs"``: ``|d|``;
    * ``"k2"`` / ``"mse"``: ``d² / 2``;
    * ``"k3"`` / ``"low_var_kl"``: ``exp(−d) + d − 1`` with ``−d`` clamped to [−20, 20] and the
      result clamped to [−10, 10] (never negative).

    A trailing ``"+"`` (``"k3+"``, ``"k1+"``, ``"abs+"``) keeps the value but takes the gradient of
    k2 (straight-through; k2's gradient is the unbiased KL gradient). Unknown kinds raise
    ``ValueError``. Masked positions are not zeroed: mask the result (or aggregate with a mask).
    """
    _same_shape("logprobs", logprobs, "ref_logprobs", ref_logprobs)
    estimator, straight = _kl_kind(kind)
    diff = logprobs - ref_logprobs
    if estimator == "k1":
        value = diff
    elif estimator == "abs":
        value = diff.abs()
    elif estimator == "k2":
        value = 0.5 * diff.square()
    else:
        log_ratio = (ref_logprobs - logprobs).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
        value = (torch.exp(log_ratio) - log_ratio - 1).clamp(-_K3_CLAMP, _K3_CLAMP)
    if straight and estimator != "k2":
        k2 = 0.5 * diff.square()
        value = k2 - k2.detach() + value.detach()
    return value


def kl_in_reward(
    token_rewards: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    kind: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The "KL in the reward" option: ``rewards = token_rewards − beta · kl_penalty · mask``.

    All inputs ``[B, T]`` (``logprobs`` are those of the rollout/old policy). Returns
    ``(rewards [B, T], kl_mean)``: ``kl_mean`` is a 0-d tensor, the per-sequence masked mean of the
    masked KL averaged over the batch (a sequence without sampled tokens counts as 0), the number an
    adaptive KL controller tracks.
    """
    _two_dim("token_rewards", token_rewards)
    _same_shape("token_rewards", token_rewards, "logprobs", logprobs)
    _same_shape("token_rewards", token_rewards, "mask", mask)
    kl = kl_penalty(logprobs, ref_logprobs, kind) * mask
    rewards = token_rewards - beta * kl
    kl_mean = masked_mean(kl, mask, dim=-1).mean(dim=0)
    return rewards, kl_mean.detach()


# ----------------------------------------------------------------------------------- aggregation

def agg_loss(
    loss_mat: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    *,
    loss_scale_factor: float | None = None,
    batch_num_tokens: float | torch.Tensor | None = None,
    global_batch_size: float | torch.Tensor | None = None,
    dp_size: int = 1,
) -> torch.Tensor:
    """Reduce a ``[B, T]`` loss matrix to a 0-d loss over the masked tokens.

    Modes (``n_tok`` = sampled tokens, ``n_seq`` = sequences with at least one sampled token):

    * ``"token-mean"``: ``Σ loss·mask / n_tok`` (every token weighs the same);
    * ``"token-sum"``: ``Σ loss·mask``;
    * ``"seq-mean-token-sum"``: ``Σ_seq (Σ_tok loss·mask) / n_seq``;
    * ``"seq-mean-token-mean"``: ``Σ_seq (Σ_tok loss·mask / (n_tok(seq) + 1e-8)) / n_seq``;
    * ``"seq-mean-token-sum-norm"``: ``seq-mean-token-sum / loss_scale_factor``, which defaults to
      ``T`` (the padded width of this batch; Dr.GRPO's constant horizon: pass it to keep it fixed).

    For data parallelism (each rank holding a micro-batch of one global batch):
    ``batch_num_tokens`` replaces ``n_tok`` and ``global_batch_size`` replaces ``n_seq`` with the
    global counts, and the result is multiplied by ``dp_size`` (ranks average gradients), so the
    per-rank losses average to the global aggregate. ``dp_size > 1`` requires the matching
    global count. Empty batches count as 1 (loss 0, not NaN). Unknown modes raise ``ValueError``.
    """
    _two_dim("loss_mat", loss_mat)
    _same_shape("loss_mat", loss_mat, "mask", mask)
    if dp_size < 1:
        raise ValueError(f"dp_size must be >= 1; got {dp_size}")
    if mode == "token-mean":
        if batch_num_tokens is None:
            if dp_size > 1:
                raise ValueError("agg_loss token-mean with dp_size > 1 needs batch_num_tokens (global token count)")
            batch_num_tokens = mask.sum().clamp(min=1)
        return masked_sum(loss_mat, mask) / batch_num_tokens * dp_size
    if mode == "token-sum":
        return masked_sum(loss_mat, mask) * dp_size
    if mode in ("seq-mean-token-sum", "seq-mean-token-sum-norm", "seq-mean-token-mean"):
        per_seq = masked_sum(loss_mat, mask, dim=-1)                       # [B]
        tokens = mask.sum(dim=-1)                                          # [B]
        if mode == "seq-mean-token-mean":
            per_seq = per_seq / (tokens + _MEAN_EPS)
        has_tokens = (tokens > 0).to(per_seq.dtype)
        if global_batch_size is None:
            if dp_size > 1:
                raise ValueError(f"agg_loss {mode} with dp_size > 1 needs global_batch_size (global sequence count)")
            global_batch_size = has_tokens.sum().clamp(min=1)
        loss = masked_sum(per_seq, has_tokens) / global_batch_size * dp_size
        if mode == "seq-mean-token-sum-norm":
            loss = loss / (loss_mat.shape[-1] if loss_scale_factor is None else loss_scale_factor)
        return loss
    raise ValueError(f"unknown loss aggregation mode {mode!r}; choose one of {', '.join(AGG_MODES)}")


# -------------------------------------------------------------------------------------- PPO loss

def policy_loss(
    old_logprobs: torch.Tensor,
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    agg: str = "token-mean",
    **agg_options: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate loss (verl's "vanilla" policy loss).

    All inputs ``[B, T]``. ``log r = clamp(logprobs − old_logprobs, −20, 20)``, ``r = exp(log r)``;
    per token ``L = max(−A·r, −A·clip(r, 1 − clip_low, 1 + clip_high))``; with ``dual_clip = c``
    (> 1, e.g. 3.0) tokens with ``A < 0`` use ``min(L, −A·c)``, which bounds the loss of a
    negative-advantage token whose ratio has run away. ``L`` is reduced by
    :func:`agg_loss` with mode ``agg`` (``agg_options``: its keyword arguments
    ``loss_scale_factor``, ``batch_num_tokens``, ``global_batch_size``, ``dp_size``).

    Returns ``(loss, stats)``: ``loss`` 0-d (differentiable in ``logprobs``); ``stats`` 0-d detached
    tensors, token means over the mask: ``clipfrac`` (the clipped term was the larger),
    ``clipfrac_lower`` (dual clip bound, 0 without dual clip) and ``approx_kl``
    (mean of ``−log r``, the k1 estimate of KL(old‖new)).
    """
    _two_dim("logprobs", logprobs)
    _same_shape("logprobs", logprobs, "old_logprobs", old_logprobs)
    _same_shape("logprobs", logprobs, "advantages", advantages)
    _same_shape("logprobs", logprobs, "mask", mask)
    if dual_clip is not None and not dual_clip > 1.0:
        raise ValueError(f"dual_clip must be > 1.0 (e.g. 3.0) or None; got {dual_clip}")
    log_ratio = (logprobs - old_logprobs).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_low, 1 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    clipfrac = masked_mean((clipped > unclipped).to(ratio.dtype), mask)
    if dual_clip is not None:
        bound = -advantages * dual_clip
        negative = advantages < 0
        clipfrac_lower = masked_mean(((per_token > bound) & negative).to(ratio.dtype), mask)
        per_token = torch.where(negative, torch.minimum(bound, per_token), per_token)
    else:
        clipfrac_lower = torch.zeros((), dtype=ratio.dtype, device=ratio.device)
    loss = agg_loss(per_token, mask, agg, **agg_options)
    stats = {
        "clipfrac": clipfrac.detach(),
        "clipfrac_lower": clipfrac_lower.detach(),
        "approx_kl": masked_mean(-log_ratio, mask).detach(),
    }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    returns: torch.Tensor,
    old_values: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.5,
    agg: str = "token-mean",
    **agg_options: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped value loss: ``0.5 · agg(max((V − R)², (V_clip − R)²))``.

    All inputs ``[B, T]``; ``V_clip = clamp(values, old_values − clip, old_values + clip)``.
    ``agg``/``agg_options`` as :func:`policy_loss`. Returns ``(loss, clipfrac)``, both 0-d:
    ``clipfrac`` (detached) is the masked token fraction where the clipped error was the larger.
    """
    _two_dim("values", values)
    _same_shape("values", values, "returns", returns)
    _same_shape("values", values, "old_values", old_values)
    _same_shape("values", values, "mask", mask)
    clipped_values = torch.maximum(torch.minimum(values, old_values + clip), old_values - clip)
    err = (values - returns) ** 2
    err_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * agg_loss(torch.maximum(err, err_clipped), mask, agg, **agg_options)
    clipfrac = masked_mean((err_clipped > err).to(err.dtype), mask)
    return loss, clipfrac.detach()


# ---------------------------------------------------------------------------------------- logits

def entropy_from_logits(logits: torch.Tensor, logz: torch.Tensor | None = None) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` over the last dim: ``[B, T, V]`` → ``[B, T]``.

    Stable form ``logsumexp(l) − Σ softmax(l)·l`` (no log of a probability). ``logz``: the
    ``logsumexp(logits, -1)`` already computed for the log-probs (one pass over the vocabulary saved).
    """
    probs = torch.softmax(logits, dim=-1)
    return (torch.logsumexp(logits, dim=-1) if logz is None else logz) - (probs * logits).sum(dim=-1)


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor, logz: torch.Tensor | None = None) -> torch.Tensor:
    """``log softmax(logits)[label]`` per position: logits ``[B, T, V]``, labels ``[B, T]`` → ``[B, T]``.

    Memory-friendly: never materialises a ``[B, T, V]`` log-softmax. float32/float64 logits use
    ``logit[label] − logsumexp(logits)`` one sequence at a time (``logz``: that logsumexp, ``[B, T]``,
    when the caller has it already, e.g. for the entropy); half/bfloat16 logits (where that
    difference loses precision) use a log-softmax one sequence at a time.
    """
    if tuple(logits.shape[:-1]) != tuple(labels.shape):
        raise ValueError(f"logits has shape {tuple(logits.shape)} but labels has shape {tuple(labels.shape)}; "
                         "labels must match logits without its last (vocabulary) dim")
    labels = labels.long()
    if logits.dim() == 1:
        return logits[labels] - torch.logsumexp(logits, dim=-1)
    if logits.dtype in (torch.float32, torch.float64):
        picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)
        norm = torch.stack([torch.logsumexp(row, dim=-1) for row in logits]) if logz is None else logz
        return picked - norm
    rows = [torch.log_softmax(row, dim=-1).gather(-1, lab.unsqueeze(-1)).squeeze(-1)
            for row, lab in zip(logits, labels)]
    return torch.stack(rows)


# ------------------------------------------------------------------------------ advantage estimators


class AdvantageEstimator(NamedTuple):
    """An advantage estimator by name: ``fn(scores, token_rewards, mask, groups, values, norm_by_std,
    gamma, lam) -> (advantages, returns)``; what it reads decides what the RL step must provide."""

    fn: Any
    needs_values: bool
    """reads a critic's values (the learner then carries a value head)"""
    token_rewards: bool
    """works on token-level rewards (so a KL-in-reward penalty changes it)"""


def _grpo_estimator(scores, token_rewards, mask, groups, values, norm_by_std, gamma, lam):
    return grpo_advantages(scores, groups, mask, norm_by_std=norm_by_std)


def _gae_estimator(scores, token_rewards, mask, groups, values, norm_by_std, gamma, lam):
    return gae_advantages(token_rewards, values, mask, gamma, lam)


ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {
    "grpo": AdvantageEstimator(_grpo_estimator, needs_values=False, token_rewards=False),
    "ppo": AdvantageEstimator(_gae_estimator, needs_values=True, token_rewards=True),
}
"""``rl.algorithm`` → its estimator: grpo (group-normalised outcome, no critic), ppo (GAE over a value head)"""


def advantage_estimator(name: str) -> AdvantageEstimator:
    if name not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"advantage estimator {name!r}: choose one of {', '.join(ADVANTAGE_ESTIMATORS)}")
    return ADVANTAGE_ESTIMATORS[name]
