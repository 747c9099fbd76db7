"""The reward service on a real local Ray: same numbers as in-process, per-item errors and timeouts."""

from __future__ import annotations

import logging
import time

import pytest

from longvideo_r1.errors import InputError
from longvideo_r1.reward.score import RewardConfig, compute_score
from longvideo_r1.reward.service import RewardService

ZERO = {"score": 0.0, "answer_reward": 0.0, "f1_reward": 0.0, "repeat_reward": 0.0}


@pytest.fixture(scope="module")
def service(ray_local):
    svc = RewardService(num_workers=2, timeout_s=20.0)
    yield svc
    svc.shutdown()


def item(data_source="videocaption_cgbench", text="<answer>A</answer>", truth="A", clues=((10, 14),), width=4,
         duration=256.0) -> dict:
    return {"data_source": data_source, "solution_str": text, "ground_truth": truth,
            "extra_info": {"width": width, "duration": duration, "clue_intervals": [list(c) for c in clues]}}


def batch() -> list[dict]:
    calls = ["(1, 1)", "(1, 1, 3)", "(2, 1)", "(1, 1, 3)", "(4, 4, 4)"]
    out = []
    for n in range(1, len(calls) + 1):
        text = "".join(f"<think>t</think><tool>get_caption({c})</tool>" for c in calls[:n])
        out.append(item(text=text + f"<answer>{'AB'[n % 2]}</answer>"))
        out.append(item("lvr1_demo", text, "B", clues=((60, 70), (200, 230))))
        out.append(item("videocaption_videomme", text + "<answer>A</answer>", clues=()))
    return out


def direct(items, **kwargs) -> list[dict]:
    return [{**compute_score(i["data_source"], i["solution_str"], i["ground_truth"], i["extra_info"], **kwargs),
             "error": None} for i in items]


def test_batch_scores_equal_direct_scores_in_order(service):
    items = batch()
    assert service.score(items) == direct(items)
    assert service.score([]) == []


def test_a_config_reaches_the_scorer(ray_local):
    config = RewardConfig(w_answer=2.0, reference_compat=True)
    svc = RewardService(num_workers=1, config=config)
    try:
        assert svc.score(batch()) == direct(batch(), config=config)
    finally:
        svc.shutdown()


def test_an_item_the_scorer_rejects_gets_zero_and_an_error(service, caplog):
    items = batch()[:4]
    items.insert(2, item("mmlu"))
    items.insert(0, {"solution_str": "<answer>A</answer>"})
    with caplog.at_level(logging.WARNING, logger="longvideo_r1.reward"):
        out = service.score(items)
    assert out[0] == {**ZERO, "error": "the item lacks data_source, ground_truth"}
    assert out[3] == {**ZERO, "error": out[3]["error"]}
    assert out[3]["error"].startswith("InputError: data source 'mmlu' has no reward function")
    assert "\n" not in out[3]["error"]
    assert [r for k, r in enumerate(out) if k not in (0, 3)] == direct(batch()[:4])
    logged = [r.getMessage() for r in caplog.records if r.name == "longvideo_r1.reward"]
    assert len(logged) == 2 and "mmlu" in logged[1]


def test_a_raising_scorer_costs_only_its_item(ray_local):
    def flaky(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
        if ground_truth == "boom":
            raise ZeroDivisionError("the scorer divided by zero\nsecond line")
        return {"score": len(solution_str), "answer_reward": 1}

    svc = RewardService(num_workers=2, scorer=flaky)
    try:
        out = svc.score([item(text="x" * k, truth="boom" if k == 3 else "A") for k in range(6)])
    finally:
        svc.shutdown()
    assert out[3] == {**ZERO, "error": "ZeroDivisionError: the scorer divided by zero"}
    assert [r["score"] for r in out] == [0.0, 1.0, 2.0, 0.0, 4.0, 5.0]
    assert all(r["answer_reward"] == 1.0 and r["f1_reward"] == 0.0 for k, r in enumerate(out) if k != 3)


def test_a_hanging_scorer_times_out_and_its_worker_is_replaced(ray_local):
    def sleepy(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
        if ground_truth == "hang":
            time.sleep(3600)
        return float(solution_str == "<answer>A</answer>")

    svc = RewardService(num_workers=2, timeout_s=1.5, scorer=sleepy)
    try:
        items = [item(truth="hang" if k == 2 else "A") for k in range(7)]
        before = list(svc.workers)
        start = time.monotonic()
        out = svc.score(items)
        assert time.monotonic() - start < 30
        assert out[2] == {**ZERO, "error": "timed out after 1.5s"}
        # The items queued behind the stuck one on its worker were scored by the replacement.
        assert [r["score"] for k, r in enumerate(out) if k != 2] == [1.0] * 6
        assert sum(a != b for a, b in zip(before, svc.workers)) == 1
        # The next batch runs normally on the repaired service.
        assert [r["score"] for r in svc.score([item(), item(text="")])] == [1.0, 0.0]
    finally:
        svc.shutdown()


def test_a_scorer_given_as_a_file_and_function(ray_local, tmp_path):
    path = tmp_path / "my_reward.py"
    path.write_text("def length_reward(data_source, solution_str, ground_truth, extra_info=None, **kwargs):\n"
                    "    return {'score': len(solution_str) / 10, 'f1_reward': 0.5}\n")
    svc = RewardService(num_workers=1, scorer=f"{path}:length_reward")
    try:
        assert svc.score([item(text="x" * 7)]) == [{**ZERO, "score": 0.7, "f1_reward": 0.5, "error": None}]
    finally:
        svc.shutdown()
    # verl's way (custom_reward_function.path = this file) and the module way give the same numbers.
    for spec in ("longvideo_r1/reward/score.py:compute_score", "longvideo_r1.reward.score:compute_score"):
        module_svc = RewardService(num_workers=1, scorer=spec)
        try:
            assert module_svc.score(batch()[:3]) == direct(batch()[:3])
        finally:
            module_svc.shutdown()


@pytest.mark.parametrize("spec, match", [
    ("missing_file.py:f", "missing_file.py does not exist"),
    ("longvideo_r1.reward.score:no_such_function", "has no function 'no_such_function'"),
    ("no_colon_here", "give a callable"),
    ("not_a_module_xyz:f", "cannot load not_a_module_xyz"),
])
def test_a_scorer_that_cannot_be_loaded_is_an_input_error(ray_local, spec, match):
    with pytest.raises(InputError, match=match):
        RewardService(num_workers=1, scorer=spec)
