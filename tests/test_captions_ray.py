"""`lvr1 captions build` at corpus scale: Ray tasks, several endpoints with limits, retries, resuming a killed job.

Real parts only: encoded H.264 clips decoded by decord in the Ray tasks, the local Ray of this module
(conftest's ``ray_local``, 2 CPUs), and OpenAI-compatible servers on 127.0.0.1 (tests/chat_server.py)
whose answers are computed from the frames they receive.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict

import pyarrow.parquet as pq
import pytest

from longvideo_r1.corpus import tree
from longvideo_r1.corpus.build import build_store
from longvideo_r1.corpus.store import CaptionStore, read_manifest
from longvideo_r1.errors import InputError
from longvideo_r1.platform import cli
from longvideo_r1.platform.config import load_config
from tests.chat_server import ChatServer, Fault
from tests.media import encode_ramp

MODEL = "test-vlm"
SEGMENTS = 4 + 16 + 64          # a width-4 tree: every clip below lasts 18-30 s


def make_videos(folder, count):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        encode_ramp(folder / f"clip_{i:02d}.mp4", frames=72 + 8 * i)
    return folder


def options(*servers, **extra) -> dict:
    urls = [s.base_url for s in servers]
    return {"endpoint": urls[0] if len(urls) == 1 else urls, "model": MODEL, "concurrency": 4, **extra}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def store_content(root) -> dict:
    """Every video of a store: its record (without the build time) and its captions, in tree order."""
    store = CaptionStore(root)
    content = {}
    for video_id in store.video_ids():
        record = {k: v for k, v in asdict(store.video(video_id)).items() if k != "built_at"}
        content[video_id] = (record, [(c.ids, c.caption, c.start, c.end, c.frame_ids) for c in store.tree_captions(video_id)])
    return content


def assert_every_segment_captioned_from_its_frames(root, video_ids):
    store = CaptionStore(root)
    assert store.video_ids() == sorted(video_ids)
    assert store.stats()["captions"] == SEGMENTS * len(video_ids)   # each video once
    for video_id in video_ids:
        for caption in store.tree_captions(video_id):
            n = tree.CORPUS_FRAMES[caption.level]
            assert caption.caption.startswith(f"{n} frames from {caption.start}s to {caption.end}s"), caption


# ---------------------------------------------------------------- local processes (before this module's Ray starts)

@pytest.mark.slow
def test_without_ray_the_worker_processes_share_one_limit_per_endpoint(tmp_path):
    import ray

    assert not ray.is_initialized()
    videos = make_videos(tmp_path / "videos", 3)
    with ChatServer(delay=0.03) as srv:
        report = build_store(videos, tmp_path / "store", "openai", options(srv, concurrency_per_endpoint=3),
                             workers=2, progress=False)
    assert report.executor == "processes" and not report.failed
    assert srv.max_in_flight == 3            # two processes × 4 per video would reach 8 without the shared limit
    assert report.requests["requests"] == 3 * SEGMENTS == len(srv.requests)
    assert_every_segment_captioned_from_its_frames(tmp_path / "store", ["clip_00", "clip_01", "clip_02"])


# ---------------------------------------------------------------- Ray tasks

@pytest.mark.slow
def test_a_build_killed_mid_corpus_finishes_on_rerun_like_an_uninterrupted_one(tmp_path, ray_local):
    import ray

    videos = make_videos(tmp_path / "videos", 6)
    address = ray.get_runtime_context().gcs_address
    with ChatServer(delay=0.04) as srv:
        whole = build_store(videos, tmp_path / "whole", "openai", options(srv), num_shards=3, workers=2,
                            progress=False)
        assert whole.executor == "ray" and not whole.failed

        store = tmp_path / "store"
        command = [sys.executable, "-m", "longvideo_r1.platform.cli", "captions", "build", "--videos", str(videos),
                   "--out", str(store), "--captioner", "openai", "--endpoint", srv.base_url, "--model", MODEL,
                   "--concurrency", "4", "--shards", "3", "--workers", "2", "--ray-address", address]
        job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 180
        while time.time() < deadline and len(list((store / "staging").glob("*.parquet"))) < 2:
            time.sleep(0.02)
        job.send_signal(signal.SIGKILL)
        job.wait()

        staged = sorted((store / "staging").glob("*.parquet"))
        assert 2 <= len(staged) < 6, "the kill did not land mid-corpus"
        assert read_manifest(store)["shards"] == {}
        for path in staged:             # every visible video is whole: its full tree, in order
            table = pq.read_table(path)
            assert table.num_rows == SEGMENTS and set(table.column("video_id").to_pylist()) == {path.stem}

        rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["executor"] == "ray"
    assert summary["skipped"] == len(staged) and summary["built"] == 6 - len(staged)
    assert summary["segments"] == SEGMENTS * (6 - len(staged))
    assert not list((store / "staging").iterdir())          # no leftover, temporary files included
    assert_every_segment_captioned_from_its_frames(store, [f"clip_{i:02d}" for i in range(6)])
    assert store_content(store) == store_content(tmp_path / "whole")


@pytest.mark.slow
def test_an_endpoint_failing_half_its_requests_slows_the_build_but_loses_nothing(tmp_path, ray_local, caplog):
    videos = make_videos(tmp_path / "videos", 2)
    logged = []
    with ChatServer(faults=lambda i: Fault(status=500) if i % 2 else None) as srv:
        with caplog.at_level(logging.INFO, logger="longvideo_r1.corpus.build"):
            report = build_store(videos, tmp_path / "store", "openai", options(srv, retries=10, backoff=0.01),
                                 workers=2, progress=False, log_metrics=lambda m, step: logged.append((m, step)))
    assert report.executor == "ray" and not report.failed and sorted(report.built) == ["clip_00", "clip_01"]
    assert_every_segment_captioned_from_its_frames(tmp_path / "store", ["clip_00", "clip_01"])

    failed = sum(r.status == 500 for r in srv.requests)
    assert failed >= (len(srv.requests) - 1) // 2 and failed > 0
    assert report.requests["requests"] == 2 * SEGMENTS == sum(r.status == 200 for r in srv.requests)
    assert report.requests["failed_requests"] == failed == report.requests["retries"]
    # the figures reach the log and the metrics (MLflow in the pipeline), at the step of the videos done
    metrics, step = logged[-1]
    assert step == 2 and metrics["captions/segments"] == 2 * SEGMENTS and metrics["captions/segments_per_s"] > 0
    assert metrics["captions/failed_requests"] == failed and metrics["captions/retries"] == failed
    assert 0 < metrics["captions/latency_p50_s"] <= metrics["captions/latency_p99_s"]
    assert any(f"{failed} failed, {failed} retried" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_two_endpoints_share_the_load_within_their_concurrency_limits(tmp_path, ray_local):
    videos = make_videos(tmp_path / "videos", 2)
    with ChatServer(delay=0.05) as a, ChatServer(delay=0.05) as b:
        report = build_store(videos, tmp_path / "store", "openai", options(a, b, concurrency_per_endpoint=2),
                             workers=2, progress=False)
    assert report.executor == "ray" and not report.failed
    assert a.max_in_flight == 2 and b.max_in_flight == 2      # used in parallel, never above the limit
    assert len(a.requests) + len(b.requests) == 2 * SEGMENTS
    assert min(len(a.requests), len(b.requests)) >= 0.3 * 2 * SEGMENTS
    assert_every_segment_captioned_from_its_frames(tmp_path / "store", ["clip_00", "clip_01"])


def test_a_dead_endpoint_mid_build_fails_only_its_videos_naming_both_endpoints(tmp_path, ray_local):
    """Both endpoints answer at the start, then every request fails: each video is reported on one line
    naming the endpoints it tried, and nothing half-done reaches the store."""
    videos = make_videos(tmp_path / "videos", 1)
    with ChatServer(faults=lambda i: Fault(status=503)) as a, ChatServer(faults=lambda i: Fault(status=503)) as b:
        report = build_store(videos, tmp_path / "store", "openai", options(a, b, retries=3, backoff=0.01),
                             progress=False)
    message = report.failed["clip_00"]
    assert "4 attempt(s)" in message and a.base_url in message and b.base_url in message and "\n" not in message
    assert len(a.requests) + len(b.requests) >= 4 and min(len(a.requests), len(b.requests)) >= 1
    assert CaptionStore(tmp_path / "store").video_ids() == []


# ---------------------------------------------------------------- bad endpoints: one clear line

def run_cli(capsys, *args) -> tuple[int, list[str]]:
    code = cli.main(["captions", "build", *map(str, args)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.startswith("lvr1: error:")]


@pytest.mark.parametrize("endpoint, says", [
    ("ftp://10.0.0.5/v1", "'ftp://10.0.0.5/v1' is not an http(s) base URL"),
    ("http://127.0.0.1:{port}/v1", "http://127.0.0.1:{port}/v1: unreachable"),
])
def test_a_bad_or_unreachable_endpoint_is_one_error_line_naming_it(tmp_path, capsys, endpoint, says):
    videos = make_videos(tmp_path / "videos", 2)
    port = closed_port()
    with ChatServer() as good:
        code, errors = run_cli(capsys, "--videos", videos, "--out", tmp_path / "store", "--captioner", "openai",
                               "--endpoint", good.base_url, "--endpoint", endpoint.format(port=port),
                               "--model", MODEL)
    assert code == 2 and len(errors) == 1 and says.format(port=port) in errors[0]
    assert good.requests == []                  # refused before any video was captioned


def test_an_endpoint_listed_twice_is_refused(tmp_path, capsys):
    videos = make_videos(tmp_path / "videos", 1)
    with ChatServer() as srv:
        code, errors = run_cli(capsys, "--videos", videos, "--out", tmp_path / "store", "--captioner", "openai",
                               "--endpoint", srv.base_url, "--endpoint", srv.base_url.removesuffix("/v1"),
                               "--model", MODEL)
    assert code == 2 and len(errors) == 1 and "listed twice" in errors[0]


@pytest.mark.parametrize("override, key", [
    ("captions.endpoints=[]", "captions.endpoints"),
    ("captions.endpoints=[http://a:1/v1, 7]", "captions.endpoints"),
    ("captions.endpoints=http://a:1/v1", "captions.endpoints"),
    ("captions.concurrency_per_endpoint=0", "captions.concurrency_per_endpoint"),
    ("captions.request_timeout_s=0", "captions.request_timeout_s"),
    ("captions.max_retries=-1", "captions.max_retries"),
])
def test_a_bad_endpoint_setting_is_refused_at_load_naming_the_key(override, key):
    given = [] if override.startswith("captions.endpoints") else ["captions.endpoint=http://a:1/v1"]
    with pytest.raises(InputError, match=key.replace(".", r"\.")):
        load_config(None, ["captions.captioner=openai", "captions.model=m", *given, override])


def test_endpoint_and_endpoints_together_are_refused():
    with pytest.raises(InputError, match="set one of them"):
        load_config(None, ["captions.captioner=openai", "captions.model=m", "captions.endpoint=http://a:1/v1",
                           "captions.endpoints=[http://b:1/v1]"])


@pytest.mark.slow
def test_the_pipeline_stage_captions_over_the_endpoints_of_its_config_as_ray_tasks(tmp_path, ray_local):
    from longvideo_r1.platform.pipeline import captions_stage

    videos = make_videos(tmp_path / "videos", 2)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "corpus.json").write_text(json.dumps({"source": "folder", "videos": [
        {"video_id": p.stem, "path": str(p)} for p in sorted(videos.glob("*.mp4"))]}))
    logged = []
    with ChatServer(delay=0.02) as a, ChatServer(delay=0.02) as b:
        config = load_config(None, ["captions.captioner=openai", f"captions.model={MODEL}",
                                    f"captions.endpoints=[{a.base_url}, {b.base_url}]",
                                    "captions.concurrency_per_endpoint=1", "captions.max_retries=2",
                                    "captions.request_timeout_s=30", "captions.workers=2"])
        captions_stage(config, corpus, tmp_path / "store", log_metrics=lambda m, step: logged.append(m))
    assert a.max_in_flight == 1 and b.max_in_flight == 1 and a.requests and b.requests
    assert_every_segment_captioned_from_its_frames(tmp_path / "store", ["clip_00", "clip_01"])
    assert logged[-1]["captions/requests"] == 2 * SEGMENTS
