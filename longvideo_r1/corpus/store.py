"""The sharded caption store: Parquet shards on disk, an in-process reader with an index and LRU cache.

Layout of a store folder::

    manifest.json                  what readers see: shard count, and per shard its current files
    shards/captions-007.g12.parquet  one row per caption, rows grouped by video in tree order
    shards/videos-007.g12.parquet    one row per video (width, duration, fps, num_frames, paths)
    staging/{video_id}.parquet     a finished video waiting to be merged into its shard

A video goes to shard ``blake2b(video_id) mod num_shards``. Writers stage each finished video as one
file (atomic rename), then *commit*: rewrite the touched shards under a new generation number and
atomically replace ``manifest.json``. A crash at any point leaves either the old or the new manifest,
never a half-written shard that readers can see, and staged videos are merged on the next run.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from longvideo_r1 import storage
from longvideo_r1.corpus import tree
from longvideo_r1.corpus.captioning import CaptionRecord
from longvideo_r1.corpus.video import VideoInfo, validate_video_id
from longvideo_r1.errors import InputError

FORMAT = "lvr1-caption-store"
FORMAT_VERSION = 1
DEFAULT_SHARDS = 16
_LEVEL_CODE = {level: i for i, level in enumerate(tree.LEVELS)}

CAPTION_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("level", pa.string()),
    ("h", pa.int16()),
    ("m", pa.int16()),   # null on the high level
    ("l", pa.int16()),   # null on the high and medium levels
    ("start", pa.float64()),      # first sampled frame time (what the agent is shown)
    ("end", pa.float64()),        # last sampled frame time
    ("seg_start", pa.float64()),  # first frame of the segment's part, seconds
    ("seg_end", pa.float64()),    # one past the part's last frame, seconds
    ("caption", pa.string()),
    ("frame_time", pa.list_(pa.float64())),
    ("frame_ids", pa.list_(pa.int32())),
])

VIDEO_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("width", pa.int16()),
    ("duration", pa.float64()),
    ("fps", pa.float64()),
    ("num_frames", pa.int64()),
    ("source_path", pa.string()),
    ("subtitle_path", pa.string()),
    ("frame_width", pa.int32()),
    ("frame_height", pa.int32()),
    ("captioner", pa.string()),
    ("built_at", pa.float64()),
])


def shard_of(video_id: str, num_shards: int) -> int:
    """Stable shard of a video id (the same on every machine and Python process)."""
    return int.from_bytes(hashlib.blake2b(video_id.encode(), digest_size=8).digest(), "big") % num_shards


@dataclass(frozen=True)
class VideoRecord:
    video_id: str
    width: int
    duration: float
    fps: float
    num_frames: int
    source_path: str | None = None
    subtitle_path: str | None = None
    frame_width: int | None = None
    frame_height: int | None = None
    captioner: str | None = None
    built_at: float | None = None

    @classmethod
    def from_info(cls, info: VideoInfo, captioner: str) -> "VideoRecord":
        return cls(info.video_id, info.width, info.duration, info.fps, info.num_frames, info.path,
                   info.subtitle_path, info.frame_width, info.frame_height, captioner, time.time())


@dataclass(frozen=True)
class Caption:
    """One looked-up caption; ``start``/``end`` are the first/last sampled frame times."""

    video_id: str
    ids: tuple[int, ...]
    level: str
    start: float
    end: float
    caption: str
    seg_start: float
    seg_end: float
    frame_time: tuple[float, ...]
    frame_ids: tuple[int, ...]

    def to_json(self) -> dict:
        return {"video_id": self.video_id, "ids": list(self.ids), "level": self.level,
                "start": self.start, "end": self.end, "caption": self.caption}


# ---------------------------------------------------------------- writing

def _records_table(records: list[CaptionRecord]) -> pa.Table:
    ids = [r.ids + (None,) * (3 - len(r.ids)) for r in records]
    return pa.table({
        "video_id": [r.video_id for r in records],
        "level": [r.level for r in records],
        "h": [i[0] for i in ids], "m": [i[1] for i in ids], "l": [i[2] for i in ids],
        "start": [r.start for r in records], "end": [r.end for r in records],
        "seg_start": [r.seg_start for r in records], "seg_end": [r.seg_end for r in records],
        "caption": [r.caption for r in records],
        "frame_time": [list(r.frame_time) for r in records],
        "frame_ids": [list(r.frame_ids) for r in records],
    }, schema=CAPTION_SCHEMA)


def _videos_table(videos: list[VideoRecord]) -> pa.Table:
    return pa.Table.from_pylist([asdict(v) for v in videos], schema=VIDEO_SCHEMA)


def _check_tree_records(video: VideoRecord, records: list[CaptionRecord]) -> None:
    expected = tree.all_ids(video.width)
    got = [r.ids for r in records]
    if got != expected:
        raise InputError(f"video {video.video_id}: captions do not form a width-{video.width} tree "
                         f"({len(got)} captions, expected {len(expected)} in high/medium/low order)")


def _write_atomic_table(table: pa.Table, path: Path, metadata: dict | None = None) -> None:
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               **{k.encode(): v.encode() for k, v in metadata.items()}})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_atomic_json(obj: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def stage_video(root: str | Path, video: VideoRecord, records: list[CaptionRecord]) -> Path:
    """Durably record one finished video in ``root/staging`` (readers see it after the next commit).

    Safe to call from worker processes while the building process holds the store lock.
    """
    validate_video_id(video.video_id)
    _check_tree_records(video, records)
    path = Path(root) / "staging" / f"{video.video_id}.parquet"
    _write_atomic_table(_records_table(records), path, {"lvr1.video": json.dumps(asdict(video))})
    return path


class StoreWriter:
    """Adds videos to a store folder; one writer at a time (an exclusive lock on ``.lock``)."""

    def __init__(self, root: str | Path, num_shards: int | None = None):
        self.root = Path(root)
        manifest_path = self.root / "manifest.json"
        if manifest_path.exists():
            self.manifest = read_manifest(self.root)
            if num_shards is not None and num_shards != self.manifest["num_shards"]:
                raise InputError(f"caption store {self.root} has {self.manifest['num_shards']} shards; "
                                 f"--shards {num_shards} cannot change that (build into a new folder)")
        else:
            if self.root.exists() and not self.root.is_dir():
                raise InputError(f"caption store {self.root}: exists and is not a folder")
            if self.root.is_dir() and any(p.name not in ("staging", "shards", ".lock")
                                          for p in self.root.iterdir()):
                raise InputError(f"caption store {self.root}: folder is not empty and has no manifest.json; "
                                 "choose an empty or new folder")
            n = num_shards or DEFAULT_SHARDS
            if n < 1:
                raise InputError(f"--shards {n}: a store needs at least one shard")
            self.manifest = {"format": FORMAT, "version": FORMAT_VERSION, "num_shards": n,
                             "generation": 0, "shards": {}}
        (self.root / "staging").mkdir(parents=True, exist_ok=True)
        (self.root / "shards").mkdir(exist_ok=True)
        self._lock_file = None

    @contextmanager
    def locked(self):
        self._lock_file = open(self.root / ".lock", "w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"caption store {self.root} is being written by another process; "
                             "wait for it to finish") from None
        try:
            if not (self.root / "manifest.json").exists():
                _write_atomic_json(self.manifest, self.root / "manifest.json")
            for partial in (self.root / "staging").glob(".*.tmp"):   # a writer killed mid-file
                partial.unlink(missing_ok=True)
            yield self
        finally:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()

    @property
    def num_shards(self) -> int:
        return self.manifest["num_shards"]

    def committed_video_ids(self) -> set[str]:
        ids: set[str] = set()
        for entry in self.manifest["shards"].values():
            ids.update(pq.read_table(self.root / entry["videos"], columns=["video_id"])
                       .column("video_id").to_pylist())
        return ids

    def staged_video_ids(self) -> set[str]:
        return {p.stem for p in (self.root / "staging").glob("*.parquet")}

    def finished_video_ids(self) -> set[str]:
        return self.committed_video_ids() | self.staged_video_ids()

    def commit(self) -> int:
        """Merge staged videos into their shards; returns how many videos were merged."""
        staged = sorted((self.root / "staging").glob("*.parquet"))
        if not staged:
            return 0
        by_shard: dict[int, list[tuple[VideoRecord, pa.Table]]] = {}
        for path in staged:
            table = pq.read_table(path)
            video = VideoRecord(**json.loads(table.schema.metadata[b"lvr1.video"]))
            by_shard.setdefault(shard_of(video.video_id, self.num_shards), []).append(
                (video, table.replace_schema_metadata(None)))
        generation = self.manifest["generation"] + 1
        shards = dict(self.manifest["shards"])
        for shard, items in sorted(by_shard.items()):
            key = f"{shard:03d}"
            new_ids = {v.video_id for v, _ in items}
            cap_parts, vid_parts = [], []
            if key in shards:
                old_caps = pq.read_table(self.root / shards[key]["captions"])
                old_vids = pq.read_table(self.root / shards[key]["videos"])
                keep = pa.array([v not in new_ids for v in old_vids.column("video_id").to_pylist()])
                keep_rows = pa.array([v not in new_ids for v in old_caps.column("video_id").to_pylist()])
                cap_parts.append(old_caps.filter(keep_rows))
                vid_parts.append(old_vids.filter(keep))
            cap_parts += [t for _, t in items]
            vid_parts.append(_videos_table([v for v, _ in items]))
            captions = pa.concat_tables(cap_parts)
            videos = pa.concat_tables(vid_parts)
            # Group caption rows by video id (stable, so each video keeps its tree order).
            order = np.argsort(np.asarray(captions.column("video_id").to_pylist(), dtype=object), kind="stable")
            captions = captions.take(pa.array(order))
            videos = videos.sort_by("video_id")
            cap_name = f"shards/captions-{key}.g{generation}.parquet"
            vid_name = f"shards/videos-{key}.g{generation}.parquet"
            _write_atomic_table(captions, self.root / cap_name)
            _write_atomic_table(videos, self.root / vid_name)
            shards[key] = {"captions": cap_name, "videos": vid_name,
                           "num_videos": videos.num_rows, "num_captions": captions.num_rows}
        self.manifest = {**self.manifest, "generation": generation, "shards": shards}
        _write_atomic_json(self.manifest, self.root / "manifest.json")
        for path in staged:
            path.unlink(missing_ok=True)
        self._remove_unreferenced()
        return len(staged)

    def _remove_unreferenced(self) -> None:
        referenced = {name for entry in self.manifest["shards"].values()
                      for name in (entry["captions"], entry["videos"])}
        for path in (self.root / "shards").iterdir():
            if f"shards/{path.name}" not in referenced:
                path.unlink(missing_ok=True)


# ---------------------------------------------------------------- reading

def _at(root, name: str):
    """``root/name`` for a local store folder (a Path) or a store at a URI (a string)."""
    return storage.join(root, name) if storage.is_uri(root) else Path(root) / name


def _read_table(root, name: str, columns=None) -> pa.Table:
    """A Parquet file of the store, through the filesystem of its folder or its URI."""
    fs, path = storage.filesystem(str(_at(root, name)))
    return pq.read_table(path, columns=columns, filesystem=fs)


def read_manifest(root: str | Path) -> dict:
    """The manifest of the store at ``root``: a folder, or a URI (``s3://bucket/store``, see
    :mod:`longvideo_r1.storage`) read through its filesystem."""
    root = root if storage.is_uri(root) else Path(root)
    path = _at(root, "manifest.json")
    try:
        data = storage.read_bytes(str(path)) if storage.is_uri(root) or path.is_file() else None
    except FileNotFoundError:
        data = None
    if data is None:
        raise InputError(f"caption store {root}: no manifest.json; build one with `lvr1 captions build` "
                         "or `lvr1 captions import`")
    try:
        manifest = json.loads(data.decode())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"caption store {root}: manifest.json is not valid JSON ({exc}); "
                         "restore it or rebuild the store") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"caption store {root}: manifest.json is not an lvr1 caption store manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise InputError(f"caption store {root}: format version {manifest.get('version')} is not supported "
                         f"by this lvr1 (it reads version {FORMAT_VERSION})")
    return manifest


class _Shard:
    """One loaded shard: Arrow columns plus an index ``video_id -> (first row, width)``."""

    def __init__(self, root, key: str, entry: dict):
        cap_path, vid_path = _at(root, entry["captions"]), _at(root, entry["videos"])
        try:
            captions = _read_table(root, entry["captions"]).combine_chunks()
            videos = _read_table(root, entry["videos"])
        except (OSError, pa.ArrowException, InputError) as exc:
            bad = cap_path if not storage.readable(str(cap_path)) or "captions" in str(exc) else vid_path
            raise InputError(f"caption store shard {key} ({bad}): corrupt, truncated or missing "
                             f"({str(exc).splitlines()[0][:160]}); rebuild the store or restore the file") from None
        missing = [c for c in CAPTION_SCHEMA.names if c not in captions.column_names]
        if missing:
            raise InputError(f"caption store shard file {cap_path}: missing columns {missing}; rebuild the store")
        self.videos = {row["video_id"]: VideoRecord(**{k: row[k] for k in VIDEO_SCHEMA.names})
                       for row in videos.to_pylist()}
        vid_col = captions.column("video_id").to_pylist()
        self.index: dict[str, int] = {}
        row = 0
        for video_id, video in sorted(self.videos.items()):
            n = sum(tree.num_segments(video.width, lv) for lv in tree.LEVELS)
            if row + n > len(vid_col) or vid_col[row] != video_id or vid_col[row + n - 1] != video_id:
                raise InputError(f"caption store shard file {cap_path}: rows of video {video_id} are missing "
                                 "or out of order; rebuild the store")
            self.index[video_id] = row
            row += n
        if row != len(vid_col):
            raise InputError(f"caption store shard file {cap_path}: {len(vid_col) - row} rows belong to no "
                             "listed video; rebuild the store")
        self.caption = captions.column("caption").chunk(0)
        self.level = captions.column("level").chunk(0)
        self.start = captions.column("start").to_numpy()
        self.end = captions.column("end").to_numpy()
        self.seg_start = captions.column("seg_start").to_numpy()
        self.seg_end = captions.column("seg_end").to_numpy()
        self.frame_time = captions.column("frame_time").chunk(0)
        self.frame_ids = captions.column("frame_ids").chunk(0)
        self.h = captions.column("h").to_numpy(zero_copy_only=False)
        self.num_captions = captions.num_rows


class CaptionStore:
    """Read access to a store folder; loads shards lazily, caches recent lookups (LRU).

    ``shards`` restricts the reader to some shards (a serving actor owns a group of them).
    """

    def __init__(self, root: str | Path, shards: list[int] | None = None, cache_size: int = 65536):
        self.root = str(root) if storage.is_uri(root) else Path(root)
        self.manifest = read_manifest(self.root)
        self.num_shards = self.manifest["num_shards"]
        self.owned = set(range(self.num_shards)) if shards is None else set(shards)
        self._shards: dict[int, _Shard] = {}
        self._cache: OrderedDict = OrderedDict()
        self.cache_size = cache_size
        self.hits = self.misses = 0

    def _shard(self, video_id: str) -> _Shard:
        validate_video_id(video_id)
        shard = shard_of(video_id, self.num_shards)
        if shard not in self.owned:
            raise InputError(f"video {video_id}: lives in shard {shard}, which this reader does not own")
        loaded = self._shards.get(shard)
        if loaded is None:
            key = f"{shard:03d}"
            entry = self.manifest["shards"].get(key)
            if entry is not None and not storage.exists(str(_at(self.root, entry["captions"]))):
                # A writer committed a newer generation since we read the manifest.
                self.manifest = read_manifest(self.root)
                entry = self.manifest["shards"].get(key)
            if entry is None:
                raise InputError(f"video {video_id}: not in caption store {self.root}; "
                                 "build its captions with `lvr1 captions build`")
            loaded = self._shards[shard] = _Shard(self.root, key, entry)
        return loaded

    def video(self, video_id: str) -> VideoRecord:
        shard = self._shard(video_id)
        if video_id not in shard.videos:
            raise InputError(f"video {video_id}: not in caption store {self.root}; "
                             "build its captions with `lvr1 captions build`")
        return shard.videos[video_id]

    def get(self, video_id: str, ids) -> Caption:
        """The caption of segment ``ids`` (1 to 3 ints, 1-based) of ``video_id``."""
        key = (video_id, tuple(ids) if isinstance(ids, (list, tuple)) else ids)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            self.hits += 1
            return hit
        self.misses += 1
        video = self.video(video_id)
        ids = tree.check_ids(ids, video.width, what=f"segment of video {video_id}")
        width = video.width
        offset = sum(tree.num_segments(width, lv) for lv in tree.LEVELS[: len(ids) - 1])
        shard = self._shards[shard_of(video_id, self.num_shards)]
        result = self._row(shard, video_id, ids, shard.index[video_id] + offset + tree.flat_index(ids, width))
        self._cache[key] = result
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return result

    @staticmethod
    def _row(shard: _Shard, video_id: str, ids: tuple[int, ...], row: int) -> Caption:
        return Caption(video_id, ids, tree.level_of(ids), float(shard.start[row]), float(shard.end[row]),
                       shard.caption[row].as_py(), float(shard.seg_start[row]), float(shard.seg_end[row]),
                       tuple(shard.frame_time[row].as_py()), tuple(shard.frame_ids[row].as_py()))

    def tree_captions(self, video_id: str) -> list[Caption]:
        """Every caption of a video in tree order (high level first), bypassing the cache."""
        width = self.video(video_id).width
        shard = self._shards[shard_of(video_id, self.num_shards)]
        first = shard.index[video_id]
        return [self._row(shard, video_id, ids, first + i) for i, ids in enumerate(tree.all_ids(width))]

    def require(self, video_ids, what: str = "video(s)") -> "CaptionStore":
        """This store, if it holds every video in ``video_ids``; otherwise an :class:`InputError` naming
        (up to five of) the missing ones and how to caption them."""
        missing = sorted(set(video_ids) - set(self.video_ids()))
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise InputError(f"caption store {self.root}: lacks {what} {shown}; caption them with "
                             f"`lvr1 captions build --videos VIDEOS --out {self.root}` (or `lvr1 captions import`)")
        return self

    def video_ids(self) -> list[str]:
        ids = []
        for shard in sorted(self.owned):
            key = f"{shard:03d}"
            if key in self.manifest["shards"]:
                ids.extend(_read_table(self.root, self.manifest["shards"][key]["videos"],
                                       columns=["video_id"]).column("video_id").to_pylist())
        return sorted(ids)

    def stats(self) -> dict:
        """Counts per level and per shard, read from the shard files."""
        per_level = {lv: 0 for lv in tree.LEVELS}
        per_shard = {}
        for key, entry in sorted(self.manifest["shards"].items()):
            if int(key) not in self.owned:
                continue
            try:
                levels = _read_table(self.root, entry["captions"], columns=["level"]).column("level")
            except (OSError, pa.ArrowException) as exc:
                raise InputError(f"caption store shard {key} ({_at(self.root, entry['captions'])}): corrupt or "
                                 f"missing ({str(exc).splitlines()[0][:160]}); rebuild the store") from None
            counts = {lv: 0 for lv in tree.LEVELS}
            for value, count in zip(*np.unique(np.asarray(levels.to_pylist()), return_counts=True)):
                counts[str(value)] = int(count)
                per_level[str(value)] += int(count)
            per_shard[key] = {"videos": entry["num_videos"], "captions": entry["num_captions"], **counts}
        size = sum(size for name, size in storage.listing(str(_at(self.root, "shards"))).items()
                   if name.endswith(".parquet"))
        return {"store": str(self.root), "num_shards": self.num_shards,
                "videos": sum(s["videos"] for s in per_shard.values()),
                "captions": sum(per_level.values()), "per_level": per_level, "per_shard": per_shard,
                "bytes_on_disk": size}
