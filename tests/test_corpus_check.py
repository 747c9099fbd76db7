"""`lvr1 corpus check`: every annotation row read, every referenced video probed (real H.264 files and a
real camera clip, decoded by decord), every problem listed with its row, qid and field; splits by
video; the cleaned annotation file in the input's own format; the normalized corpus folder the
training pipeline reads."""

from __future__ import annotations

import json
import pickle
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from longvideo_r1.agent.episode import Question
from longvideo_r1.corpus.annotations import AnnotationError, load_benchmark
from longvideo_r1.corpus.check import assign_splits, check_corpus, write_clean, write_corpus
from longvideo_r1.errors import InputError
from longvideo_r1.platform.cli import main
from longvideo_r1.trainer.splits import load_corpus_split
from tests.media import encode_ramp, packaged_clips

RAMP_FRAMES, RAMP_FPS = 80, 4          # 20 s; the caption tree of width 4 needs 64 frames
RAMP_IDS = [f"ramp_{i}" for i in range(6)]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Six real 20 s H.264 clips, one with subtitles, a real camera clip, a too-short clip and a broken file."""
    folder = tmp_path_factory.mktemp("videos")
    for video_id in RAMP_IDS:
        encode_ramp(folder / f"{video_id}.mp4", frames=RAMP_FRAMES, fps=RAMP_FPS)
    (folder / "ramp_0.srt").write_text("1\n00:00:01,000 --> 00:00:03,000\nhello\n")
    encode_ramp(folder / "short.mp4", frames=20, fps=RAMP_FPS)
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    bikes = [c for c in packaged_clips() if c.name == "bikes.mp4"]
    if bikes:
        shutil.copy(bikes[0], folder / "bikes.mp4")
    return folder


def cg_row(qid, video="ramp_0", **changes):
    row = {"qid": qid, "video_uid": video, "question": f"What happens in {qid}?",
           "choices": ["a red ball", "a blue box", "a green cup", "a white cat"], "right_answer": "B",
           "clue_intervals": [[2.0, 6.5]], "task_type": "event" if str(qid).endswith(("0", "2", "4")) else "count"}
    row.update(changes)
    return row


def good_rows():
    return [cg_row(f"{v}_q{k}", v) for v in RAMP_IDS for k in range(3)]


def write_json(path, rows):
    path.write_text(json.dumps(rows))
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def problems_of(report):
    return [(p.qid, p.field) for p in report.problems]


# ====================================================================== the clean case

def test_a_clean_cgbench_corpus_has_no_problem_and_a_full_summary(videos, tmp_path, capsys):
    rows = good_rows()
    if (videos / "bikes.mp4").exists():        # a real camera clip: 250 frames at 25 fps
        rows.append(cg_row("bikes_q0", "bikes", clue_intervals=[[2.0, 9.9]], task_type="ocr"))
    ann = write_json(tmp_path / "cgbench.json", rows)
    report = check_corpus(videos, ann)
    assert report.ok and report.problems == [] and report.format == "cgbench"
    assert len(report.questions) == len(rows) and all(isinstance(q, Question) for q in report.questions)
    assert report.videos["ramp_0"]["has_subtitles"] and not report.videos["ramp_1"]["has_subtitles"]
    assert report.videos["ramp_1"]["duration"] == 20.0 and report.videos["ramp_1"]["num_frames"] == RAMP_FRAMES
    assert report.videos["ramp_1"]["fps"] == RAMP_FPS and report.videos["ramp_1"]["width"] == 4
    summary = report.summary()
    assert summary["videos"] == len(report.videos) and summary["questions"] == len(rows)
    assert summary["with_clue_intervals"] == 1.0 and summary["problems"] == 0
    assert sum(summary["questions_per_split"].values()) == len(rows)
    assert summary["questions_per_task"]["event"] == 12 and summary["questions_per_task"]["count"] == 6
    assert summary["videos_without_questions"] == 2                    # short.mp4 and broken.mp4

    capsys.readouterr()
    assert main(["corpus", "check", "--videos", str(videos), "--annotations", str(ann)]) == 0
    out = capsys.readouterr().out
    assert f"questions: {len(rows)}: train" in out
    assert "per task type: event 12, count 6" in out and "with clue intervals: 100.0%" in out
    assert "hours" in out and out.rstrip().endswith("problems: none")


# ====================================================================== one test per problem kind

@pytest.mark.parametrize("bad, field, words", [
    (cg_row("x1", "no_such_video"), "video_uid", "no video file for id 'no_such_video'"),
    (cg_row("x1", "broken"), "video_uid", "cannot be decoded"),
    (cg_row("x1", "short", clue_intervals=[[1, 2]]), "video_uid", "too few for a caption tree"),
    (cg_row("x1", clue_intervals=[[15.0, 20.3]]), "clue_intervals", "lies outside the video"),
    (cg_row("x1", clue_intervals=[[21.0, 25.0]]), "clue_intervals", "lies outside the video"),
    (cg_row("x1", clue_intervals=[[5.0, 5.0]]), "clue_intervals", "0 <= start < end"),
    (cg_row("x1", clue_intervals=[[6.0, 4.0]]), "clue_intervals", "0 <= start < end"),
    (cg_row("x1", clue_intervals=[["1:00", 4.0]]), "clue_intervals", "each clue is [start, end]"),
    (cg_row("x1", clue_intervals="0-5"), "clue_intervals", "list of [start, end] pairs"),
    (cg_row("x1", choices=["only one"], right_answer="A"), "choices", "has 1 options; a question needs 2 to 10"),
    (cg_row("x1", choices=[f"o{i}" for i in range(11)]), "choices", "has 11 options"),
    (cg_row("x1", right_answer="E"), "right_answer", "not among the 4 options"),
    (cg_row("x1", video="../etc/passwd"), "video_uid", "is not allowed"),
    (cg_row("x1", question="  "), "question", "must be non-empty text"),
    ({k: v for k, v in cg_row("x1").items() if k != "choices"}, "choices", "missing field 'choices'"),
])
def test_each_problem_names_the_question_the_field_and_the_row(videos, tmp_path, bad, field, words):
    rows = good_rows()[:4] + [bad] + good_rows()[4:6]
    report = check_corpus(videos, write_json(tmp_path / "cg.json", rows))
    assert problems_of(report) == [("x1", field)], [p.line() for p in report.problems]
    problem = report.problems[0]
    assert words in problem.message and problem.where == f"{tmp_path / 'cg.json'} row 5"
    assert "x1" not in {q.qid for q in report.questions} and len(report.questions) == 6


def test_a_clue_may_end_within_one_frame_after_the_video(videos, tmp_path):
    rows = [cg_row("x1", clue_intervals=[[15.0, 20.2]]), cg_row("x2", "ramp_1", clue_intervals=[[0, 20.0]])]
    assert check_corpus(videos, write_json(tmp_path / "cg.json", rows)).ok


def test_a_duplicate_question_id_is_a_problem_at_every_row_that_uses_it(videos, tmp_path):
    rows = good_rows()[:3] + [cg_row("ramp_0_q1", "ramp_1")]
    report = check_corpus(videos, write_json(tmp_path / "cg.json", rows))
    assert problems_of(report) == [("ramp_0_q1", "qid"), ("ramp_0_q1", "qid")]
    assert "is used 2 times (also at" in report.problems[0].message
    assert [q.qid for q in report.questions] == ["ramp_0_q0", "ramp_0_q2"]


def test_every_problem_is_collected_not_only_the_first_and_a_video_is_probed_once(videos, tmp_path, monkeypatch):
    from longvideo_r1.corpus import check

    probed = []
    real = check.probe_video
    monkeypatch.setattr(check, "probe_video", lambda path, video_id: probed.append(video_id) or real(path, video_id))
    rows = [cg_row("a", right_answer="Z"), cg_row("b", "nope"), *good_rows(), cg_row("c", choices="x, y"),
            cg_row("d", "short")]
    ann = tmp_path / "cg.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    report = check_corpus(videos, ann)
    assert problems_of(report) == [("a", "right_answer"), ("b", "video_uid"), ("c", "choices"), ("d", "video_uid"),
                                   (None, None)]
    last = report.problems[-1]
    assert last.where == f"{ann} line {len(rows) + 1}" and "not valid JSON" in last.message
    assert sorted(probed) == sorted({*RAMP_IDS, "short"})       # 18 questions share six videos
    assert len(report.questions) == 18


def test_without_probing_only_the_files_are_looked_for(videos, tmp_path):
    rows = [*good_rows()[:3], cg_row("b", "broken"), cg_row("m", "missing"), cg_row("c", clue_intervals=[[3, 99]])]
    report = check_corpus(videos, write_json(tmp_path / "cg.json", rows), probe=False)
    assert problems_of(report) == [("m", "video_uid")]
    assert report.videos["ramp_0"]["duration"] is None and report.summary()["hours"] is None
    with pytest.raises(InputError, match="without probing"):
        write_corpus(report, tmp_path / "corpus")


def test_load_benchmark_still_raises_the_first_problem_as_a_structured_input_error(tmp_path):
    path = write_json(tmp_path / "cg.json", [cg_row("a"), cg_row("b", right_answer="Q"), cg_row("c", question="")])
    with pytest.raises(AnnotationError) as exc:
        load_benchmark(path)
    assert isinstance(exc.value, InputError)
    assert (exc.value.qid, exc.value.field, exc.value.where) == ("b", "right_answer", f"{path} row 2")
    assert str(exc.value) == f"{path} row 2: {exc.value.message}"
    copy = pickle.loads(pickle.dumps(exc.value))
    assert (copy.qid, copy.field, copy.where, str(copy)) == ("b", "right_answer", f"{path} row 2", str(exc.value))


def test_our_format_is_lvr1_and_demo_is_another_name_for_it(tmp_path):
    rows = [{"qid": "d0", "video_id": "v0", "question": "Q?", "options": ["a", "b"], "answer": "A", "split": "test"}]
    path = write_jsonl(tmp_path / "questions.jsonl", rows)
    assert load_benchmark(path).format == "lvr1" and load_benchmark(path, "demo").format == "lvr1"


# ====================================================================== LVBench and MLVU

def lvbench_row(key, items):
    return {"key": key, "type": "documentary", "video_info": {"duration_minutes": 0.3, "fps": 4.0}, "qa": items}


def lv_qa(uid, answer="B", time_reference="00:02-00:06"):
    return {"uid": uid, "question": f"Q{uid}?\n(A) one\n(B) two\n(C) three\n(D) four", "answer": answer,
            "question_type": ["entity recognition", "temporal grounding"], "time_reference": time_reference}


def test_lvbench_rows_are_checked_question_by_question_and_cleaned_keeping_the_valid_ones(videos, tmp_path):
    rows = [lvbench_row("ramp_0", [lv_qa("1"), lv_qa("2", answer="F"), lv_qa("3", time_reference="00:10-00:45")]),
            lvbench_row("ramp_1", [lv_qa("4", time_reference=""), lv_qa("5", time_reference="soon")]),
            lvbench_row("gone", [lv_qa("6")])]
    ann = write_jsonl(tmp_path / "video_info.meta.jsonl", rows)
    report = check_corpus(videos, ann)
    assert report.format == "lvbench"
    assert problems_of(report) == [("2", "answer"), ("3", "time_reference"), ("5", "time_reference"), ("6", "key")]
    assert report.problems[0].where == f"{ann} line 1 qa 2"
    assert [q.qid for q in report.questions] == ["1", "4"]
    assert report.task_types["1"] == ("entity recognition", "temporal grounding")
    assert report.summary()["with_clue_intervals"] == 0.5

    out = tmp_path / "clean" / "video_info.meta.jsonl"
    written = write_clean(report, ann, out)
    assert (written["kept"], written["dropped"], written["rows_kept"], written["rows_dropped"]) == (2, 4, 2, 1)
    cleaned = [json.loads(line) for line in out.read_text().splitlines()]
    assert [[qa["uid"] for qa in r["qa"]] for r in cleaned] == [["1"], ["4"]]
    assert cleaned[0]["video_info"] == rows[0]["video_info"]          # the rest of the row is kept as it was
    again = check_corpus(videos, out)
    assert again.ok and [q.qid for q in again.questions] == ["1", "4"]


def test_mlvu_parquet_with_file_names_and_answer_texts_stays_parquet_when_cleaned(videos, tmp_path):
    rows = [{"video_name": f"{v}.mp4", "question_id": f"m{k}", "question": "What colour?",
             "candidates": ["red", "blue", "green"], "answer": "blue", "task_type": "needle", "duration": 20.0}
            for k, v in enumerate(RAMP_IDS[:4])]
    rows.append({**rows[0], "question_id": "m9", "answer": "purple"})
    rows.append({**rows[0], "question_id": "m10", "video_name": "missing.mp4"})
    ann = tmp_path / "mlvu_dev.parquet"
    pq.write_table(pa.Table.from_pylist(rows), ann)
    report = check_corpus(videos, ann)
    assert report.format == "mlvu" and problems_of(report) == [("m9", "answer"), ("m10", "video_name")]
    assert {q.video_id for q in report.questions} == set(RAMP_IDS[:4]) and report.questions[1].answer == "B"
    assert report.summary()["with_clue_intervals"] == 0.0
    out = write_clean(report, ann, tmp_path / "clean.parquet")["out"]
    table = pq.read_table(out)
    assert table.num_rows == 4 and table.schema == pq.read_schema(ann)
    assert check_corpus(videos, out).ok


# ====================================================================== --drop-invalid, --json, exit codes

def test_drop_invalid_writes_a_json_list_that_checks_clean_and_exit_codes_follow(videos, tmp_path, capsys):
    rows = [*good_rows()[:6], cg_row("bad1", right_answer="Z"), cg_row("bad2", "missing"),
            cg_row("bad3", clue_intervals=[[3, 99]])]
    ann = write_json(tmp_path / "cg.json", rows)
    out = tmp_path / "cg.clean.json"
    capsys.readouterr()
    assert main(["corpus", "check", "--videos", str(videos), "--annotations", str(ann),
                 "--drop-invalid", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "problems: 3" in printed and f"wrote {out}: kept 6 questions, dropped 3" in printed
    assert f"{ann} row 7: qid bad1: field right_answer: field 'right_answer' is 'Z'" in printed
    cleaned = json.loads(out.read_text())
    assert isinstance(cleaned, list) and cleaned == rows[:6]
    assert main(["corpus", "check", "--videos", str(videos), "--annotations", str(out)]) == 0
    assert main(["corpus", "check", "--videos", str(videos), "--annotations", str(ann), "--drop-invalid",
                 str(tmp_path / "wrong.jsonl")]) == 2
    assert "give the output the same extension (.json)" in capsys.readouterr().err


def test_json_prints_one_object_with_counts_summary_and_every_problem(videos, tmp_path, capsys):
    rows = [*good_rows()[:6], cg_row("bad1", choices=["a"]), cg_row("bad2", "short")]
    ann = write_json(tmp_path / "cg.json", rows)
    capsys.readouterr()
    assert main(["corpus", "check", "--videos", str(videos), "--annotations", str(ann), "--json"]) == 1
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1
    data = json.loads(out)
    assert data["videos"] == 2 and data["questions"] == 6 and data["problem_count"] == 2
    assert data["format"] == "cgbench" and data["rows"] == 8 and data["hours"] == round(40 / 3600, 3)
    assert set(data["questions_per_split"]) <= {"train", "val", "test"} and data["with_clue_intervals"] == 1.0
    assert [set(p) for p in data["problems"]] == [{"qid", "field", "message", "where"}] * 2
    assert [(p["qid"], p["field"], p["where"]) for p in data["problems"]] == [
        ("bad1", "choices", f"{ann} row 7"), ("bad2", "video_uid", f"{ann} row 8")]
    assert sorted(v for vs in data["splits"].values() for v in vs) == ["ramp_0", "ramp_1"]


@pytest.mark.parametrize("argv, words", [
    (["--annotations", "{tmp}/none.json"], "give --videos DIR --annotations FILE"),
    (["--videos", "{videos}", "--annotations", "{tmp}/none.json"], "none.json: no such file"),
    (["--videos", "{tmp}/no_dir", "--annotations", "{tmp}/cg.json"], "not a directory"),
    (["--videos", "{videos}", "--annotations", "{tmp}/cg.json", "--val", "0.6", "--test", "0.5"], "leave no video"),
    (["--videos", "{videos}", "--annotations", "{tmp}/odd.json"], "cannot tell the annotation format"),
    (["--videos", "{videos}", "--annotations", "{tmp}/list.json"], "not valid JSON"),
])
def test_input_errors_are_one_line_with_exit_2(videos, tmp_path, capsys, argv, words):
    write_json(tmp_path / "cg.json", good_rows()[:3])
    write_json(tmp_path / "odd.json", [{"foo": 1}])
    (tmp_path / "list.json").write_text("[{\"qid\": 1,")
    capsys.readouterr()
    args = [a.format(tmp=tmp_path, videos=videos) for a in argv]
    assert main(["corpus", "check", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lvr1: error:") and words in err[0], err


def test_the_config_names_the_corpus_and_a_demo_source_has_nothing_to_check(videos, tmp_path, capsys):
    ann = write_json(tmp_path / "cg.json", [*good_rows()[:6], cg_row("bad", right_answer="Z")])
    config = tmp_path / "corpus.yaml"
    config.write_text(f"corpus:\n  source: folder\n  path: {videos}\n  annotations: {ann}\n  format: cgbench\n"
                      "  splits: {val: 0.0, test: 0.5, seed: 3}\n"
                      "captions:\n  captioner: offline\ndata:\n  video_qa: offline\n"
                      "rl:\n  rollout:\n    video_qa: offline\n")
    capsys.readouterr()
    assert main(["corpus", "check", "--config", str(config), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["problem_count"] == 1 and data["videos_per_split"] == {"train": 1, "test": 1}
    assert main(["corpus", "check", "--config", str(config), "--set", "corpus.source=demo"]) == 0
    assert "nothing to check" in capsys.readouterr().out


# ====================================================================== splits by video

def test_assign_splits_is_by_whole_videos_deterministic_and_gives_each_split_a_video():
    ids = [f"v{i:02d}" for i in range(20)]
    first = assign_splits(reversed(ids), 0.1, 0.1, seed=0)
    assert first == assign_splits(ids, 0.1, 0.1, seed=0)                       # sorted, then a seeded shuffle
    assert sorted(first) == ids and sorted(first.values()).count("val") == 2
    assert sorted(first.values()).count("test") == 2 and sorted(first.values()).count("train") == 16
    assert assign_splits(ids, 0.1, 0.1, seed=1) != first
    three = assign_splits(["a", "b", "c"], 0.1, 0.1, seed=0)
    assert sorted(three.values()) == ["test", "train", "val"]
    assert set(assign_splits(["a", "b", "c"], 0.0, 0.1, seed=0).values()) == {"train", "test"}
    assert assign_splits(["a", "b"], 0.1, 0.1, seed=0) == {"a": "train", "b": "train"}
    assert set(assign_splits(["a", "b", "c", "d"], 0.5, 0.45, seed=0).values()) == {"train", "val", "test"}


def test_check_splits_by_video_from_the_spec(videos, tmp_path):
    ann = write_json(tmp_path / "cg.json", good_rows())
    report = check_corpus(videos, ann, splits={"val": 0.2, "test": 0.2, "seed": 5})
    assert report.split_source == "spec"
    by_video = {}
    for q in report.questions:
        by_video.setdefault(q.video_id, set()).add(report.split_of[q.qid])
    assert all(len(s) == 1 for s in by_video.values())                       # no video in two splits
    assert {v: s.pop() for v, s in by_video.items()} == assign_splits(RAMP_IDS, 0.2, 0.2, 5)
    assert check_corpus(videos, ann, splits={"val": 0.2, "test": 0.2, "seed": 5}).split_of == report.split_of
    assert report.summary()["videos_per_split"] == {"train": 4, "val": 1, "test": 1}


def test_a_splits_json_beside_the_annotations_wins_over_the_spec(videos, tmp_path):
    ann = write_json(tmp_path / "cg.json", good_rows())
    listed = {"train": RAMP_IDS[:3], "val": RAMP_IDS[3:4], "test": RAMP_IDS[4:]}
    (tmp_path / "splits.json").write_text(json.dumps(listed))
    report = check_corpus(videos, ann)
    assert report.ok and report.split_source == "splits.json" and report.videos_of_split() == listed
    listed["train"].remove("ramp_2")
    listed["val"].append("ramp_0")
    (tmp_path / "splits.json").write_text(json.dumps(listed))
    report = check_corpus(videos, ann)
    assert {p.field for p in report.problems} == {"split"} and len(report.problems) == 6
    assert any("is in splits train, val" in p.message for p in report.problems)
    assert any("is in no split" in p.message for p in report.problems)


def test_a_split_field_per_row_is_honoured_and_a_video_in_two_splits_is_a_problem(videos, tmp_path):
    rows = [{**r, "split": "test" if r["video_uid"] == "ramp_5" else "train"} for r in good_rows()]
    (tmp_path / "splits.json").write_text(json.dumps({"train": RAMP_IDS}))       # the rows win over it
    report = check_corpus(videos, write_json(tmp_path / "cg.json", rows))
    assert report.ok and report.split_source == "rows"
    assert report.videos_of_split() == {"train": RAMP_IDS[:5], "test": ["ramp_5"]}
    rows[0]["split"] = "val"
    report = check_corpus(videos, write_json(tmp_path / "cg.json", rows))
    assert problems_of(report) == [(f"ramp_0_q{k}", "split") for k in range(3)]
    assert "questions in splits train, val" in report.problems[0].message


# ====================================================================== the normalized corpus folder

def test_write_corpus_makes_a_folder_the_training_pipeline_reads(videos, tmp_path):
    rows = [*good_rows(), cg_row("bad", "missing")]
    report = check_corpus(videos, write_json(tmp_path / "cg.json", rows), splits={"val": 0.2, "test": 0.2, "seed": 1})
    out = tmp_path / "corpus"
    summary = write_corpus(report, out)
    assert summary["questions"] == 18 and summary["videos"] == 6
    splits = json.loads((out / "splits.json").read_text())
    assert splits == report.videos_of_split()
    train = load_corpus_split(out, "train")
    assert {r["video_id"] for r in train} == set(splits["train"]) and len(train) == 3 * len(splits["train"])
    assert {r["qid"] for r in load_corpus_split(out, "test")} == {f"{v}_q{k}" for v in splits["test"] for k in range(3)}
    row = train[0]
    assert set(row) >= {"qid", "video_id", "question", "options", "answer", "clue_intervals", "task_type", "split",
                        "data_source"}
    q = Question.from_row(row)
    assert q.answer == "B" and q.clue_intervals == [[2.0, 6.5]] and q.data_source == "videocaption_cgbench"
    manifest = json.loads((out / "corpus.json").read_text())
    assert manifest["source"] == "folder" and manifest["format"] == "cgbench"
    entry = next(v for v in manifest["videos"] if v["video_id"] == "ramp_0")
    assert entry["path"] == str((videos / "ramp_0.mp4").resolve()) and entry["duration"] == 20.0
    assert entry["num_frames"] == RAMP_FRAMES and entry["fps"] == RAMP_FPS and entry["has_subtitles"]
    assert sorted(v["video_id"] for v in manifest["videos"]) == RAMP_IDS          # only videos with questions
    assert sorted(p.name for p in (out / "videos").iterdir()) == sorted([f"{v}.mp4" for v in RAMP_IDS] + ["ramp_0.srt"])
