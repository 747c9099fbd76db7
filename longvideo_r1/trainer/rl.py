"""The RL stage: a single controller that reads like a one-process program.

    for each step:
        questions  = the next questions_per_step training questions (seeded order, epoch by epoch)
        episodes   = rollout pool (vLLM workers, n samples per question, groups kept together)
        rewards    = reward service (answer + localisation F1 − repeat; a failing scorer is a logged 0)
        batch      = the rollout batch as the learner reads it (sampled tokens trained, observations masked)
        [ref]      = reference log-probs (KL loss / KL in reward)      [values] = the critic's (ppo)
        advantages = the estimator registered as rl.algorithm in trainer.algos (grpo, ppo/GAE)
        learner    = DeepSpeed update (clipped surrogate, KL, entropy, value loss)
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
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from longvideo_r1.errors import InputError
from longvideo_r1.rollout.episodes import RolloutConfig
from longvideo_r1.trainer.learner import LearnerConfig

log = logging.getLogger("longvideo_r1.rl")


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
    reward_timeout_s: float = 30.0
    reward_scorer: str | None = None
    """None: our compute_score; or "path/to/file.py:function" / "module:function" with verl's signature"""
    seed: int = 0
    """question order and the learner's seed (sampling: rollout.seed)"""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)


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
        self.pool = self.rewards = self.learner = self.groups = None
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

        # Reserve every role's resources up front (a clear error if the cluster lacks them).
        self.groups = create(plan(placement, ray.cluster_resources()), placement.timeout_s)
        learner_config = dataclasses.replace(config.learner, model=str(model), seed=config.seed,
                                             value_head=self.estimator.needs_values,
                                             total_steps=config.learner.total_steps or config.steps)
        self.learner = LearnerGroup(learner_config, **self.groups.learner_kwargs())
        self.ckpt = self.out / "checkpoints"
        self.done = 0
        if resume and (self.ckpt / "latest").is_file():
            self.done = self.learner.load(str(self.ckpt))["step"]
            log.info("RL resumed from %s at step %d", self.ckpt, self.done)
        spec = WorkerSpec(model=str(model), store=str(store), rollout=config.rollout,
                          num_cpus=placement.rollout.num_cpus, num_gpus=placement.rollout.num_gpus)
        if placement.rollout.tensor_parallel_size > 1:
            spec.rollout = dataclasses.replace(spec.rollout, engine_options={
                **spec.rollout.engine_options, "tensor_parallel_size": placement.rollout.tensor_parallel_size})
        self.pool = RolloutPool(spec, num_workers=placement.rollout.count, captions=captions,
                                actor_options=lambda i: self.groups.actor_options("rollout", i))
        if self.done:
            self.pool.update_weights(self.learner.publish_weights(), version=self.done)
        # one reward actor sits in the role's bundle; several are scheduled freely (the service replaces
        # dead ones and must not wait for a bundle that is still held)
        reward = self.groups.actor_options("reward", 0) if placement.reward.count == 1 else {"num_cpus": 0.1}
        self.rewards = RewardService(num_workers=max(1, placement.reward.count), timeout_s=config.reward_timeout_s,
                                     scorer=config.reward_scorer, num_cpus=reward["num_cpus"],
                                     scheduling_strategy=reward.get("scheduling_strategy"))

    def rollout_config(self, validation: bool = False) -> RolloutConfig:
        """The configured rollout, sampled anew each step; validation is one greedy episode per question."""
        r = self.config.rollout
        if validation:
            return r.greedy(seed=r.seed + self.done)
        return dataclasses.replace(r, seed=r.seed + self.done)

    def before_first_step(self) -> dict:
        return self.validate() if self.config.val_every else {}

    def train_step(self) -> dict:
        """One RL step; returns its metrics (validation figures included when due)."""
        from longvideo_r1.rollout.episodes import to_batch
        from longvideo_r1.trainer.rl_batch import add_advantages, episode_metrics, reward_items

        c = self.config
        step = self.done
        timing = {}
        t = time.perf_counter()
        picked = question_order(len(self.train_questions), c.questions_per_step, step, c.seed)
        episodes = self.pool.rollout([self.train_questions[i] for i in picked], self.rollout_config())
        timing["time/rollout_s"] = time.perf_counter() - t
        t = time.perf_counter()
        rewards = self.rewards.score(reward_items(episodes))
        timing["time/reward_s"] = time.perf_counter() - t
        t = time.perf_counter()
        batch = to_batch(episodes, self.pad_id)
        values = None
        if c.learner.kl_coef > 0 or c.kl_in_reward > 0:
            batch["ref_logprobs"] = self.learner.ref_logprobs(batch)
        if self.estimator.needs_values:
            values = self.learner.values(batch)
        metrics = add_advantages(batch, [r["score"] for r in rewards], c, values=values)
        timing["time/prepare_s"] = time.perf_counter() - t
        t = time.perf_counter()
        stats = {}
        for _ in range(max(1, c.learner.ppo_epochs)):
            stats = self.learner.rl_step(batch)
        timing["time/update_s"] = time.perf_counter() - t
        t = time.perf_counter()
        self.done = step + 1
        self.pool.update_weights(self.learner.publish_weights(), version=self.done)
        timing["time/weight_sync_s"] = time.perf_counter() - t
        metrics.update(episode_metrics(episodes, rewards))
        metrics.update({f"learner/{k}": v for k, v in stats.items() if isinstance(v, (int, float))})
        metrics["rollout/sampled_tokens_per_s"] = int(batch["loss_mask"].sum()) / max(timing["time/rollout_s"], 1e-9)
        metrics.update(timing)
        metrics["time/step_s"] = sum(timing.values())
        self._write_samples(step, episodes, rewards)
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
            self.done = max(self.done, self.learner.step // max(1, self.config.learner.ppo_epochs))
        self.learner.save(str(self.ckpt), {"step": self.done})

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
        for part in (self.pool, self.rewards, self.learner, self.groups):
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
