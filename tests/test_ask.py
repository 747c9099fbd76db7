"""`lvr1 ask`: captions a new video on demand, plays the episode, prints it, writes its trace and timeline."""

import json
import shutil
import subprocess
import sys

import pytest


def lvr1(*args):
    return subprocess.run([sys.executable, "-m", "longvideo_r1.platform.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def asked(demo_corpus, tmp_path_factory):
    """One text_detail question asked of a fresh copy of its video, with the oracle walking to the clue."""
    q = next(q for q in demo_corpus.questions() if q["task_type"] == "text_detail")
    folder = tmp_path_factory.mktemp("ask")
    video = folder / f"{q['video_id']}.mp4"
    shutil.copy(demo_corpus.video(q["video_id"]), video)
    shutil.copy(demo_corpus.video(q["video_id"]).with_suffix(".srt"), video.with_suffix(".srt"))
    clues = [arg for a, b in q["clue_intervals"] for arg in ("--clue", f"{a}-{b}")]
    result = lvr1("ask", "--video", video, "--question", q["question"], "--options", *q["options"],
                  "--store", folder / "store", "--policy", "oracle", "--answer", q["answer"], *clues,
                  "--captioner", "demo", "--video-qa", "demo",
                  "--trace-json", folder / "trace.json", "--timeline-png", folder / "map.png")
    return q, folder, video, result


@pytest.mark.slow
def test_ask_captions_the_video_and_prints_the_answer_rounds_and_cost(asked):
    q, folder, _, result = asked
    assert result.returncode == 0, result.stderr
    assert "captioning" in result.stderr
    assert f"answer: {q['answer']}  (correct)" in result.stdout
    assert "round  1: get_caption((" in result.stdout and "cost:" in result.stdout
    assert (folder / "store" / "manifest.json").is_file()


@pytest.mark.slow
def test_ask_writes_a_trace_that_matches_what_it_printed(asked):
    q, folder, _, result = asked
    trace = json.loads((folder / "trace.json").read_text())
    assert trace["answer"] == q["answer"] and trace["correct"] is True
    assert trace["rounds"] == sum(line.startswith("round ") for line in result.stdout.splitlines())
    assert trace["question"]["clue_intervals"] == q["clue_intervals"]
    png = (folder / "map.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000


@pytest.mark.slow
def test_a_second_question_reuses_the_stored_captions(asked):
    q, folder, video, _ = asked
    again = lvr1("ask", "--video", video, "--question", q["question"], "--options", *q["options"],
                 "--store", folder / "store", "--policy", "random", "--video-qa", "none")
    assert again.returncode == 0, again.stderr
    assert "captioning" not in again.stderr and "answer:" in again.stdout


@pytest.mark.parametrize("args, needle", [
    (("--video", "/nonexistent.mp4", "--question", "q?"), "/nonexistent.mp4"),
    (("--question", "q?", "--clue", "10-x"), "--clue '10-x'"),
    (("--question", "q?", "--policy", "nope"), "policy 'nope' is unknown"),
    (("--question", "q?", "--video-qa", "openai"), "--video-qa-endpoint"),
])
def test_bad_ask_input_is_one_line_error(asked, args, needle):
    _, folder, video, _ = asked
    if "--video" not in args:
        args = ("--video", video, "--store", folder / "store", *args)
    result = lvr1("ask", *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert needle in result.stderr
