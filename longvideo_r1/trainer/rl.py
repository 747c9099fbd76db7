"""The RL stage: a single controller that reads like a one-process program.

    for each step:
        questions  = the next questions_per_step training questions (seeded order, epoch by epoch)
        episodes   = rollout pool (vLLM workers, n samples per question, groups kept together)
        rewards    = reward service (answer + localisation F1 − repeat; a failing scorer is a logged 0)
                     [overlong: penalty] score − overlong_penalty for episodes cut by a budget
        [refill]   = dynamic sampling: drop groups whose samples all scored the same, play new
                     questions in their place (at most max_refill_rounds more rounds)
        batch      = the rollout batch as the learner reads it (sampled tokens trained, observations masked)
        [ref]      = reference log-probs (KL loss / KL in reward)      [values] = the critic's (ppo)
        advantages = the estimator registered as rl.algorithm in trainer.algos (grpo, ppo/GAE)
                     [overlong: mask] the truncated episodes' rows leave the loss
        learner    = DeepSpeed update (clipped surrogate, KL, entropy, value loss); skipped when no
                     group is left to train on
        weights    = published once to the object store, loaded by every rollout worker
        log        = per-step metrics; validation every val_every steps; checkpoint every save_every

All distribution lives in the Ray actors it calls. The loop skeleton (history, checkpoints, stop,
Ctrl-C, summary) is :func:`longvideo_r1.trainer.loop.run_training`, shared with SFT. A rerun
continues from the last checkpoint (learner state, step, data position) with the rollout workers
given the saved weights; a larger ``steps`` continues a finished run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from longvideo_r1.agent.episode import ANSWER_RULES
from longvideo_r1.errors import InputError
from longvideo_r1.rollout.episodes import RolloutConfig
from longvideo_r1.trainer.learner import LearnerConfig

log = logging.getLogger("longvideo_r1.rl")

OVERLONG = ("keep", "mask", "penalty")
"""Values of ``rl.overlong``."""
REFILL_SEED_STRIDE = 1_000_003
"""Sampling seed offset of each refill round (round r of a step samples with seed + r × this)."""


@dataclass
class RLConfig:
    """The RL stage. PROTOCOL §5's GPU numbers (GRPO, n=16, 12 questions per step, lr 1e-6, k3 KL loss
    1e-4) are set in the GPU recipes; the defaults here are the generic ones."""

    enabled: bool = True
    algorithm: str = "grpo"
    """advantage estimator, registered in trainer.algos: grpo (no critic) or ppo (GAE over a value head,
    which the learner then carries)"""
    steps: int = 10
    """optimizer steps (each on questions_per_step × rollout.n episodes); raising it continues a finished run"""
    questions_per_step: int = 4
    norm_by_std: bool = True
    """grpo: divide by the group's standard deviation (False: Dr. GRPO-style mean-centering only)"""
    gamma: float = 1.0
    """ppo: discount of GAE"""
    lam: float = 1.0
    """ppo: λ of GAE"""
    kl_in_reward: float = 0.0
    """ppo: β of a KL-to-reference penalty subtracted from the token rewards (0 = off; grpo puts KL in
    the loss instead: learner.kl_coef)"""
    kl_in_reward_kind: str = "k1"
    """KL estimator of that penalty: k1, k2, k3 or abs"""
    val_every: int = 5
    """validation rollouts (greedy, one per question) every this many steps; 0 = only at the end"""
    val_questions: int = 0
    """validation questions used (0 = all of the validation split)"""
    save_every: int = 5
    keep_last: int = 2
    """checkpoints kept: the newest this many (0 = all), plus every keep_every-th learner step"""
    keep_every: int = 0
    """also keep every checkpoint whose learner optimizer step (tag stepNNNNNN) is a multiple of this (0 = none)"""
    save_hf: bool = False
    """also write a transformers copy (safetensors, tokenizer) of each checkpoint in its folder,
    checkpoints/stepNNNNNN/hf: loadable by transformers and vLLM as it is; retention deletes it with its checkpoint"""
    reward_timeout_s: float = 30.0
    store_access: str = "auto"
    """how rollout workers read the caption store: local (each opens the shard files: the store must be
    on storage every node mounts), served (caption_store actors, pinned to nodes that have the files,
    answer lookups batched per generation step), auto (local when every node of the cluster can open
    the store, else served)"""
    weight_sync: str = "auto"
    """how new weights reach the rollout engines: collective (learner rank 0 broadcasts buckets to the
    engines over NCCL on GPUs, gloo on CPU), object_store (one copy in Ray's object store that every
    worker loads), or auto (collective when the rollout workers have GPUs)"""
    weight_sync_backend: str = "auto"
    """collective: nccl, gloo, or auto (nccl on GPUs unless rollout and learner share GPUs, else gloo)"""
    weight_sync_bucket_mb: float = 512.0
    """collective: size of one broadcast bucket (the weights are gathered from ZeRO-3 shards bucket by bucket)"""
    weight_sync_timeout_s: float = 120.0
    """collective: timeout of forming the group and of each bucket's broadcast; then the dead or silent
    workers are replaced and the sync retried once, then done through the object store"""
    rollout_sleep: str = "auto"
    """vLLM sleep mode between rollouts: the engines free their GPU memory (weights to host memory, KV
    cache dropped) while the learner computes and updates, and take it back around the weight sync;
    auto (when rollout and learner share GPUs: placement.colocate), always (needs vLLM on GPUs), never"""
    reward_scorer: str | None = None
    """None: our compute_score; or "path/to/file.py:function" / "module:function" with verl's signature"""
    seed: int = 0
    """question order and the learner's seed (sampling: rollout.seed)"""
    answer_rule: str = "valid"
    """which answer ends a training episode and earns reward: "valid" (only an answer in a round the
    episode rules accept; the reward reads the accepted rounds only) or "reference" (as the reference
    implementation: any <answer>…</answer> ends the episode, even in a malformed round, and the reward
    reads the last one in the whole text). Validation always uses "valid"."""
    dynamic_sampling: bool = False
    """DAPO dynamic sampling (grpo): drop the groups whose samples all scored the same and play new
    questions in their place, until questions_per_step groups are kept or max_refill_rounds run out;
    when no group is kept the step makes no update"""
    max_refill_rounds: int = 2
    """dynamic sampling: extra rollout rounds per step at most (0: only drop)"""
    overlong: str = "keep"
    """episodes cut by rollout.max_response_tokens or rollout.max_rounds: "keep" (trained as they are),
    "mask" (out of the loss; their scores still count in their group's advantage statistics) or
    "penalty" (overlong_penalty taken off their score)"""
    overlong_penalty: float = 0.5
    """overlong: penalty: what is taken off a truncated episode's score"""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)

    def __post_init__(self):
        if self.answer_rule not in ANSWER_RULES:
            raise InputError(f"config key rl.answer_rule: {self.answer_rule!r} is not one of {', '.join(ANSWER_RULES)}")
        if self.overlong not in OVERLONG:
            raise InputError(f"config key rl.overlong: {self.overlong!r} is not one of {', '.join(OVERLONG)}")
        if isinstance(self.max_refill_rounds, bool) or not isinstance(self.max_refill_rounds, int) \
                or self.max_refill_rounds < 0:
            raise InputError(f"config key rl.max_refill_rounds: {self.max_refill_rounds!r} must be a whole number, "
                             "0 or more")
        if isinstance(self.overlong_penalty, bool) or not isinstance(self.overlong_penalty, (int, float)) \
                or not math.isfinite(self.overlong_penalty) or self.overlong_penalty < 0:
            raise InputError(f"config key rl.overlong_penalty: {self.overlong_penalty!r} must be a finite number, "
                             "0 or more")
        if self.dynamic_sampling:
            from longvideo_r1.trainer.algos import ADVANTAGE_ESTIMATORS

            estimator = ADVANTAGE_ESTIMATORS.get(self.algorithm)      # an unknown name is refused elsewhere
            if estimator is not None and estimator.needs_values:
                raise InputError(f"config key rl.dynamic_sampling: it drops the groups whose samples all scored the "
                                 f"same, which carry no signal only without a critic, and rl.algorithm "
                                 f"{self.algorithm} has one; use grpo or set rl.dynamic_sampling: false")


