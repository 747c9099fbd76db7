"""A clean RL signal: which answer counts, groups without signal, overlong episodes, rollout/learner drift.

The first part drives real episodes, the reward and the batch helpers on the CPU; the second runs an
RL job on real actors (vLLM rollout worker, reward service, DeepSpeed learner) with a tiny random Qwen3.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from longvideo_r1.agent.episode import EpisodeConfig, Question
from longvideo_r1.errors import InputError
from longvideo_r1.reward.score import compute_score
from longvideo_r1.rollout.episodes import RolloutConfig, to_batch
from longvideo_r1.trainer.learner import LearnerConfig, StepStats
from longvideo_r1.trainer.learner_group import merge_stats
from longvideo_r1.trainer.rl import RLConfig, refill_order
from longvideo_r1.trainer.rl_batch import (
    episode_metrics,
    fill_groups,
    mask_overlong,
    penalise_overlong,
    split_constant_groups,
)
from tests.test_rl_batch import episode

# vid_a of the rollout store: 1500 s, width 5, so segment (1, 1) spans 0–60 s and holds the clue.
CLUE = [[10.0, 50.0]]
EXTRA = {"width": 5, "duration": 1500.0, "clue_intervals": CLUE}
MALFORMED_ANSWER = "<answer>B</answer>"                 # no <think>: the rules reject the round
CALL = "<think>Look at part one.</think><tool>get_caption((1,1))</tool>"
NO_ACTION = "<think>Still unsure.</think>"


def question() -> Question:
    return Question("vid_a", "What colour is the circle?", ["red", "blue", "green", "gray"], "B", CLUE, "q")


def play(tools, rule: str, *texts: str, max_rounds: int = 3):
    """A real episode driven round by round the way the rollout runner does (malformed rounds kept)."""
    ep = tools.start(question(), EpisodeConfig(max_rounds=max_rounds, keep_malformed=True, answer_rule=rule))
    for text in texts:
        if ep.done:
            break
        ep.prompt()
        action = ep.submit(text)
        if action.kind in ("get_caption", "video_qa"):
            ep.observe(*tools.run(ep.question.video_id, action))
    return ep


# --------------------------------------------------------------------------- which answer counts


def test_an_answer_in_a_rejected_round_earns_nothing_under_the_valid_rule(rollout_tools):
    ep = play(rollout_tools, "valid", MALFORMED_ANSWER, CALL, NO_ACTION)
    assert ep.done and ep.answer is None and ep.costs.invalid_rounds == 2 and len(ep.turns) == 3
    scored = compute_score("lvr1_demo", ep.solution_str(accepted_only=True), "B", EXTRA)
    assert scored["answer_reward"] == 0.0
    assert scored["f1_reward"] > 0          # the accepted get_caption((1,1)) still localises the clue
    # the whole transcript would pay for the rejected answer: what the valid rule stops
    assert compute_score("lvr1_demo", ep.solution_str(), "B", EXTRA)["answer_reward"] == 1.0


def test_the_reference_rule_ends_the_episode_at_a_malformed_answer_and_scores_it(rollout_tools):
    ep = play(rollout_tools, "reference", CALL, MALFORMED_ANSWER, CALL)
    assert ep.done and ep.answer == "B" and ep.correct and len(ep.turns) == 2
    assert ep.turns[-1].action.kind == "invalid" and ep.costs.invalid_rounds == 1
    scored = compute_score("lvr1_demo", ep.solution_str(), "B", EXTRA)
    assert scored["answer_reward"] == 1.0 and scored["f1_reward"] > 0
    # the valid rule plays on past the same round, and its accepted text holds no answer
    valid = play(rollout_tools, "valid", CALL, MALFORMED_ANSWER, CALL)
    assert len(valid.turns) == 3 and valid.answer is None and not valid.correct
    assert compute_score("lvr1_demo", valid.solution_str(accepted_only=True), "B", EXTRA)["answer_reward"] == 0.0


def test_the_reference_rule_reads_an_answer_only_in_a_round_without_a_tool_call(rollout_tools):
    # an answer quoted beside a (malformed) tool call does not end the episode, as on the reference server
    both = "<tool>get_caption((1,1))</tool><answer>B</answer>"
    ep = play(rollout_tools, "reference", both, NO_ACTION, max_rounds=3)
    assert not ep.done and ep.answer is None and ep.costs.invalid_rounds == 2
    # a valid answer round ends the episode the same way under both rules
    for rule in ("valid", "reference"):
        ep = play(rollout_tools, rule, CALL, "<think>Blue.</think><answer>C</answer>")
        assert ep.done and ep.answer == "C" and ep.costs.invalid_rounds == 0


def test_unknown_rules_and_negative_limits_are_refused_naming_the_key():
    cases = [(dict(answer_rule="lenient"), "rl.answer_rule", "valid, reference"),
             (dict(overlong="drop"), "rl.overlong", "keep, mask, penalty"),
             (dict(max_refill_rounds=-1), "rl.max_refill_rounds", "0 or more"),
             (dict(overlong_penalty=-0.5), "rl.overlong_penalty", "0 or more"),
             (dict(dynamic_sampling=True, algorithm="ppo"), "rl.dynamic_sampling", "grpo")]
    for kwargs, key, allowed in cases:
        with pytest.raises(InputError) as err:
            RLConfig(**kwargs)
        assert key in str(err.value) and allowed in str(err.value), kwargs
    with pytest.raises(InputError, match="valid, reference"):
        EpisodeConfig(answer_rule="lenient")


# --------------------------------------------------------------------------- groups without signal


def scored_group(group: int, scores: list[float], finish: str = "answer"):
    return [episode(group, k, 3, [(2, 0)], finish=finish) for k in range(len(scores))], \
        [{"score": s, "answer_reward": s, "f1_reward": 0.0, "repeat_reward": 0.0} for s in scores]


def test_only_groups_whose_samples_all_scored_the_same_are_dropped():
    episodes, scores = [], []
    for g, s in enumerate([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.2, 0.2, 0.2 + 1e-12], [0.5, 0.5, 0.49], [0.7]]):
        e, r = scored_group(g, s)
        episodes += e
        scores += [x["score"] for x in r]
    kept, dropped = split_constant_groups(episodes, scores)
    assert sorted(dropped) == [0, 2]                    # equal, and equal within float noise
    assert [episodes[i].group for i in kept] == [1, 1, 1, 3, 3, 3, 4]   # a lone sample is scored against 0: kept


class QuestionBank:
    """A real ``play`` function over a fixed table: question k's samples score ``table[k]``.
    Round 0 plays questions 0.., each refill round the next unplayed ones."""

    def __init__(self, table: list[list[float]]):
        self.table, self.next, self.calls = table, 0, []

    def __call__(self, round_: int, count: int):
        picked = list(range(self.next, self.next + count))
        self.next += count
        self.calls.append((round_, picked))
        episodes, rewards = [], []
        for g, k in enumerate(picked):
            e, r = scored_group(g, self.table[k])
            episodes += e
            rewards += r
        return episodes, rewards


def test_dynamic_sampling_refills_with_new_questions_until_the_groups_are_full():
    bank = QuestionBank([[1, 1], [0, 1], [0, 0], [1, 1], [1, 0], [0, 0], [0, 1], [1, 1]])
    out = fill_groups(bank, groups=3, dynamic_sampling=True, max_refill_rounds=3)
    # round 0: q0 q1 q2 keep one; round 1: two new, q3 q4 keep one; round 2: q5 dropped; round 3: q6 kept
    assert bank.calls == [(0, [0, 1, 2]), (1, [3, 4]), (2, [5]), (3, [6])]
    assert out.kept_groups == 3 and out.dropped_groups == 4 and out.refill_rounds == 3
    assert len(out.played) == 14 and len(out.kept) == 6
    groups = [e.group for e in out.played]
    assert len(set(groups)) == 7                        # ids stay unique across rounds
    assert [e.group for e in out.kept] == [1, 1, 4, 4, 6, 6]
    assert [r["score"] for r in out.kept_rewards] == [0, 1, 1, 0, 0, 1]


def test_dynamic_sampling_stops_at_the_refill_limit_and_may_keep_nothing():
    bank = QuestionBank([[1, 1]] * 10)
    out = fill_groups(bank, groups=2, dynamic_sampling=True, max_refill_rounds=2)
    assert [r for r, _ in bank.calls] == [0, 1, 2] and out.refill_rounds == 2
    assert out.kept == [] and out.kept_groups == 0 and out.dropped_groups == 6 and len(out.played) == 12
    alone = fill_groups(QuestionBank([[1, 1]] * 2), groups=2, dynamic_sampling=True, max_refill_rounds=0)
    assert alone.refill_rounds == 0 and alone.dropped_groups == 2


def test_without_dynamic_sampling_every_group_is_kept_and_the_constant_ones_counted():
    bank = QuestionBank([[1, 1], [0, 1]])
    out = fill_groups(bank, groups=2)
    assert bank.calls == [(0, [0, 1])] and len(out.kept) == 4
    assert out.constant_groups == 1 and out.dropped_groups == 0 and out.refill_rounds == 0


def test_refill_questions_are_seeded_by_step_and_round_and_new_to_the_step():
    first = refill_order(20, 4, step=7, round_=1, seed=3, played=[0, 1, 2, 3])
    assert first == refill_order(20, 4, step=7, round_=1, seed=3, played=[0, 1, 2, 3])   # a resumed run agrees
    assert not set(first) & {0, 1, 2, 3} and len(set(first)) == 4
    assert first != refill_order(20, 4, step=7, round_=2, seed=3, played=[0, 1, 2, 3])
    assert first != refill_order(20, 4, step=8, round_=1, seed=3, played=[0, 1, 2, 3])
    # a small data set repeats the step's questions only once the new ones run out
    assert sorted(refill_order(5, 4, step=0, round_=1, seed=0, played=[0, 1, 2])[:2]) == [3, 4]


# --------------------------------------------------------------------------- overlong episodes


def test_overlong_mask_zeroes_exactly_the_truncated_rows_after_the_advantages():
    episodes = [episode(0, 0, 3, [(2, 4), (3, 0)]), episode(0, 1, 3, [(4, 0)], finish="budget"),
                episode(1, 0, 5, [(1, 2), (2, 0)], finish="max_rounds", answer=None), episode(1, 1, 5, [(6, 0)])]
    batch = to_batch(episodes, 0)
    before = batch["loss_mask"].clone()
    assert mask_overlong(batch, episodes) == 2
    assert (batch["loss_mask"][[1, 2]] == 0).all() and before[[1, 2]].sum() > 0
    assert torch.equal(batch["loss_mask"][[0, 3]], before[[0, 3]])


def test_overlong_penalty_takes_the_configured_amount_off_truncated_episodes_only():
    episodes, rewards = scored_group(0, [1.0, 0.25])
    cut, _ = scored_group(1, [1.0, 0.25], finish="budget")
    rounds, _ = scored_group(2, [0.0], finish="max_rounds")
    out = penalise_overlong(episodes + cut + rounds, rewards * 2 + [rewards[0]], 0.3)
    assert [r["score"] for r in out] == pytest.approx([1.0, 0.25, 0.7, -0.05, 0.7])
    assert [r["overlong_penalty"] for r in out] == [0.0, 0.0, 0.3, 0.3, 0.3]
    assert rewards[0]["score"] == 1.0                   # the service's rewards are not changed in place


def test_step_metrics_give_the_shares_of_valid_calls_invalid_rounds_and_truncated_episodes():
    a = episode(0, 0, 3, [(2, 0)] * 4)
    a.costs = {"rounds": 4, "get_caption_calls": 2, "video_qa_calls": 1, "invalid_rounds": 1}
    b = episode(0, 1, 3, [(2, 0)] * 2, finish="budget", answer=None)
    b.costs = {"rounds": 2, "get_caption_calls": 0, "video_qa_calls": 0, "invalid_rounds": 2}
    rewards = [{"score": 1.0, "answer_reward": 1.0, "f1_reward": 0.0, "repeat_reward": 0.0}] * 2
    m = episode_metrics([a, b], rewards, prefix="val")
    assert m["val/valid_tool_call_share"] == pytest.approx(3 / 6)
    assert m["val/invalid_round_share"] == pytest.approx(3 / 6)
    assert m["val/truncated_share"] == pytest.approx(0.5)


def test_drift_statistics_are_token_weighted_across_ranks_and_the_max_is_the_largest():
    # each rank reports its share of the step's token mean (its tokens / all tokens) and its own max
    ranks = [StepStats(tokens=30, extra={"logprob_diff_mean": 0.1 * 30 / 40, "logprob_diff_max": 0.4}),
             StepStats(tokens=10, extra={"logprob_diff_mean": 0.5 * 10 / 40, "logprob_diff_max": 0.9})]
    merged = merge_stats(ranks)
    assert merged["logprob_diff_mean"] == pytest.approx(0.2) and merged["logprob_diff_max"] == 0.9


# --------------------------------------------------------------------------- on real actors


@pytest.fixture(scope="module")
def ray4():
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_every_micro_batch_of_a_step_is_scored_with_the_weights_before_its_update(ray4, tiny_qwen3_dir):
    """The drift of a learner against its own log-probs is float noise in every step, also when the
    number of micro-batches changes from one step to the next (a row per micro-batch here)."""
    from longvideo_r1.trainer.learner_group import LearnerGroup
    from tests.test_learner import sft_batch

    group = LearnerGroup(LearnerConfig(model=str(tiny_qwen3_dir), lr=1e-2, dtype="float32", micro_batch_tokens=39))
    try:
        drifts = []
        for seed, rows in enumerate((3, 2, 2, 1, 3)):
            batch = sft_batch(seed, rows=rows)
            batch["old_logprobs"] = group.logprobs(batch)
            batch["advantages"] = torch.tensor([1.0, -1.0, 0.5][:rows])[:, None] * batch["loss_mask"].float()
            drifts.append(group.rl_step(batch)["logprob_diff_max"])
        moved = (group.logprobs(batch) - batch["old_logprobs"]).abs().max().item()
    finally:
        group.shutdown()
    assert max(drifts) < 1e-5, drifts
    assert moved > 1e-2                  # the steps did change the weights


@pytest.fixture(scope="module")
def rl_job(ray4, tmp_path_factory, rollout_tools, tiny_qwen3_dir):
    """An RL job on a tiny random Qwen3 whose rollout (vLLM) and learner both run in float32. Its
    episodes never answer, so every reward is 0 and every group constant."""
    from longvideo_r1.trainer.rl import RLJob
    from longvideo_r1.trainer.rl_data import rl_rows, write_rl_parquet
    from longvideo_r1.trainer.splits import episode_config
    from tests.navigator import question as nav_question

    root = tmp_path_factory.mktemp("rl-signal")
    qs = [nav_question("vid_a" if i % 2 == 0 else "vid_b", f"q{i}") for i in range(4)]
    write_rl_parquet(rl_rows(qs, rollout_tools, episode_config(2), "train"), root / "train.parquet")
    config = RLConfig(steps=100, questions_per_step=2, val_every=0, save_every=0,
                      rollout=RolloutConfig(engine="vllm", video_qa="none", n=2, max_rounds=2, max_turn_tokens=16,
                                            max_response_tokens=512, temperature=1.0,
                                            engine_options={"max_model_len": 4096, "dtype": "float32"}),
                      learner=LearnerConfig(lr=1e-2, dtype="float32", micro_batch_tokens=1200))
    job = RLJob(config, root / "train.parquet", None, rollout_tools.captions.root, tiny_qwen3_dir, root / "rl",
                resume=False)
    yield job
    job.shutdown()


def drift(learner, batch) -> tuple[float, float]:
    """The token mean and max of |learner log-prob − rollout log-prob| over the sampled tokens, from
    a separate forward pass (not the one rl_step reports from)."""
    mask = batch["loss_mask"].bool()
    diff = (learner.logprobs(batch) - batch["old_logprobs"]).abs()[mask]
    return float(diff.mean()), float(diff.max())


@pytest.mark.slow
def test_logprob_drift_is_near_zero_after_a_weight_sync_and_large_when_the_sync_is_skipped(rl_job):
    job = rl_job
    first = job.train_step()
    assert first["rollout/logprob_diff_mean"] < 1e-3 and first["rollout/update_skipped"] == 0.0
    assert first["rollout/logprob_diff_max"] >= first["rollout/logprob_diff_mean"]
    assert "learner/logprob_diff_mean" not in first

    # An update the rollout worker never receives. Adam's first steps move each weight by about lr = 1e-2,
    # half the scale of the tiny model's N(0, 0.02) weights: the sampled tokens' log-probs move by far
    # more than the 1e-3 float32 noise between vLLM and the learner.
    questions = job.train_questions[:2]
    batch = to_batch(job.pool.rollout(questions, job.rollout_config()), job.pad_id)
    batch["advantages"] = torch.where(batch["group"][:, None] == 0, 1.0, -1.0) * batch["loss_mask"]
    job.learner.rl_step(batch)

    stale = to_batch(job.pool.rollout(questions, job.rollout_config()), job.pad_id)
    assert len(stale["input_ids"]) * stale["attention_mask"].sum(-1).max() > 1200   # several micro-batches
    expected_mean, expected_max = drift(job.learner, stale)
    stale["advantages"] = torch.zeros_like(stale["old_logprobs"])
    stats = job.learner.rl_step(stale)
    assert expected_mean > 1e-2
    assert stats["logprob_diff_mean"] == pytest.approx(expected_mean, rel=1e-3)
    assert stats["logprob_diff_max"] == pytest.approx(expected_max, rel=1e-3)

    # the job's own step rolls out with the stale weights too, and then syncs
    behind = job.train_step()
    assert behind["rollout/logprob_diff_mean"] > 1e-2
    synced = job.train_step()
    assert synced["rollout/logprob_diff_mean"] < 1e-3


@pytest.mark.slow
def test_a_step_that_keeps_no_group_makes_no_update_and_says_so(rl_job):
    job = rl_job
    probe = to_batch(job.pool.rollout(job.train_questions[:1], job.rollout_config().greedy()), job.pad_id)
    before, updates, done = job.learner.logprobs(probe), job.learner.step, job.done
    original = job.config
    try:
        job.config = dataclasses.replace(original, dynamic_sampling=True, max_refill_rounds=1, overlong="penalty",
                                         overlong_penalty=0.25)
        m = job.train_step()
        # every group scored 0 − 0.25 alike: 2 dropped, one refill round of 2 new questions, also dropped
        assert (m["rollout/dropped_groups"], m["rollout/kept_groups"], m["rollout/refill_rounds"]) == (4, 0, 1)
        assert m["rollout/update_skipped"] == 1.0 and m["rollout/reward_mean"] == pytest.approx(-0.25)
        assert m["rollout/truncated_share"] == 1.0 and m["rollout/overlong_penalised"] == 8
        assert m["rollout/invalid_round_share"] == 1.0 and m["rollout/valid_tool_call_share"] == 0.0
        assert "learner/loss" not in m and "rollout/logprob_diff_mean" not in m

        job.config = dataclasses.replace(original, overlong="mask")
        m = job.train_step()
        # without dynamic sampling both groups are kept, but every episode ran out of rounds: all masked
        assert m["rollout/kept_groups"] == 2 and m["rollout/overlong_masked"] == 4
        assert m["rollout/update_skipped"] == 1.0
    finally:
        job.config = original
    assert job.done == done + 2 and job.learner.step == updates and job.skipped_updates >= 2
    assert torch.equal(job.learner.logprobs(probe), before)          # the weights did not move
