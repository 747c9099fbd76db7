"""Video files and their subtitles: ids, probing and frame decoding with decord, SRT parsing.

Every error caused by a file (missing, unreadable, not a video, a malformed subtitle) is an
:class:`~longvideo_r1.errors.InputError` that names the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from longvideo_r1.corpus import tree
from longvideo_r1.errors import InputError

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv")
_VIDEO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}")


def validate_video_id(video_id: str) -> str:
    """A video id is a file-name-safe token; it can never name a path outside a folder."""
    if not isinstance(video_id, str) or not _VIDEO_ID.fullmatch(video_id) or ".." in video_id:
        raise InputError(f"video id {video_id!r} is not allowed: use letters, digits, '_', '-' and '.' "
                         "(no path separators, no '..', no control characters, at most 200 characters)")
    return video_id


@dataclass(frozen=True)
class VideoInfo:
    """What the caption tree needs to know about a video file."""

    video_id: str
    path: str
    num_frames: int
    fps: float
    width: int
    frame_width: int
    frame_height: int
    subtitle_path: str | None = None

    @property
    def duration(self) -> float:
        return tree.video_duration(self.num_frames, self.fps)


def open_reader(path: str | Path):
    """A decord ``VideoReader`` for ``path``, or an :class:`InputError` saying why it cannot be read.
    A URI (``s3://…``) is read from this node's copy of it (:func:`longvideo_r1.storage.local_file`)."""
    import decord

    from longvideo_r1 import storage

    shown = path
    path = storage.local_file(path)
    if not path.is_file():
        raise InputError(f"video {path}: file not found; check the path or the --videos folder")
    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except Exception as exc:  # decord raises its own DECORDError and RuntimeError variants
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"video {shown}: cannot be decoded ({first_line[:200]}); "
                         "re-encode it (for example to H.264 mp4) or remove it from the folder") from None


def probe_video(path: str | Path, video_id: str | None = None, min_width: int = tree.MIN_WIDTH,
                max_width: int = tree.MAX_WIDTH) -> VideoInfo:
    """What a video file is (frames, fps, tree width, size, subtitles ``NAME.srt`` beside it). A
    video at a URI keeps its URI as its path (every node reads it from its own cached copy)."""
    from longvideo_r1 import storage

    uri = str(path) if storage.is_uri(path) else None
    stem = uri.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0] if uri else Path(path).stem
    video_id = validate_video_id(video_id if video_id is not None else stem)
    reader = open_reader(path)
    path = storage.local_file(path)
    num_frames = len(reader)
    fps = float(reader.get_avg_fps())
    if num_frames <= 0 or not np.isfinite(fps) or fps <= 0:
        raise InputError(f"video {uri or path}: reports {num_frames} frames at {fps} fps; it looks truncated, "
                         "re-encode it")
    height, width_px = reader[0].shape[:2]
    if uri:
        base, _, query = uri.partition("?")
        srt_uri = base.rsplit(".", 1)[0] + ".srt" + (f"?{query}" if query else "")
        source, subtitles = uri, (srt_uri if storage.readable(srt_uri) else None)
    else:
        srt = path.with_suffix(".srt")
        source, subtitles = str(path.resolve()), (str(srt.resolve()) if srt.is_file() else None)
    return VideoInfo(video_id, source, num_frames, fps,
                     tree.tree_width(tree.video_duration(num_frames, fps), min_width=min_width,
                                     max_width=max_width),
                     int(width_px), int(height), subtitles)


def find_videos(folder: str | Path) -> list[tuple[str, Path]]:
    """``(video_id, path)`` of every video file directly in ``folder``, sorted by id."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"video folder {folder}: not a directory; pass the folder that holds the video files")
    found = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in VIDEO_EXTENSIONS and path.is_file():
            video_id = validate_video_id(path.stem)
            if video_id in found:
                raise InputError(f"video folder {folder}: two files share the id {video_id!r} "
                                 f"({found[video_id].name}, {path.name}); rename one")
            found[video_id] = path
    return sorted(found.items())


def resize_max_side(frame: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink a frame so its longest side is at most ``max_side`` (never enlarges)."""
    from PIL import Image

    h, w = frame.shape[:2]
    if max(h, w) <= max_side:
        return frame
    scale = max_side / max(h, w)
    return np.asarray(Image.fromarray(frame).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                    Image.BILINEAR))


def read_frames(reader, frame_ids, path: str | Path = "video") -> np.ndarray:
    """Decode frames by index as an ``(N, H, W, 3)`` uint8 array."""
    try:
        return reader.get_batch([int(i) for i in frame_ids]).asnumpy()
    except Exception as exc:
        raise InputError(f"video {path}: frames {list(frame_ids)[:3]}… cannot be decoded ({exc}); "
                         "the file may be truncated, re-encode it") from None


# ---------------------------------------------------------------- subtitles

@dataclass(frozen=True)
class Subtitle:
    start: float
    end: float
    text: str


_SRT_TIME = re.compile(r"(\d+):(\d{1,2}):(\d{1,2})[,.](\d{1,3})\s*-->\s*(\d+):(\d{1,2}):(\d{1,2})[,.](\d{1,3})")
_TAG = re.compile(r"<[^>]*>|\{\\[^}]*\}")


def _seconds(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms.ljust(3, "0")) / 1000


def parse_srt(path: str | Path) -> list[Subtitle]:
    """Subtitles of an SRT file (a path or a URI), markup tags removed, sorted by start time."""
    from longvideo_r1 import storage

    path = storage.local_file(path)
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise InputError(f"subtitle file {path}: cannot be read ({exc.strerror})") from None
    subs = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n").strip()):
        lines = [ln for ln in block.split("\n") if ln.strip()]
        timing = next((i for i, ln in enumerate(lines) if "-->" in ln), None)
        if timing is None:
            continue
        match = _SRT_TIME.search(lines[timing])
        if not match:
            raise InputError(f"subtitle file {path}: malformed time line {lines[timing]!r}; "
                             "expected 'HH:MM:SS,mmm --> HH:MM:SS,mmm'")
        g = match.groups()
        body = " ".join(_TAG.sub("", ln).strip() for ln in lines[timing + 1:]).strip()
        if body:
            subs.append(Subtitle(_seconds(*g[:4]), _seconds(*g[4:]), body))
    return sorted(subs, key=lambda s: s.start)


def subtitles_at(subs: list[Subtitle], t: float) -> list[str]:
    """Texts of the subtitles shown at time ``t``."""
    return [s.text for s in subs if s.start <= t <= s.end]


def format_srt_time(t: float) -> str:
    ms = int(round(t * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def write_srt(path: str | Path, subs: list[Subtitle]) -> None:
    blocks = [f"{i}\n{format_srt_time(s.start)} --> {format_srt_time(s.end)}\n{s.text}\n"
              for i, s in enumerate(subs, start=1)]
    Path(path).write_text("\n".join(blocks), encoding="utf-8")
