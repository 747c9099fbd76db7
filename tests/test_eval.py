"""`lvr1 eval`: benchmark loaders (one sample file per public format, built from the documented field
names), parallel resumable evaluation of several policies on a real caption store, metrics that agree
with the result lines, the report and its plots, and one-line errors."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from longvideo_r1.corpus import tree
from longvideo_r1.corpus.annotations import load_benchmark, parse_time_reference, split_inline_options
from longvideo_r1.errors import InputError
from longvideo_r1.eval import evaluate as runner
from longvideo_r1.eval.metrics import summarize_records
from longvideo_r1.eval.report import write_report
from longvideo_r1.eval.evaluate import default_label, parse_policy, read_results
from longvideo_r1.platform.cli import main


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# ====================================================================== loaders, one per format

LVBENCH_VIDEO = {
    "key": "vid_lv1", "type": "documentary",
    "video_info": {"duration_minutes": 70.1, "fps": 30.0},
    "qa": [
        {"uid": "101", "question": "What is written on the red sign?\n(A) STOP\n(B) EXIT\n(C) OPEN\n(D) SALE",
         "answer": "C", "question_type": ["entity recognition", "key information retrieval"],
         "time_reference": "01:14-01:20"},
        {"uid": "102", "question": "Who enters last?\n(A) a dog\n(B) a cat\n(C) a man\n(D) nobody",
         "answer": "a", "question_type": ["event understanding"], "time_reference": "1:02:03-1:02:10, 1:05:00-1:05:09"},
        {"uid": "103", "question": "What is the video about?\n(A) cooking\n(B) sport\n(C) music\n(D) travel",
         "answer": "D", "question_type": ["summarization"], "time_reference": ""},
    ],
}


def test_lvbench_meta_jsonl_maps_key_uid_inline_options_answer_types_and_time_reference(tmp_path):
    path = write_jsonl(tmp_path / "video_info.meta.jsonl", [LVBENCH_VIDEO])
    bench = load_benchmark(path)        # auto-detected
    assert bench.format == "lvbench" and bench.split == "all"
    q1, q2, q3 = bench.questions
    assert (q1.qid, q1.video_id, q1.question) == ("101", "vid_lv1", "What is written on the red sign?")
    assert q1.options == ["STOP", "EXIT", "OPEN", "SALE"] and q1.answer == "C"
    assert q1.task_type == "entity recognition"
    assert bench.tasks_of(q1) == ("entity recognition", "key information retrieval")
    assert q1.clue_intervals == [[74.0, 80.0]]
    assert q2.answer == "A" and q2.clue_intervals == [[3723.0, 3730.0], [3900.0, 3909.0]]
    assert q3.clue_intervals is None        # empty time_reference: no clues, not an error
    assert q1.data_source == "lvbench"


def test_lvbench_flat_rows_as_the_reference_evaluation_reads_them(tmp_path):
    rows = [{"key": "vid_lv2", "uid": "7", "question": "Q?\n(A) x\n(B) y\n(C) z\n(D) w", "answer": "B"}]
    bench = load_benchmark(write_jsonl(tmp_path / "lvbench_flat.jsonl", rows), "lvbench")
    (q,) = bench.questions
    assert (q.qid, q.video_id, q.question, q.options, q.answer) == ("7", "vid_lv2", "Q?", ["x", "y", "z", "w"], "B")


def videomme_rows():
    base = {"domain": "Knowledge", "sub_category": "Humanity & History", "url": "https://www.youtube.com/watch?v=x"}
    return [
        {**base, "video_id": "001", "duration": "short", "videoID": "fFjv93ACGo8", "question_id": "001-1",
         "task_type": "Counting Problem", "question": "How many?", "options": ["A. 1", "B. 2", "C. 3", "D. 4"],
         "answer": "B"},
        {**base, "video_id": "601", "duration": "long", "videoID": "K-3xy_9Zq1a", "question_id": "601-1",
         "task_type": "Temporal Reasoning", "question": "What happens first?",
         "options": ["A. a talk", "B. a song", "C. a dance", "D. a game"], "answer": "D"},
        {**base, "video_id": "601", "duration": "long", "videoID": "K-3xy_9Zq1a", "question_id": "601-2",
         "task_type": "Object Recognition", "question": "What is red?",
         "options": ["A. a car", "B. a hat", "C. a door", "D. a cup"], "answer": "A"},
    ]


def test_videomme_parquet_keeps_the_long_videos_by_default_and_strips_option_letters(tmp_path):
    path = write_parquet(tmp_path / "test-00000-of-00001.parquet", videomme_rows())
    bench = load_benchmark(path)
    assert bench.format == "videomme" and bench.split == "long"
    assert [q.qid for q in bench.questions] == ["601-1", "601-2"]
    q = bench.questions[0]
    assert (q.video_id, q.question, q.answer, q.task_type) == ("K-3xy_9Zq1a", "What happens first?", "D",
                                                                "Temporal Reasoning")
    assert q.options == ["a talk", "a song", "a dance", "a game"]
    assert q.clue_intervals is None and q.data_source == "videocaption_videomme"
    assert [q.qid for q in load_benchmark(path, split="all").questions] == ["001-1", "601-1", "601-2"]
    assert [q.qid for q in load_benchmark(path, split="short").questions] == ["001-1"]
    with pytest.raises(InputError, match="no questions in split 'medium'"):
        load_benchmark(path, split="medium")
    with pytest.raises(InputError, match="split 'test' is not in benchmark .*choose all, short, medium, long"):
        load_benchmark(path, split="test")


def test_mlvu_json_with_answer_text_and_lmms_eval_rows_with_inline_options(tmp_path):
    original = [{"video": "movie101_66.mp4", "duration": 400, "question": "What does the man hold?",
                 "candidates": ["a cup", "a book", "a phone", "a key"], "answer": "a phone",
                 "question_type": "plotQA"}]
    bench = load_benchmark(write_jsonl(tmp_path / "1_plotQA.jsonl", original), "mlvu")
    (q,) = bench.questions
    assert (q.video_id, q.answer, q.task_type, q.options) == ("movie101_66", "C", "plotQA",
                                                              ["a cup", "a book", "a phone", "a key"])
    assert q.qid == "movie101_66:1" and q.data_source == "mlvu"

    lmms = [{"video_name": "needle_32.mp4", "duration": 512.0, "question_id": "needle_32_0",
             "question": "What colour is the bag?\n(A) red\n(B) blue\n(C) green\n(D) black",
             "candidates": ["red", "blue", "green", "black"], "answer": "(B) blue", "task_type": "needle"}]
    (q,) = load_benchmark(write_parquet(tmp_path / "mlvu_dev.parquet", lmms)).questions
    assert (q.video_id, q.question, q.answer, q.task_type, q.qid) == ("needle_32", "What colour is the bag?", "B",
                                                                      "needle", "needle_32_0")


CGBENCH_ROWS = [
    {"qid": 4021, "video_uid": "cg_a1b2", "question": "What is on the table?",
     "choices": ["a vase", "a lamp", "a clock", "a plate", "a book"], "answer": "a clock", "right_answer": "C",
     "clue_intervals": [[12.0, 15.5], [20.0, 22.0]], "domain": "Life Record", "sub_category": "Daily Life",
     "duration": 1830.2},
]


def test_cgbench_maps_uid_choices_right_answer_clues_and_sub_category(tmp_path):
    path = tmp_path / "cgbench_mini.json"
    path.write_text(json.dumps(CGBENCH_ROWS))
    (q,) = load_benchmark(path).questions
    assert (q.qid, q.video_id, q.answer, q.task_type) == ("4021", "cg_a1b2", "C", "Daily Life")
    assert q.options == ["a vase", "a lamp", "a clock", "a plate", "a book"]
    assert q.clue_intervals == [[12.0, 15.5], [20.0, 22.0]] and q.data_source == "videocaption_cgbench"


def test_demo_questions_take_the_split_from_the_rows_or_splits_json(tmp_path):
    rows = [{"qid": "d0", "video_id": "v0", "question": "Q0?", "options": ["a", "b", "c", "d"], "answer": "A",
             "clue_intervals": [[1, 2]], "task_type": "count"},
            {"qid": "d1", "video_id": "v1", "question": "Q1?", "options": ["a", "b", "c", "d"], "answer": "B",
             "task_type": "text_detail", "split": "train"}]
    write_jsonl(tmp_path / "questions.jsonl", rows)
    (tmp_path / "splits.json").write_text(json.dumps({"train": ["v1"], "test": ["v0"]}))
    bench = load_benchmark(tmp_path)        # a corpus folder
    assert bench.format == "lvr1" and bench.split == "test" and [q.qid for q in bench.questions] == ["d0"]
    assert bench.questions[0].clue_intervals == [[1.0, 2.0]]
    assert [q.qid for q in load_benchmark(tmp_path, split="all").questions] == ["d0", "d1"]


def test_inline_options_and_time_references():
    assert split_inline_options("Q?\n(A) x\n(B) y") == ("Q?", ["x", "y"])
    assert split_inline_options("Q?\nA. x\nB. y\nC. z") == ("Q?", ["x", "y", "z"])
    assert split_inline_options("Just a question?") == ("Just a question?", [])
    assert parse_time_reference("00:15-00:19") == [[15.0, 19.0]]
    assert parse_time_reference("not a time") is None and parse_time_reference(None) is None


@pytest.mark.parametrize("fmt, rows, row_where, field", [
    ("cgbench", [{**CGBENCH_ROWS[0], "right_answer": None, "answer": None}], "row 1", "'right_answer'"),
    ("cgbench", [CGBENCH_ROWS[0], {**CGBENCH_ROWS[0], "qid": 9, "right_answer": "F"}], "row 2", "'right_answer'"),
    ("cgbench", [{**CGBENCH_ROWS[0], "clue_intervals": [[5, 1]]}], "row 1", "clue_intervals[0]"),
    ("cgbench", [{**CGBENCH_ROWS[0], "choices": "a, b"}], "row 1", "'choices'"),
    ("videomme", [{**videomme_rows()[1], "videoID": None}], "row 1", "'videoID'"),
    ("videomme", [{**videomme_rows()[1], "duration": "huge"}], "row 1", "'duration'"),
    ("mlvu", [{"video": "x.mp4", "question": "Q?", "candidates": ["a", "b"], "answer": "c"}], "row 1", "'answer'"),
    ("demo", [{"video_id": "v", "question": "Q?", "options": ["a", "b"]}], "row 1", "'answer'"),
    ("demo", [{"video_id": "../etc", "question": "Q?", "options": ["a", "b"], "answer": "A"}], "row 1", "'video_id'"),
])
def test_a_bad_or_missing_field_names_the_file_the_row_and_the_field(tmp_path, fmt, rows, row_where, field):
    path = tmp_path / f"{fmt}.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(InputError) as exc:
        load_benchmark(path, fmt, split="all")
    message = str(exc.value)
    assert f"{path} {row_where}" in message and field in message, message


def test_lvbench_errors_name_the_line_and_the_question_in_it(tmp_path):
    bad = {**LVBENCH_VIDEO, "qa": [LVBENCH_VIDEO["qa"][0], {"uid": "9", "question": "No options here?", "answer": "A"}]}
    path = write_jsonl(tmp_path / "video_info.meta.jsonl", [bad])
    with pytest.raises(InputError, match=r"line 1 qa 2: field 'question' has no option lines"):
        load_benchmark(path)


def test_duplicate_question_ids_unknown_formats_and_missing_files_are_refused(tmp_path):
    path = tmp_path / "cg.json"
    path.write_text(json.dumps([CGBENCH_ROWS[0], CGBENCH_ROWS[0]]))
    with pytest.raises(InputError, match="question id '4021' appears twice"):
        load_benchmark(path)
    with pytest.raises(InputError, match="benchmark format 'egoschema' is unknown"):
        load_benchmark(path, "egoschema")
    with pytest.raises(InputError, match="no such file"):
        load_benchmark(tmp_path / "missing.jsonl")
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"foo": 1}])
    with pytest.raises(InputError, match="cannot tell the benchmark format .*pass --format"):
        load_benchmark(odd)


def test_policy_labels():
    assert parse_policy("random") == runner.PolicySpec("random", "random")
    assert parse_policy("r1=openai:longvideo-r1@http://127.0.0.1:8000/v1?x=1") == runner.PolicySpec(
        "r1", "openai:longvideo-r1@http://127.0.0.1:8000/v1?x=1")
    assert parse_policy("openai:m@http://h/v1?a=b").label == "openai-m"
    assert default_label("local:runs/sft/checkpoint-3/") == "local-checkpoint-3"


def test_summaries_count_a_question_toward_each_of_its_task_types():
    def record(qid, correct, tasks, f1):
        return {"qid": qid, "answer": "A", "correct": correct, "task_types": tasks, "rounds": 3,
                "calls": {"get_caption": 2, "video_qa": 1, "invalid": 0}, "visited_fraction": 0.5, "f1": f1,
                "reward": 1.0, "costs": {"model_seconds": 2.0, "policy_seconds": 1.5, "video_qa_seconds": 0.5}}
    m = summarize_records([record("a", True, ["x", "y"], 0.5), record("b", False, ["y"], None)])
    assert m["accuracy"] == 0.5 and m["accuracy_per_task"] == {"x": 1.0, "y": 0.5}
    assert m["questions_per_task"] == {"x": 1, "y": 2} and m["f1"] == 0.5 and m["f1_questions"] == 1
    assert m["calls"] == 3 and m["model_seconds"] == 2.0


# ====================================================================== end to end on a real store

@pytest.fixture(scope="module")
def store(demo_store):
    return demo_store


@pytest.fixture(scope="module")
def test_rows(demo_corpus):
    return [r for r in demo_corpus.questions() if r["split"] == "test"]


def run_cli(capsys, *argv) -> tuple[int, dict | None, str]:
    rc = main(["eval", *map(str, argv)])
    captured = capsys.readouterr()
    return rc, (json.loads(captured.out) if rc in (0, 1) and captured.out.strip() else None), captured.err


def is_png(path) -> bool:
    from PIL import Image

    with Image.open(path) as im:
        im.verify()
        return im.format == "PNG" and im.size[0] > 100 and im.size[1] > 50


@pytest.mark.slow
def test_two_baselines_side_by_side_with_metrics_from_the_result_lines_and_a_report(demo_corpus, store, test_rows,
                                                                                    tmp_path, capsys):
    out = tmp_path / "results"
    rc, summary, err = run_cli(capsys, "--policy", "oracle", "--policy", "rnd=random", "--benchmark",
                               demo_corpus.root / "questions.jsonl", "--store", store, "--out", out, "--workers", 2)
    assert rc == 0, err
    assert summary["split"] == "test" and summary["questions"] == len(test_rows) and summary["failed"] == 0
    for label in ("oracle", "rnd"):
        records = read_results(out / f"{label}.jsonl")
        m = summary["policies"][label]
        assert sorted(r["qid"] for r in records) == sorted(r["qid"] for r in test_rows)
        assert m["played"] == len(test_rows) and m["skipped_existing"] == 0 and 1 <= m["instances"] <= 2
        n = len(records)
        assert math.isclose(m["accuracy"], sum(r["correct"] for r in records) / n)
        assert math.isclose(m["rounds"], sum(r["rounds"] for r in records) / n)
        assert math.isclose(m["get_caption_calls"], sum(r["calls"]["get_caption"] for r in records) / n)
        assert math.isclose(m["video_qa_calls"], sum(r["calls"]["video_qa"] for r in records) / n)
        assert math.isclose(m["f1"], sum(r["f1"] for r in records) / n)
        assert math.isclose(m["reward"], sum(r["reward"] for r in records) / n)
        assert math.isclose(m["model_seconds"], sum(r["costs"]["model_seconds"] for r in records) / n)
        for r in records:
            assert r["correct"] == (r["answer"] == r["truth"]) and r["rounds"] == len(r["trace"])
            assert r["calls"]["get_caption"] == len(r["visited"]) == r["costs"]["get_caption_calls"]
            # the reward is compute_score on the episode's text; its terms agree with the structured record
            assert r["reward_terms"]["answer_reward"] == float(r["correct"])
            assert math.isclose(r["reward_terms"]["f1_reward"], r["f1"], abs_tol=1e-9)
            spans = tree_union(r["visited"], r["width"], r["duration"])
            assert math.isclose(r["visited_fraction"], spans / r["duration"])
            assert math.isclose(r["costs"]["model_seconds"],
                                r["costs"]["policy_seconds"] + r["costs"]["video_qa_seconds"])
    assert summary["policies"]["oracle"]["accuracy"] == 1.0        # answer_from="truth", as in test_baselines
    assert summary["policies"]["rnd"]["get_caption_calls"] == 10    # RandomPolicy's default budget
    assert summary["policies"]["oracle"]["f1"] > summary["policies"]["rnd"]["f1"]

    # the report: both policies, every task type present, valid PNGs; write_report returns the same numbers
    text = (out / "report.md").read_text()
    tasks = {r["task_type"] for r in test_rows}
    for task in tasks:
        assert f"| {task} |" in text
    assert "| oracle | `oracle` |" in text and "| rnd | `random` |" in text
    assert set(summary["plots"]) >= {"accuracy_vs_calls", "per_task_accuracy", "navigation_1"}
    assert all(is_png(p) for p in summary["plots"].values())
    again = write_report(out, tmp_path / "report2")
    assert again["metrics"]["oracle"]["accuracy"] == 1.0 and set(again["per_task"]) == tasks
    assert again["report"].is_file() and all(p.is_file() for p in again["plots"].values())


def tree_union(visited, width, duration) -> float:
    spans = sorted(tree.segment_interval(tuple(ids), width, duration) for ids in visited)
    total, end = 0.0, -1.0
    for a, b in spans:
        total += max(0.0, b - max(a, end))
        end = max(end, b)
    return total


@pytest.mark.slow
def test_a_rerun_plays_only_the_questions_an_interrupted_run_left(demo_corpus, store, test_rows, tmp_path, capsys,
                                                                  monkeypatch):
    played = []
    real = runner.make_policy

    class Counting:
        """Records every episode a policy instance starts, then lets the real baseline play it."""

        def __init__(self, spec):
            self.inner = real(spec)
            self.name = self.inner.name

        def act(self, episode, tools):
            if episode.round == 1:
                played.append(episode.question.qid)
            return self.inner.act(episode, tools)

    monkeypatch.setattr(runner, "make_policy", Counting)

    out = tmp_path / "results"
    args = ["--policy", "random", "--benchmark", demo_corpus.root / "questions.jsonl", "--store", store,
            "--out", out, "--no-report"]
    rc, summary, err = run_cli(capsys, *args, "--limit", 3)
    assert rc == 0, err
    first = (out / "random.jsonl").read_text().splitlines()
    assert len(first) == 3 and sorted(played) == sorted(r["qid"] for r in test_rows[:3])

    # a crash mid-write leaves half a line; the rerun cuts it off and plays everything not finished
    with open(out / "random.jsonl", "a") as fh:
        fh.write('{"qid": "' + test_rows[3]["qid"] + '", "answ')
    played.clear()
    rc, summary, err = run_cli(capsys, *args, "--workers", 2)
    assert rc == 0, err
    assert sorted(played) == sorted(r["qid"] for r in test_rows[3:])       # nothing done is played again
    lines = (out / "random.jsonl").read_text().splitlines()
    assert lines[:3] == first and len(lines) == len(test_rows)            # earlier lines untouched
    assert summary["policies"]["random"]["skipped_existing"] == 3 and summary["policies"]["random"]["played"] == 5
    assert summary["policies"]["random"]["questions"] == len(test_rows)

    played.clear()
    rc, summary, err = run_cli(capsys, *args)
    assert rc == 0 and played == [] and summary["policies"]["random"]["played"] == 0

    rc, _, err = run_cli(capsys, *args, "--max-rounds", 10)
    assert rc == 2 and "other settings (max_rounds 30 -> 10)" in err


@pytest.mark.slow
def test_other_formats_run_end_to_end_and_the_reward_follows_the_data_source(demo_corpus, store, test_rows,
                                                                             tmp_path, capsys):
    # CG-Bench rows (clue intervals) and Video-MME rows (none) written from the demo's test questions
    cg = [{"qid": r["qid"], "video_uid": r["video_id"], "question": r["question"], "choices": r["options"],
           "right_answer": r["answer"], "clue_intervals": r["clue_intervals"], "sub_category": r["task_type"]}
          for r in test_rows]
    (tmp_path / "cg.json").write_text(json.dumps(cg))
    rc, summary, err = run_cli(capsys, "--policy", "oracle", "--benchmark", tmp_path / "cg.json", "--store", store,
                               "--out", tmp_path / "cg", "--no-report", "--video-qa", "none")
    assert rc == 0, err
    assert summary["format"] == "cgbench" and summary["policies"]["oracle"]["accuracy"] == 1.0

    mme = [{"videoID": r["video_id"], "question_id": r["qid"], "duration": "long", "task_type": r["task_type"],
            "question": r["question"], "options": [f"{'ABCD'[i]}. {o}" for i, o in enumerate(r["options"])],
            "answer": r["answer"]} for r in test_rows]
    path = write_parquet(tmp_path / "mme.parquet", mme)
    rc, _, err = run_cli(capsys, "--policy", "oracle", "--benchmark", path, "--store", store, "--out", tmp_path / "o")
    assert rc == 2 and "have none" in err and len(err.strip().splitlines()) == 1
    rc, summary, err = run_cli(capsys, "--policy", "random", "--benchmark", path, "--store", store,
                               "--out", tmp_path / "mme", "--no-report", "--limit", 2)
    assert rc == 0, err
    for r in read_results(tmp_path / "mme" / "random.jsonl"):
        assert r["data_source"] == "videocaption_videomme" and r["f1"] is None
        assert r["reward"] == float(r["correct"]) and r["reward_terms"]["f1_reward"] == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing benchmark", "unknown format", "missing store", "video not in store",
                                  "unknown policy"])
def test_input_errors_exit_2_with_one_line(demo_corpus, store, tmp_path, capsys, case):
    questions = demo_corpus.root / "questions.jsonl"
    argv = {"missing benchmark": ["--policy", "random", "--benchmark", tmp_path / "nope.jsonl", "--store", store],
            "unknown format": ["--policy", "random", "--benchmark", questions, "--store", store,
                               "--format", "egoschema"],
            "missing store": ["--policy", "random", "--benchmark", questions, "--store", tmp_path / "no-store"],
            "video not in store": ["--policy", "random", "--benchmark", tmp_path / "cg.json", "--store", store],
            "unknown policy": ["--policy", "psychic", "--benchmark", questions, "--store", store]}[case]
    (tmp_path / "cg.json").write_text(json.dumps([{**CGBENCH_ROWS[0], "video_uid": "not_captioned"}]))
    rc, _, err = run_cli(capsys, *argv, "--out", tmp_path / "out")
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("lvr1: error: "), err
    expected = {"missing benchmark": "nope.jsonl: no such file", "unknown format": "'egoschema' is unknown",
                "missing store": "no-store: no such folder", "video not in store": "not_captioned",
                "unknown policy": "'psychic' is unknown"}[case]
    assert expected in lines[0]
    if case == "video not in store":
        assert "lvr1 captions build" in lines[0]
    assert not (tmp_path / "out" / "random.jsonl").exists()


@pytest.mark.slow
def test_a_served_model_plays_many_episodes_at_once(demo_corpus, store, test_rows, tmp_path, capsys):
    from tests.chat_server import ChatServer

    def handler(request):     # read one low caption, then answer A (stop strings stripped, as vLLM does)
        rounds = sum(1 for m in request.messages if m["role"] == "assistant")
        return ("<think>Read a clip.</think><tool>get_caption((1,1,1))" if rounds == 0
                else "<think>Enough.</think><answer>A")

    with ChatServer(handler=handler, delay=0.05) as srv:
        rc, summary, err = run_cli(capsys, "--policy", f"llm=openai:test-model@{srv.base_url}", "--benchmark",
                                   demo_corpus.root / "questions.jsonl", "--store", store, "--out", tmp_path / "r",
                                   "--workers", 3, "--video-qa", "none", "--no-report")
        in_flight = srv.max_in_flight
    assert rc == 0, err
    assert in_flight >= 2                                   # episodes really ran side by side
    m = summary["policies"]["llm"]
    assert m["played"] == len(test_rows) and 1 <= m["instances"] <= 3 and m["rounds"] == 2
    for r in read_results(tmp_path / "r" / "llm.jsonl"):
        assert r["visited"] == [[1, 1, 1]] and r["answer"] == "A" and r["correct"] == (r["truth"] == "A")
        assert r["costs"]["policy_seconds"] > 0.05          # the model's time is measured per call


@pytest.mark.slow
def test_a_failing_question_is_reported_the_others_are_kept_and_a_rerun_retries_it(demo_corpus, store, test_rows,
                                                                                   tmp_path, capsys, monkeypatch):
    real = runner.make_policy
    broken = test_rows[1]["qid"]

    class Flaky:
        name = "flaky"

        def __init__(self, spec):
            self.inner = real(spec)

        def act(self, episode, tools):
            if episode.question.qid == broken:
                raise InputError("llm policy: http://127.0.0.1:9/v1 failed: connection refused")
            return self.inner.act(episode, tools)

    monkeypatch.setattr(runner, "make_policy", Flaky)
    args = ["--policy", "random", "--benchmark", demo_corpus.root / "questions.jsonl", "--store", store,
            "--out", tmp_path / "r", "--no-report", "--workers", 2]
    rc, summary, err = run_cli(capsys, *args)
    assert rc == 1 and summary["failed"] == 1
    assert f"lvr1: error: policy random, question {broken}: llm policy:" in err
    assert len(read_results(tmp_path / "r" / "random.jsonl")) == len(test_rows) - 1

    monkeypatch.setattr(runner, "make_policy", real)
    rc, summary, err = run_cli(capsys, *args)
    assert rc == 0 and summary["policies"]["random"]["played"] == 1
    assert sorted(r["qid"] for r in read_results(tmp_path / "r" / "random.jsonl")) == sorted(
        r["qid"] for r in test_rows)
