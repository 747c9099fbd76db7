"""Runs whose data lives in an object store: a real S3-compatible server on 127.0.0.1 (moto's), spoken
to by pyarrow's S3 filesystem over HTTP, as a bucket on AWS, MinIO or Ceph would be."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from longvideo_r1 import storage
from longvideo_r1.errors import InputError
from tests.s3_server import S3Server


@pytest.fixture(scope="module")
def s3():
    with S3Server() as server:
        yield server


def _tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def test_publish_mirrors_a_folder_and_restore_fills_a_fresh_machine(s3, tmp_path):
    home = storage.join(s3.bucket("mirror"), "runs", "a")
    out = tmp_path / "out"
    _tree(out, {"stages.json": b"{}", "rl/checkpoints/step000001/w.bin": b"x" * 100,
                "rl/checkpoints/latest": b"step000001", "store/manifest.json": b"{}", ".lock": b""})
    (out / "corpus").mkdir()
    (out / "corpus" / "video.mp4").symlink_to(tmp_path / "elsewhere.mp4")   # a link to the user's file
    first = storage.publish(out, home)
    assert first == {"files": 4, "bytes": 100 + 10 + 2 + 2, "deleted": 0}
    assert set(storage.listing(home)) == {"stages.json", "rl/checkpoints/step000001/w.bin",
                                          "rl/checkpoints/latest", "store/manifest.json"}
    assert storage.publish(out, home)["files"] == 0                  # nothing changed: nothing sent
    # a pruned checkpoint disappears there too; a rewritten file is sent again
    (out / "rl/checkpoints/step000001/w.bin").unlink()
    _tree(out, {"rl/checkpoints/step000002/w.bin": b"y" * 50, "rl/checkpoints/latest": b"step000002"})
    second = storage.publish(out, home)
    assert second["files"] == 2 and second["deleted"] == 1
    assert storage.read_bytes(storage.join(home, "rl/checkpoints/latest")) == b"step000002"
    assert "rl/checkpoints/step000001/w.bin" not in storage.listing(home)
    # a fresh machine gets everything; a file already there (newer) is kept
    fresh = tmp_path / "fresh"
    _tree(fresh, {"stages.json": b'{"local": 1}'})
    got = storage.restore(home, fresh)
    assert got["files"] == 3 and (fresh / "rl/checkpoints/step000002/w.bin").read_bytes() == b"y" * 50
    assert (fresh / "stages.json").read_bytes() == b'{"local": 1}'
    # what was restored is not sent back; the newer local file is
    assert storage.publish(fresh, home)["files"] == 1
    assert storage.read_bytes(storage.join(home, "stages.json")) == b'{"local": 1}'


def _eventually(check, timeout_s: float = 30.0) -> bool:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def test_a_running_stage_is_published_as_it_goes(s3, tmp_path):
    """storage.publish_every_s: a long stage's checkpoints reach the bucket while it runs, and a
    checkpoint pruned meanwhile is removed there."""
    import shutil

    home = storage.join(s3.bucket("live"), "run")
    out = tmp_path / "out"
    _tree(out, {"stages.json": b"{}", "mlflow.db": b"sqlite"})
    with storage.Publisher(out, home, every_s=0.2) as publisher:
        assert _eventually(lambda: "stages.json" in storage.listing(home))
        _tree(out, {"rl/checkpoints/step000001/w.bin": b"ab", "rl/checkpoints/latest": b"step000001"})
        assert _eventually(lambda: "rl/checkpoints/latest" in storage.listing(home))
        shutil.rmtree(out / "rl" / "checkpoints" / "step000001")
        assert _eventually(lambda: "rl/checkpoints/step000001/w.bin" not in storage.listing(home))
    assert publisher.turns >= 3
    assert "mlflow.db" not in storage.listing(home)        # a database waits for the stage's end
    assert storage.publish(out, home)["files"] == 1 and "mlflow.db" in storage.listing(home)


def test_a_caption_store_at_a_uri_reads_like_its_folder(s3, tmp_path, capsys):
    from longvideo_r1.corpus.store import CaptionStore, shard_of
    from tests.test_store import build, make_video

    local = tmp_path / "store"
    build(local, [make_video(f"vid_{i}", 1500 + 700 * i) for i in range(4)], shards=3)
    uri = storage.join(s3.bucket("stores"), "demo", "store")
    storage.publish(local, uri)
    here, there = CaptionStore(local), CaptionStore(uri)
    assert there.video_ids() == here.video_ids()
    for video_id in here.video_ids():
        assert there.video(video_id) == here.video(video_id)
        assert there.tree_captions(video_id) == here.tree_captions(video_id)
    assert there.get("vid_2", (1, 2, 3)) == here.get("vid_2", (1, 2, 3))
    stats_here, stats_there = here.stats(), there.stats()
    assert {k: v for k, v in stats_there.items() if k != "store"} == {k: v for k, v in stats_here.items() if k != "store"}
    from longvideo_r1.platform.cli import main

    assert main(["captions", "stats", uri]) == 0                     # the CLI reads it in place too
    assert json.loads(capsys.readouterr().out)["videos"] == 4
    # a corrupt shard there is an error naming the shard, not a crash
    manifest = json.loads((local / "manifest.json").read_text())
    key, entry = sorted(manifest["shards"].items())[0]
    storage.write_bytes(storage.join(uri, entry["captions"]), b"not parquet")
    victim = next(v for v in here.video_ids() if f"{shard_of(v, 3):03d}" == key)
    with pytest.raises(InputError, match=f"shard {key}.*rebuild the store or restore the file"):
        CaptionStore(uri).get(victim, (1,))
    with pytest.raises(InputError, match="no manifest.json"):
        CaptionStore(storage.join(uri, "nothing-here"))


def test_a_video_at_a_uri_is_probed_decoded_and_cached_once_per_node(s3, tmp_path, demo_corpus, monkeypatch):
    from longvideo_r1.agent.video_qa import clear_caches, clip_frames
    from longvideo_r1.corpus.store import VideoRecord
    from longvideo_r1.corpus.video import probe_video

    monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "cache"))
    video_id = demo_corpus.video_ids[0]
    local = demo_corpus.video(video_id)
    folder = storage.join(s3.bucket("videos"), "corpus")
    storage.write_bytes(storage.join(folder, local.name), local.read_bytes())
    storage.write_bytes(storage.join(folder, f"{video_id}.srt"), local.with_suffix(".srt").read_bytes())
    uri = storage.join(folder, local.name)
    there, here = probe_video(uri), probe_video(local)
    assert there.path == uri and there.subtitle_path == storage.join(folder, f"{video_id}.srt")
    assert (there.num_frames, there.fps, there.width, there.frame_width) == (
        here.num_frames, here.fps, here.width, here.frame_width)
    cached = storage.local_file(uri)
    assert cached.parent.parent == tmp_path / "cache" / "files" and cached.read_bytes() == local.read_bytes()
    stamp = cached.stat().st_mtime_ns
    clear_caches()
    record_there = VideoRecord.from_info(there, "demo")
    record_here = VideoRecord.from_info(here, "demo")
    frames_there, times_there, subs_there = clip_frames(record_there, (1, 2, 1))
    frames_here, times_here, subs_here = clip_frames(record_here, (1, 2, 1))
    assert np.array_equal(frames_there, frames_here) and times_there == times_here and subs_there == subs_here
    assert cached.stat().st_mtime_ns == stamp                        # read from the node's copy, not again
    with pytest.raises(InputError, match="no such file"):
        probe_video(storage.join(folder, "missing.mp4"))


def test_storage_errors_name_the_uri_and_say_what_to_do(s3, tmp_path):
    from longvideo_r1.cluster.paths import _probe
    from longvideo_r1.platform.config import load_config

    with pytest.raises(InputError, match="s3://no-such-bucket/x.*create the bucket first"):
        storage.publish(_made(tmp_path), "s3://no-such-bucket/x")
    with pytest.raises(InputError, match="storage.uri.*ftp://"):
        load_config(["configs/demo-cpu.yaml"], ["storage.uri=ftp://host/run"])
    bucket = s3.bucket("probe")
    storage.write_bytes(storage.join(bucket, "store", "manifest.json"), b"{}")
    # what a node reports it cannot open (the start-up check of an RL run)
    assert _probe([storage.join(bucket, "store"), storage.join(bucket, "absent"), str(tmp_path)]) == [
        storage.join(bucket, "absent")]


def _made(tmp_path: Path) -> Path:
    _tree(tmp_path / "made", {"a.txt": b"a"})
    return tmp_path / "made"


@pytest.mark.slow
def test_a_corpus_in_s3_is_captioned_published_and_continued_on_a_fresh_machine(s3, tmp_path):
    """Videos and annotations in a bucket, the run published to the bucket: the captioning tasks read
    the videos by URI, and a second machine (a fresh output_dir) pulls the run and skips what is done."""
    from longvideo_r1.corpus.store import CaptionStore
    from tests.chat_server import ChatServer
    from tests.media import real_footage_corpus
    from tests.test_real_corpus import CONFIG, SMALL

    videos, annotations = real_footage_corpus(tmp_path / "src")
    bucket = s3.bucket("corpus")
    for path in videos.iterdir():
        storage.write_bytes(storage.join(bucket, "videos", path.name), path.read_bytes())
    storage.write_bytes(storage.join(bucket, "ann", annotations.name), annotations.read_bytes())
    home = storage.join(bucket, "runs", "r1")
    env = {**os.environ, **s3.env}

    def run(out: Path, vlm_url: str):
        sets = [f"output_dir={out}", f"corpus.path={bucket}/videos", f"corpus.annotations={bucket}/ann/{annotations.name}",
                f"storage.uri={home}", "captions.captioner=openai", f"captions.endpoint={vlm_url}",
                "captions.model=test-vlm", *SMALL]
        cmd = [sys.executable, "-m", "longvideo_r1.platform.cli", "pipeline", "--config", str(CONFIG),
               *[a for kv in sets for a in ("--set", kv)], "--until", "captions"]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                              env={**env, storage.CACHE_ENV: str(out.parent / f"cache-{out.name}")})

    with ChatServer() as vlm:
        first = run(tmp_path / "machine1", vlm.base_url)
        assert first.returncode == 0, first.stderr[-3000:]
        assert len(vlm.requests) > 0
    corpus = json.loads((tmp_path / "machine1" / "corpus" / "corpus.json").read_text())
    assert all(v["path"].startswith(f"{bucket}/videos/") for v in corpus["videos"])
    published = storage.listing(home)
    assert "store/manifest.json" in published and "corpus/questions.jsonl" in published and "stages.json" in published
    store = CaptionStore(storage.join(home, "store"))
    assert len(store.video_ids()) == 6
    assert all(store.video(v).source_path.startswith(f"{bucket}/videos/") for v in store.video_ids())
    # a fresh machine: restores the run, finds corpus and captions done, asks the VLM nothing
    with ChatServer() as vlm:
        second = run(tmp_path / "machine2", vlm.base_url)
        assert second.returncode == 0, second.stderr[-3000:]
        assert vlm.requests == []
    assert "storage: restored" in second.stderr and "captions: up to date" in second.stderr


def _read_in_a_worker(uri: str, queries):
    from longvideo_r1.corpus.store import CaptionStore

    store = CaptionStore(uri)
    return [store.get(v, ids).caption for v, ids in queries]


def test_rollout_nodes_open_a_store_at_a_uri_in_place_with_the_jobs_credentials(s3, tmp_path):
    """What an RL run checks at start: every node opens the URI store itself (no serving actors, no
    head disk), with the credentials the job hands its workers (runtime_env env_vars)."""
    import ray

    from longvideo_r1.cluster.paths import node_views, store_access
    from longvideo_r1.corpus.store import CaptionStore
    from tests.test_store import build, make_video

    local = tmp_path / "store"
    build(local, [make_video(f"w{i}", 900 + 300 * i) for i in range(3)], shards=2)
    uri = storage.join(s3.bucket("access"), "store")
    storage.publish(local, uri)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": s3.env})
    try:
        absent = uri + "-absent"
        views = node_views([uri, absent])
        assert [v.missing for v in views] == [(absent,)]
        assert store_access("auto", uri, node_views([uri]))[0] == "local"
        queries = [("w0", (1,)), ("w2", (2, 1)), ("w1", (3, 2, 1))]
        got = ray.get(ray.remote(num_cpus=0)(_read_in_a_worker).remote(uri, queries))
        assert got == [CaptionStore(local).get(v, ids).caption for v, ids in queries]
    finally:
        ray.shutdown()
