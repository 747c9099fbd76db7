"""The `lvr1` command line: JSON on stdout, and one-line errors with a non-zero exit for bad input."""

import json
import subprocess
import sys

import pytest

from tests.test_store import build, make_video


def lvr1(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "longvideo_r1.platform.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "store"
    build(root, [make_video("vid_a", 3000), make_video("vid_b", 9000)], shards=2)
    return root


def assert_one_line_error(result, *needles):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("lvr1: error:"), result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_captions_get_prints_one_json_object(store):
    result = lvr1("captions", "get", store, "vid_a", 2, 3)
    assert result.returncode == 0, result.stderr
    obj = json.loads(result.stdout)
    assert set(obj) == {"video_id", "ids", "level", "start", "end", "caption"}
    assert obj["ids"] == [2, 3] and obj["level"] == "medium" and obj["caption"] == "vid_a medium (2, 3)"
    assert obj["start"] <= obj["end"]


def test_captions_stats_counts_levels(store):
    result = lvr1("captions", "stats", store)
    stats = json.loads(result.stdout)
    assert stats["videos"] == 2 and stats["num_shards"] == 2
    widths = [make_video(v, n)[0].width for v, n in (("vid_a", 3000), ("vid_b", 9000))]
    assert stats["per_level"] == {"high": sum(widths), "medium": sum(w ** 2 for w in widths),
                                  "low": sum(w ** 3 for w in widths)}


@pytest.mark.parametrize("args, needles", [
    (("captions", "get", "{store}", "nope", "1"), ("nope", "not in caption store")),
    (("captions", "get", "{store}", "vid_a", "1", "9"), ("ids run from 1 to",)),
    (("captions", "get", "{store}", "vid_a", "x"), ("give 1 to 3 integers",)),
    (("captions", "get", "{store}", "../../etc", "1"), ("not allowed",)),
    (("captions", "get", "/nonexistent/store", "vid_a", "1"), ("/nonexistent/store", "no manifest.json")),
    (("captions", "stats", "/nonexistent/store"), ("no manifest.json",)),
    (("captions", "build", "--videos", "/nonexistent/videos", "--out", "{tmp}/s"), ("/nonexistent/videos",)),
    (("captions", "build", "--videos", "{tmp}", "--out", "{tmp}/s", "--captioner", "openai"), ("--endpoint",)),
    (("captions", "import", "--upstream-json", "/nonexistent/json", "--out", "{tmp}/s"), ("not a directory",)),
    (("pipeline", "--config", "/nonexistent.yaml"), ("/nonexistent.yaml", "cannot be read")),
    (("pipeline", "--set", "corpus.vidoes=3"), ("corpus.vidoes", "unknown key")),
    (("pipeline", "--set", "captions.workers=many"), ("captions.workers", "not a int")),
])
def test_bad_input_is_one_line_error_without_traceback(store, tmp_path, args, needles):
    args = [a.format(store=store, tmp=tmp_path) for a in args]
    assert_one_line_error(lvr1(*args), *needles)


def test_a_corrupt_shard_is_reported_by_name(tmp_path):
    root = tmp_path / "store"
    build(root, [make_video("vid_a", 3000)], shards=1)
    manifest = json.loads((root / "manifest.json").read_text())
    shard_file = root / manifest["shards"]["000"]["captions"]
    shard_file.write_bytes(b"not parquet at all")
    assert_one_line_error(lvr1("captions", "get", root, "vid_a", 1), str(shard_file), "corrupt")