def question_order(count: int, per_step: int, step: int, seed: int) -> list[int]:
    """Indices of the questions of ``step``: epochs of seeded permutations, read ``per_step`` at a time."""
    if count < 1:
        raise InputError("RL data has no questions")
    out = []
    position = step * per_step
    while len(out) < per_step:
        epoch, offset = divmod(position, count)
        order = list(range(count))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        take = min(per_step - len(out), count - offset)
        out += order[offset: offset + take]
        position += take
    return out


def refill_order(count: int, need: int, step: int, round_: int, seed: int, played: list[int]) -> list[int]:
    """Indices of ``need`` questions for refill round ``round_`` of ``step`` (dynamic sampling): a
    permutation seeded by (seed, step, round), the questions not yet ``played`` this step first, so a
    resumed run refills exactly as the uninterrupted one. Repeats only when the data runs out."""
    order = list(range(count))
    random.Random(f"refill:{seed}:{step}:{round_}").shuffle(order)
    seen = set(played)
    order = [i for i in order if i not in seen] + [i for i in order if i in seen]
    return [order[k % count] for k in range(need)]


class RLJob:
    """The actors of one RL run (rollout pool, reward service, learner group) and its step, as a
    :class:`~longvideo_r1.trainer.loop.TrainingJob`."""

    name = "rl"
    history_offset = -1      # history rows are numbered by the 0-based step they record; -1 = before training

    def __init__(self, config: RLConfig, train_data: str | Path, val_data: str | Path | None, store: str | Path,
                 model: str | Path, out_dir: str | Path, captions=None, placement=None, resume: bool = True):
        from longvideo_r1.cluster.resources import PlacementConfig
        from longvideo_r1.trainer.rl_data import read_rl_rows

        self.estimator = _estimator(config.algorithm)
        self.config = config
        self.total_steps = config.steps
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.train_questions, _ = read_rl_rows(train_data)
        self.val_questions = read_rl_rows(val_data)[0] if val_data else []
        if config.val_questions:
            self.val_questions = self.val_questions[: config.val_questions]
        placement = placement or PlacementConfig()
        self.pool = self.rewards = self.learner = self.groups = self.sync = self.store_client = None
        try:
            self._start(config, store, model, captions, placement, resume)
        except BaseException:
            self.shutdown()      # release what was started (placement groups, actors) before failing
            raise
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(model))
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def _start(self, config: RLConfig, store, model, captions, placement, resume: bool) -> None:
        import ray

        from longvideo_r1.cluster.resources import create, plan
        from longvideo_r1.reward.service import RewardService
        from longvideo_r1.rollout.workers import RolloutPool, WorkerSpec
        from longvideo_r1.trainer.learner_group import LearnerGroup

        # what every node can open: the policy checkpoint (every rollout worker and learner rank loads
        # it) must be on storage they all mount; the caption store may be served instead
        from longvideo_r1.cluster.paths import about, check_readable, node_views

        views = node_views([str(model), str(store)])
        check_readable(about(views, str(model)), {str(model): "policy model"})
        if captions is None:
            captions = self._caption_source(config, str(store), placement, about(views, str(store)))
        # Reserve every role's resources up front (a clear error if the cluster lacks them).
        self.groups = create(plan(placement, ray.cluster_resources()), placement.timeout_s)
        learner_config = dataclasses.replace(config.learner, model=str(model), seed=config.seed,
                                             value_head=self.estimator.needs_values,
                                             total_steps=config.learner.total_steps or config.steps)
        self.learner = LearnerGroup(learner_config, **self.groups.learner_kwargs())
        self.ckpt = self.out / "checkpoints"
        self.done = 0
        self.skipped_updates = 0        # steps that made no update (dynamic sampling kept nothing)
        if resume and (self.ckpt / "latest").is_file():
            state = self.learner.load(str(self.ckpt))
            self.done, self.skipped_updates = state["step"], state.get("skipped_updates", 0)
            log.info("RL resumed from %s at step %d", self.ckpt, self.done)
        from longvideo_r1.trainer.weight_sync import choose_sleep

        on_gpu = placement.rollout.num_gpus > 0 and placement.learner.num_gpus > 0
        colocated = any({"rollout", "learner"} <= set(g) for g in placement.colocate)
        self.sleeps = choose_sleep(config.rollout_sleep, placement.rollout.num_gpus > 0, colocated,
                                   config.rollout.engine)
        rollout = config.rollout
        if self.sleeps:
            rollout = dataclasses.replace(rollout, engine_options={**rollout.engine_options, "enable_sleep_mode": True})
        spec = WorkerSpec(model=str(model), store=str(store), rollout=rollout,
                          num_cpus=placement.rollout.num_cpus, num_gpus=placement.rollout.num_gpus)
        if placement.rollout.tensor_parallel_size > 1:
            spec.rollout = dataclasses.replace(spec.rollout, engine_options={
                **spec.rollout.engine_options, "tensor_parallel_size": placement.rollout.tensor_parallel_size})
        self.pool = RolloutPool(spec, num_workers=placement.rollout.count, captions=captions,
                                actor_options=lambda i: self.groups.actor_options("rollout", i))
        from longvideo_r1.rollout.weight_sync import choose_backend
        from longvideo_r1.trainer.weight_sync import WeightSync, choose_mode

        self.sync = WeightSync(self.learner, self.pool, choose_mode(config.weight_sync, on_gpu),
                               choose_backend(config.weight_sync_backend, on_gpu, colocated),
                               config.weight_sync_bucket_mb, config.weight_sync_timeout_s)
        if self.done:
            self.sync.push(self.done)
        # one reward actor sits in the role's bundle; several are scheduled freely (the service replaces
        # dead ones and must not wait for a bundle that is still held)
        reward = self.groups.actor_options("reward", 0) if placement.reward.count == 1 else {"num_cpus": 0.1}
        self.rewards = RewardService(num_workers=max(1, placement.reward.count), timeout_s=config.reward_timeout_s,
                                     scorer=config.reward_scorer, num_cpus=reward["num_cpus"],
                                     scheduling_strategy=reward.get("scheduling_strategy"))

    def _caption_source(self, config: RLConfig, store: str, placement, views):
        """None (each rollout worker opens the store's files) or the handles of caption_store actors
        started on the nodes that have the files (``rl.store_access``, decided by what every node sees)."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from longvideo_r1.cluster.paths import store_access
        from longvideo_r1.corpus.serving import CaptionStoreClient

        access, holders = store_access(config.store_access, store, views)
        if access == "local":
            return None
        # on the driver's node when it has the files (the usual place of a store on the head's disk)
        here = ray.get_runtime_context().get_node_id()
        holders = [here] if here in holders else holders[:1]
        self.store_client = CaptionStoreClient(
            store, num_actors=max(1, placement.caption_store.count), num_cpus=placement.caption_store.num_cpus or 0.1,
            actor_options=lambda a: {"scheduling_strategy": NodeAffinitySchedulingStrategy(holders[a % len(holders)],
                                                                                           soft=False)})
        log.info("caption store %s served by %d actor(s) on node %s", store, self.store_client.num_actors, holders[0])
        return self.store_client.handles()

    def rollout_config(self, validation: bool = False, refill_round: int = 0) -> RolloutConfig:
        """The configured rollout, sampled anew each step (and each refill round); validation is one
        greedy episode per question."""
        r = self.config.rollout
        if validation:
            return r.greedy(seed=r.seed + self.done)
        return dataclasses.replace(r, seed=r.seed + self.done + refill_round * REFILL_SEED_STRIDE)

    def before_first_step(self) -> dict:
        return self.validate() if self.config.val_every else {}

    def train_step(self) -> dict:
        """One RL step; returns its metrics (validation figures included when due)."""
        from longvideo_r1.rollout.episodes import to_batch
        from longvideo_r1.trainer.rl_batch import (
            add_advantages,
            episode_metrics,
            fill_groups,
            mask_overlong,
            penalise_overlong,
            reward_items,
            truncated,
        )

        c = self.config
        step = self.done
        timing = {"time/rollout_s": 0.0, "time/reward_s": 0.0}
        played: list[int] = []

        def play(round_: int, count: int):
            if round_ == 0:
                picked = question_order(len(self.train_questions), count, step, c.seed)
            else:
                picked = refill_order(len(self.train_questions), count, step, round_, c.seed, played)
            played.extend(picked)
            t = time.perf_counter()
            episodes = self.pool.rollout([self.train_questions[i] for i in picked],
                                         self.rollout_config(refill_round=round_), answer_rule=c.answer_rule)
            timing["time/rollout_s"] += time.perf_counter() - t
            t = time.perf_counter()
            rewards = self.rewards.score(reward_items(episodes))
            if c.overlong == "penalty":
                rewards = penalise_overlong(episodes, rewards, c.overlong_penalty)
            timing["time/reward_s"] += time.perf_counter() - t
            return episodes, rewards

        groups = fill_groups(play, c.questions_per_step, c.dynamic_sampling, c.max_refill_rounds)
        episodes, rewards = groups.kept, groups.kept_rewards
        if self.sleeps:        # the engines free their GPU memory while the learner computes and updates
            t = time.perf_counter()
            self.pool.sleep()
            timing["time/sleep_s"] = time.perf_counter() - t
        metrics = {"rollout/constant_groups": groups.constant_groups, "rollout/dropped_groups": groups.dropped_groups,
                   "rollout/kept_groups": groups.kept_groups, "rollout/refill_rounds": groups.refill_rounds,
                   "rollout/overlong_penalised": sum(1 for e in groups.played if truncated(e))
                   if c.overlong == "penalty" else 0, "rollout/overlong_masked": 0}
        t = time.perf_counter()
        batch = None
        if episodes:
            batch = to_batch(episodes, self.pad_id)
            values = None
            if c.learner.kl_coef > 0 or c.kl_in_reward > 0:
                batch["ref_logprobs"] = self.learner.ref_logprobs(batch)
            if self.estimator.needs_values:
                values = self.learner.values(batch)
            metrics.update(add_advantages(batch, [r["score"] for r in rewards], c, values=values))
            if c.overlong == "mask":
                metrics["rollout/overlong_masked"] = mask_overlong(batch, episodes)
        timing["time/prepare_s"] = time.perf_counter() - t
        skip = batch is None or int(batch["loss_mask"].sum()) == 0
        metrics["rollout/update_skipped"] = float(skip)
        if skip:
            # Nothing to train on: the weights stay as they are (no update, no sync), the step still counts.
            log.warning("rl step %d: no group left to train on (%d dropped, %d refill rounds); no update",
                        step + 1, groups.dropped_groups, groups.refill_rounds)
            self.skipped_updates += 1
            self.done = step + 1
            if self.sleeps:
                self.pool.wake()
        else:
            t = time.perf_counter()
            epochs = [self.learner.rl_step(batch) for _ in range(max(1, c.learner.ppo_epochs))]
            timing["time/update_s"] = time.perf_counter() - t
            t = time.perf_counter()
            self.done = step + 1
            if self.sleeps:
                self.pool.wake(["weights"])      # the weights' memory first: the sync loads into it
            metrics.update(self.sync.push(self.done))
            if self.sleeps:
                self.pool.wake(["kv_cache"])
            timing["time/weight_sync_s"] = time.perf_counter() - t
            # the drift of the first epoch, whose forward passes all ran on the weights the rollout sampled with
            for key in ("logprob_diff_mean", "logprob_diff_max"):
                metrics[f"rollout/{key}"] = epochs[0][key]
            metrics.update({f"learner/{k}": v for k, v in epochs[-1].items()
                            if isinstance(v, (int, float)) and not k.startswith("logprob_diff")})
        metrics.update(episode_metrics(groups.played, groups.played_rewards))
        metrics["rollout/worker_restarts"] = self.pool.restarts      # since the stage started
        sampled = sum(sum(e.response_mask) for e in groups.played)
        metrics["rollout/sampled_tokens_per_s"] = sampled / max(timing["time/rollout_s"], 1e-9)
        metrics.update(timing)
        metrics["time/step_s"] = sum(timing.values())
        self._write_samples(step, groups.played, groups.played_rewards)
        if (c.val_every and self.done % c.val_every == 0) or self.done == self.total_steps:
            metrics.update(self.validate())
        log.info("rl step %d/%d reward %.3f acc %.2f rounds %.1f (%.1f s)", self.done, self.total_steps,
                 metrics["rollout/reward_mean"], metrics["rollout/accuracy"], metrics["rollout/rounds"],
                 metrics["time/step_s"])
        return metrics

    def validate(self) -> dict:
        from longvideo_r1.trainer.rl_batch import episode_metrics, reward_items

        if not self.val_questions:
            return {}
        episodes = self.pool.rollout(self.val_questions, self.rollout_config(validation=True))
        rewards = self.rewards.score(reward_items(episodes))
        return episode_metrics(episodes, rewards, prefix="val")

    def _write_samples(self, step: int, episodes, rewards, keep: int = 2) -> None:
        samples = self.out / "samples"
        samples.mkdir(exist_ok=True)
        rows = [{"step": step, "qid": e.question.qid, "answer": e.answer, "truth": e.question.answer,
                 "reward": r, "finish": e.finish, "text": e.text} for e, r in list(zip(episodes, rewards))[:keep]]
        (samples / f"step{step:05d}.json").write_text(json.dumps(rows, indent=1))

    def checkpoint_due(self) -> bool:
        return bool(self.config.save_every and self.done % self.config.save_every == 0)

    def save(self, interrupted: bool = False) -> None:
        if interrupted:   # an update the learner finished after the interrupt counts as done (its rollout is not redone)
            updates = self.learner.step // max(1, self.config.learner.ppo_epochs)
            self.done = max(self.done, updates + self.skipped_updates)
        self.learner.save(str(self.ckpt), {"step": self.done, "skipped_updates": self.skipped_updates},
                          self.config.keep_last, self.config.keep_every,
                          save_hf=self.config.save_hf and not interrupted)

    def export(self, directory: Path) -> None:
        self.learner.export(str(directory))

    def summary(self, history: list[dict], seconds: float) -> dict:
        steps = [h for h in history if h["step"] >= 0]
        return {"model": str(self.out / "model"), "steps": self.total_steps, "algorithm": self.config.algorithm,
                "seconds": round(seconds, 1),
                "reward_first": steps[0]["rollout/reward_mean"] if steps else None,
                "reward_last": steps[-1]["rollout/reward_mean"] if steps else None,
                "accuracy_first": steps[0]["rollout/accuracy"] if steps else None,
                "accuracy_last": steps[-1]["rollout/accuracy"] if steps else None,
                "val": {k: v for k, v in (history[-1] if history else {}).items() if k.startswith("val/")}}

    def shutdown(self) -> None:
        if self.sync is not None:
            try:
                self.sync.close()
            except Exception as exc:   # shutting down must not hide the run's own outcome
                log.warning("closing the weight sync failed: %s", exc)
        for part in (self.pool, self.rewards, self.learner, self.store_client, self.groups):
            if part is None:
                continue
            try:
                part.shutdown() if hasattr(part, "shutdown") else part.remove()
            except Exception as exc:   # shutting down must not hide the run's own outcome
                log.warning("shutdown of %s failed: %s", type(part).__name__, exc)


def _estimator(name: str):
    from longvideo_r1.trainer.algos import advantage_estimator

    try:
        return advantage_estimator(name)
    except ValueError as exc:
        raise InputError(f"rl.algorithm: {exc}") from None


def train_rl(config: RLConfig, train_data, val_data, store, model, out_dir, log_metrics=None,
             stop_after: int | None = None, captions=None, placement=None, resume: bool = True) -> dict:
    """Run (or resume, or continue to more ``steps``) the RL stage; the final policy is exported to
    ``out_dir/model``. Returns the summary (with ``history``)."""
    from longvideo_r1.trainer.loop import run_training

    out = Path(out_dir)
    job = RLJob(config, train_data, val_data, store, model, out, captions=captions, placement=placement,
                resume=resume)
    return run_training(job, out, log_metrics, stop_after, postfix="rollout/reward_mean")
