"""``lvr1 corpus check``: a folder of videos and an annotation file, read in full before training.

:func:`check_corpus` reads every row of the annotations (any format of
:mod:`longvideo_r1.corpus.annotations`, strictly), probes every video a row refers to (once each, in
threads) and collects every problem with the row it is in, the question id and the field:

- a row that cannot be read, a missing or empty required field, an unsafe video id;
- fewer than 2 or more than 10 options, an answer that is not one of the options;
- a clue interval that is malformed, has ``start >= end``, or lies outside the video (past its
  duration by more than one frame);
- a question id used twice (every question with it is a problem);
- a video with no file in the folder (the id is the file stem), one that cannot be decoded, or one
  too short for the caption tree (fewer frames than low-level segments);
- a video whose questions are put in two splits, or that no split names (see below).

A question with a problem is left out of the clean set (:attr:`CheckReport.questions`).

Splits are by video (a video's questions stay together): the ``split`` of each row when the rows
name one (lvr1, CG-Bench and MLVU rows may), else the ``splits.json`` beside the annotation file
(``{split: [video ids]}``), else :func:`assign_splits` over the videos of the clean set with the
``{"val": 0.1, "test": 0.1, "seed": 0}`` spec.

:func:`write_clean` writes the annotation file again, in its own format, without the questions that
have a problem (``--drop-invalid``); :func:`write_corpus` writes the normalized corpus folder the
pipeline reads (``questions.jsonl``, ``splits.json``, ``corpus.json``, ``videos/``).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from longvideo_r1.corpus.questions import Question
from longvideo_r1.corpus.annotations import (FIELDS, AnnotationError, Annotations, Item, annotation_files,
                                             parse_items, read_annotations, read_splits_json, resolve_format,
                                             splits_file)
from longvideo_r1.corpus.video import find_videos, probe_video
from longvideo_r1.errors import InputError

DEFAULT_SPLITS = {"val": 0.1, "test": 0.1, "seed": 0}
SPLIT_ORDER = ("train", "val", "test")
CLUE_TOLERANCE_FRAMES = 1
"""a clue may end this many frames after the last one (annotators round up)"""
PROBE_THREADS = 8
_ROW_SPOT = re.compile(r"^(.*) (?:row|line) (\d+)(?: qa (\d+))?$")


@dataclass
class Problem:
    """One problem: the question it is about (None when the row could not be read that far), the
    field at fault (None when it is the whole row), what is wrong and what to do, and the row."""

    qid: str | None
    field: str | None
    message: str
    where: str

    @classmethod
    def from_error(cls, error: AnnotationError) -> Problem:
        return cls(error.qid, error.field, error.message, error.where)

    def to_json(self) -> dict:
        return {"qid": self.qid, "field": self.field, "message": self.message, "where": self.where}

    def line(self) -> str:
        parts = [self.where]
        if self.qid is not None:
            parts.append(f"qid {self.qid}")
        if self.field is not None:
            parts.append(f"field {self.field}")
        return ": ".join([*parts, self.message])


@dataclass
class CheckReport:
    """What :func:`check_corpus` found."""

    format: str
    annotations: Path
    videos_dir: Path
    videos: dict[str, dict]
    """video id -> ``path`` (absolute), ``duration`` (s), ``num_frames``, ``fps``, ``width`` (of the caption
    tree), ``size`` ([w, h] pixels), ``has_subtitles``, ``subtitles`` (the .srt path or None); every video
    with at least one valid question (durations and frame counts are None when not probed)"""
    questions: list[Question]
    """the valid questions, in file order"""
    task_types: dict[str, tuple[str, ...]]
    """every task type of each valid question, by qid"""
    split_of: dict[str, str]
    """qid -> split of each valid question"""
    problems: list[Problem]
    seconds: float
    split_source: str = "spec"
    """where the splits came from: ``rows`` (each row's split), ``splits.json`` or ``spec`` (--val/--test/--seed)"""
    rows: int = 0
    """annotation rows read (a row of LVBench holds several questions)"""
    unused_videos: list[str] = field(default_factory=list)
    """videos in the folder that no annotation row refers to"""
    items: list[Item] = field(default_factory=list, repr=False)
    """the valid questions as read (their rows), for :func:`write_clean`"""
    probed: bool = True

    @property
    def ok(self) -> bool:
        return not self.problems

    def videos_of_split(self) -> dict[str, list[str]]:
        """``{split: [video ids]}`` of the valid questions (train, val, test first, then any others)."""
        by_split: dict[str, set[str]] = defaultdict(set)
        for q in self.questions:
            by_split[self.split_of[q.qid]].add(q.video_id)
        names = [s for s in SPLIT_ORDER if s in by_split] + sorted(set(by_split) - set(SPLIT_ORDER))
        return {s: sorted(by_split[s]) for s in names}

    def summary(self) -> dict:
        per_split = Counter(self.split_of[q.qid] for q in self.questions)
        per_task = Counter(t for q in self.questions for t in (self.task_types.get(q.qid) or ("(none)",)))
        durations = [v["duration"] for v in self.videos.values()]
        hours = round(sum(durations) / 3600, 3) if self.probed else None
        with_clues = sum(bool(q.clue_intervals) for q in self.questions)
        return {
            "format": self.format,
            "annotations": str(self.annotations),
            "videos_dir": str(self.videos_dir),
            "rows": self.rows,
            "videos": len(self.videos),
            "hours": hours,
            "questions": len(self.questions),
            "questions_per_split": {s: per_split[s] for s in self.videos_of_split()},
            "videos_per_split": {s: len(v) for s, v in self.videos_of_split().items()},
            "split_source": self.split_source,
            "questions_per_task": dict(sorted(per_task.items(), key=lambda kv: (-kv[1], kv[0]))),
            "with_clue_intervals": round(with_clues / len(self.questions), 4) if self.questions else 0.0,
            "videos_without_questions": len(self.unused_videos),
            "problems": len(self.problems),
            "seconds": round(self.seconds, 3),
        }

    def to_json(self) -> dict:
        return {**self.summary(), "problem_count": len(self.problems),
                "problems": [p.to_json() for p in self.problems], "splits": self.videos_of_split()}


# ====================================================================== splits

def split_spec(splits=None) -> dict:
    """``{"val", "test", "seed"}`` from a mapping (or an object with those attributes); defaults fill gaps."""
    if splits is None:
        return dict(DEFAULT_SPLITS)
    if not isinstance(splits, dict):
        splits = {k: getattr(splits, k) for k in DEFAULT_SPLITS if hasattr(splits, k)}
    unknown = sorted(set(splits) - set(DEFAULT_SPLITS))
    if unknown:
        raise InputError(f"corpus splits: unknown key {unknown[0]!r}; give val and test (fractions of the videos) "
                         "and seed, e.g. {val: 0.1, test: 0.1, seed: 0}")
    spec = {**DEFAULT_SPLITS, **{k: v for k, v in splits.items() if v is not None}}
    for name in ("val", "test"):
        value = spec[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise InputError(f"corpus splits: {name}={value!r}; give a fraction of the videos from 0 to below 1 "
                             "(e.g. 0.1)")
    if spec["val"] + spec["test"] >= 1:
        raise InputError(f"corpus splits: val={spec['val']} and test={spec['test']} leave no video for train; "
                         "make their sum less than 1")
    if isinstance(spec["seed"], bool) or not isinstance(spec["seed"], int):
        raise InputError(f"corpus splits: seed={spec['seed']!r}; give a whole number")
    return spec


def assign_splits(video_ids, val: float = 0.1, test: float = 0.1, seed: int = 0) -> dict[str, str]:
    """Video id -> ``train``/``val``/``test``: the sorted ids shuffled with ``seed``, then whole videos,
    ``round(n * fraction)`` of them, to test and val, the rest to train. With 3 or more videos each split
    of a positive fraction gets at least one video, and train always keeps at least one."""
    ids = sorted(set(video_ids))
    n = len(ids)
    order = [ids[i] for i in np.random.default_rng(seed).permutation(n)]
    n_val, n_test = round(n * val), round(n * test)
    floor_val = 1 if n >= 3 and val > 0 else 0
    floor_test = 1 if n >= 3 and test > 0 else 0
    n_val, n_test = max(n_val, floor_val), max(n_test, floor_test)
    while n_val + n_test > max(n - 1, 0) and (n_val > floor_val or n_test > floor_test):
        if n_val - floor_val >= n_test - floor_test:
            n_val -= 1
        else:
            n_test -= 1
    out = {v: "test" for v in order[:n_test]}
    out.update({v: "val" for v in order[n_test:n_test + n_val]})
    out.update({v: "train" for v in order[n_test + n_val:]})
    return out


# ====================================================================== the check

def _probe(video_id: str, path: Path):
    """``(video_id, VideoInfo or None, problem message or None)``."""
    try:
        info = probe_video(path, video_id)
    except InputError as exc:
        return video_id, None, str(exc)
    if info.num_frames < info.width ** 3:
        return video_id, info, (f"video {path}: {info.num_frames} frames ({info.duration:.1f} s) are too few for a "
                                f"caption tree of width {info.width}: it needs at least {info.width ** 3} frames "
                                "(one per low-level segment); use a longer video or drop its questions")
    return video_id, info, None


def _video_entry(path: Path, info) -> dict:
    srt = path.with_suffix(".srt")
    subtitles = info.subtitle_path if info is not None else (str(srt.resolve()) if srt.is_file() else None)
    entry = {"path": str(path.resolve()), "duration": None, "num_frames": None, "fps": None, "width": None,
             "size": None, "has_subtitles": subtitles is not None, "subtitles": subtitles}
    if info is not None:
        entry.update(duration=round(info.duration, 3), num_frames=info.num_frames, fps=info.fps, width=info.width,
                     size=[info.frame_width, info.frame_height])
    return entry


def _field(fmt: str, part: str, row: dict) -> str | None:
    if fmt == "mlvu" and part == "video":
        return "video_name" if row.get("video_name") is not None else "video"
    if fmt == "cgbench" and part == "answer" and row.get("right_answer") is None:
        return "answer"
    return FIELDS[fmt][part]


def check_corpus(videos_dir, annotations, fmt: str = "auto", splits=None, probe: bool = True) -> CheckReport:
    """Check every annotation row against the videos in ``videos_dir`` (see the module docstring).

    ``splits``: ``{"val": 0.1, "test": 0.1, "seed": 0}`` (the default) for annotations that name no
    split. ``probe=False`` only looks for the files (no decoding: durations, frame counts and the
    clue-versus-duration check are skipped). A file that cannot be read at all, an unknown format, a
    missing video folder or bad ``splits`` are an :class:`InputError`; everything else is a problem.
    """
    start = time.perf_counter()
    spec = split_spec(splits)
    annotations = Path(annotations)
    videos_dir = Path(videos_dir)
    try:
        found = dict(find_videos(videos_dir))
    except InputError as exc:
        if str(exc).startswith("video folder"):
            raise
        raise InputError(f"video folder {videos_dir}: {exc}; rename that video file (its name without the "
                         "extension is its id)") from None
    rows: Annotations = read_annotations(annotations)
    fmt = resolve_format(fmt, rows)
    items, errors = parse_items(rows, fmt, strict=True)
    problems = [Problem.from_error(e) for e in errors]
    bad: set[int] = set()

    def flag(i: int, part: str, message: str) -> None:
        item = items[i]
        problems.append(Problem(item.question.qid, _field(fmt, part, rows.rows[item.row].data), message, item.where))
        bad.add(i)

    # question ids
    by_qid: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        by_qid[item.question.qid].append(i)
    for qid, indices in by_qid.items():
        if len(indices) > 1:
            for i in indices:
                others = ", ".join(items[j].where for j in indices if j != i)
                flag(i, "qid", f"question id {qid!r} is used {len(indices)} times (also at {others}); give every "
                               "question its own id")

    # videos: a file for each, probed once
    by_video: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        by_video[item.question.video_id].append(i)
    infos: dict[str, object] = {}
    present = [v for v in sorted(by_video) if v in found]
    for video_id in sorted(set(by_video) - set(found)):
        for i in by_video[video_id]:
            flag(i, "video", f"no video file for id {video_id!r} in {videos_dir} (a video's id is its file name "
                             "without the extension); add the video or drop its questions (--drop-invalid)")
    if probe and present:
        with ThreadPoolExecutor(max_workers=min(PROBE_THREADS, len(present))) as pool:
            results = list(pool.map(lambda v: _probe(v, found[v]), present))
        for video_id, info, message in results:
            if message is not None:
                for i in by_video[video_id]:
                    flag(i, "video", message)
            else:
                infos[video_id] = info

    # clue intervals against the video's duration
    for i, item in enumerate(items):
        info = infos.get(item.question.video_id)
        if info is None or not item.question.clue_intervals:
            continue
        slack = CLUE_TOLERANCE_FRAMES / info.fps
        for k, (a, b) in enumerate(item.question.clue_intervals, start=1):
            if b > info.duration + slack or a >= info.duration:
                flag(i, "clues", f"clue interval {k} [{a:g}, {b:g}] s lies outside the video, which lasts "
                                 f"{info.duration:.2f} s ({found[item.question.video_id].name}); fix the interval "
                                 "or the video")
                break

    # splits, by video
    split_source, split_by_video = _splits(fmt, annotations, items, bad, spec, flag)
    clean = [i for i in range(len(items)) if i not in bad]
    if split_source == "spec":
        split_by_video = assign_splits({items[i].question.video_id for i in clean}, spec["val"], spec["test"],
                                       spec["seed"])

    kept = [items[i] for i in clean]
    used = {item.question.video_id for item in kept}
    videos = {v: _video_entry(found[v], infos.get(v)) for v in sorted(used)}
    problems.sort(key=_spot_key(rows))
    return CheckReport(fmt, annotations, videos_dir, videos, [it.question for it in kept],
                       {it.question.qid: it.tasks for it in kept if it.tasks},
                       {it.question.qid: split_by_video[it.question.video_id] for it in kept}, problems,
                       time.perf_counter() - start, split_source, len(rows.rows) + len(rows.errors),
                       sorted(set(found) - set(by_video)), kept, probe)


def _splits(fmt: str, annotations: Path, items: list[Item], bad: set[int], spec: dict, flag):
    """``(source, {video id: split})``; flags the questions of a video that is in two splits or in none."""
    by_video: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        by_video[item.question.video_id].append(i)
    out: dict[str, str] = {}
    if fmt != "videomme" and any(item.split for item in items):     # Video-MME's "split" is its duration class
        for video_id, indices in by_video.items():
            named = sorted({items[i].split for i in indices if items[i].split})
            if len(named) > 1:
                for i in indices:
                    flag(i, "split", f"video {video_id!r} has questions in splits {', '.join(named)}; the questions "
                                     "of a video must all be in one split (no video in two splits)")
            elif not named:
                for i in indices:
                    flag(i, "split", f"no row of video {video_id!r} names a split while other rows do; give every "
                                     "row a split, or none to split the videos by --val/--test/--seed")
            else:
                out[video_id] = named[0]
        return "rows", out
    file = splits_file(annotations)
    listed = read_splits_json(file)
    if listed is None:
        return "spec", out
    of_video: dict[str, list[str]] = defaultdict(list)
    for split, videos in listed.items():
        for video_id in videos:
            of_video[video_id].append(split)
    for video_id, indices in by_video.items():
        names = sorted(set(of_video.get(video_id, [])))
        if len(names) > 1:
            for i in indices:
                flag(i, "split", f"video {video_id!r} is in splits {', '.join(names)} of {file}; put it in one")
        elif not names:
            for i in indices:
                flag(i, "split", f"video {video_id!r} is in no split of {file}; add it to one (or delete the file "
                                 "to split the videos by --val/--test/--seed)")
        else:
            out[video_id] = names[0]
    return "splits.json", out


def _spot_key(rows: Annotations):
    order = {str(f): n for n, f in enumerate(rows.files)}

    def key(problem: Problem):
        m = _ROW_SPOT.match(problem.where)
        if not m:
            return (len(order), 0, 0)
        return (order.get(m.group(1), len(order)), int(m.group(2)), int(m.group(3) or 0))
    return key


# ====================================================================== writing

def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_clean(report: CheckReport, annotations, out) -> dict:
    """Write ``annotations`` again without the questions that have a problem, in the same format (a JSON
    list stays a list, JSON lines stay lines, Parquet stays Parquet; an LVBench row keeps only its valid
    ``qa`` items, a row left with no valid question is dropped). A folder of several files is written as
    a folder of the same file names. The ``splits.json`` beside the annotations, if any, is written beside
    ``out`` (its kept videos) unless one is there already. Returns counts and paths."""
    annotations, out = Path(annotations), Path(out)
    targets = clean_targets(annotations, out)
    rows = read_annotations(annotations)
    if len(rows.rows) + len(rows.errors) != report.rows:
        raise InputError(f"annotations {annotations}: {len(rows.rows) + len(rows.errors)} rows now, {report.rows} "
                         "when they were checked; check the file again before writing the cleaned copy")
    keep: dict[int, set[int] | None] = {}
    for item in report.items:
        if item.qa is None:
            keep[item.row] = None
        else:
            keep.setdefault(item.row, set()).add(item.qa)
    for target in targets.values():
        target.parent.mkdir(parents=True, exist_ok=True)

    written = {"out": str(out), "kept": len(report.items), "dropped": 0, "rows_kept": 0, "rows_dropped": 0}
    for file, target in targets.items():
        kept_rows = []
        for index, row in enumerate(rows.rows):
            if row.file != file:
                continue
            if index not in keep:
                written["rows_dropped"] += 1
                continue
            data = row.data
            if keep[index] is not None:
                data = {**data, "qa": [qa for k, qa in enumerate(data["qa"]) if k in keep[index]]}
            kept_rows.append(data)
        written["rows_kept"] += len(kept_rows)
        _write_rows(target, rows.files[file], kept_rows, file)
    written["rows_dropped"] += len(rows.errors)
    several = report.format == "lvbench"
    total = len(rows.errors) + sum(len(r.data["qa"]) if several and isinstance(r.data.get("qa"), list) else 1
                                   for r in rows.rows)
    written["dropped"] = total - len(report.items)
    listed = read_splits_json(splits_file(annotations))
    beside = splits_file(out)
    if listed is not None and not beside.exists():
        videos = {q.video_id for q in report.questions}
        beside.write_text(json.dumps({s: [v for v in vs if v in videos] for s, vs in listed.items()}, indent=1))
        written["splits"] = str(beside)
    return written


def clean_targets(annotations, out) -> dict[Path, Path]:
    """Each annotation file -> the path its cleaned copy goes to (``out``, or ``out/NAME`` for a folder of
    several files); an :class:`InputError` when ``out`` cannot be that (checked before a long check runs)."""
    annotations, out = Path(annotations), Path(out)
    sources = annotation_files(annotations)
    if out.resolve() == annotations.resolve() or out.resolve() in {f.resolve() for f in sources}:
        raise InputError(f"--drop-invalid {out}: that is the annotation file itself; write the cleaned copy to "
                         "another path")
    if len(sources) > 1:
        if out.exists() and not out.is_dir():
            raise InputError(f"--drop-invalid {out}: the annotations are a folder of {len(sources)} files, so the "
                             "cleaned copy is a folder of the same file names; give a folder path")
        return {f: out / f.name for f in sources}
    if out.is_dir():
        raise InputError(f"--drop-invalid {out}: a folder; give a file name such as {out / sources[0].name}")
    if out.suffix.lower() != sources[0].suffix.lower():
        raise InputError(f"--drop-invalid {out}: the annotations are a {sources[0].suffix or 'suffix-less'} file; "
                         f"give the output the same extension ({sources[0].suffix or 'none'}) so it is read the "
                         "same way")
    return {sources[0]: out}


def _write_rows(target: Path, kind: str, rows: list[dict], source: Path) -> None:
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pq.read_schema(source)

        def write(tmp):
            try:
                table = pa.Table.from_pylist(rows, schema=schema)
            except (pa.ArrowException, TypeError, ValueError):
                table = pa.Table.from_pylist(rows)
            pq.write_table(table, tmp)
    elif kind == "json":
        def write(tmp):
            tmp.write_text(json.dumps(rows, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    else:
        def write(tmp):
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    _write_atomic(target, write)


def write_corpus(report: CheckReport, out_dir) -> dict:
    """Write the normalized corpus folder the pipeline reads, from the valid questions of a check:

    - ``questions.jsonl``: one lvr1 row per question (qid, video_id, question, options, answer,
      clue_intervals, duration, task_type, task_types when several, split, data_source);
    - ``splits.json``: ``{split: [video ids]}`` (splits that hold questions);
    - ``corpus.json``: ``{"source": "folder", "format", "annotations", "videos_dir", "videos": [{"video_id",
      "path" (absolute), "duration", "num_frames", "fps", "width", "has_subtitles", "subtitles", "split",
      "questions"}]}``;
    - ``videos/``: a symbolic link to each video (and its .srt), so ``OUT/videos`` is a video folder as in
      the demo corpus; links of videos no longer in the corpus are removed.

    Only videos with at least one valid question are written. Returns a summary.
    """
    if not report.probed:
        raise InputError("corpus: the check ran without probing the videos (durations unknown); check again "
                         "with probing before writing the corpus folder")
    if not report.questions:
        raise InputError(f"corpus {report.annotations}: no valid question to write; fix the problems the check "
                         "lists first")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = report.videos_of_split()
    counts = Counter(q.video_id for q in report.questions)

    def questions(tmp):
        with open(tmp, "w", encoding="utf-8") as fh:
            for q in report.questions:
                row = {"qid": q.qid, "video_id": q.video_id, "question": q.question, "options": q.options,
                       "answer": q.answer, "clue_intervals": q.clue_intervals,
                       "duration": report.videos[q.video_id]["duration"], "task_type": q.task_type}
                tasks = report.task_types.get(q.qid) or ()
                if len(tasks) > 1:
                    row["task_types"] = list(tasks)
                row.update(split=report.split_of[q.qid], data_source=q.data_source)
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")

    _write_atomic(out / "questions.jsonl", questions)
    _write_atomic(out / "splits.json", lambda tmp: tmp.write_text(json.dumps(splits, indent=1)))
    split_of_video = {v: s for s, vs in splits.items() for v in vs}
    manifest = {"source": "folder", "format": report.format, "annotations": str(report.annotations.resolve()),
                "videos_dir": str(report.videos_dir.resolve()),
                "videos": [{"video_id": v, **{k: e[k] for k in ("path", "duration", "num_frames", "fps", "width",
                                                                   "has_subtitles", "subtitles")},
                            "split": split_of_video[v], "questions": counts[v]} for v, e in report.videos.items()]}
    _write_atomic(out / "corpus.json", lambda tmp: tmp.write_text(json.dumps(manifest, indent=1)))
    linked = _link_videos(out / "videos", report.videos)
    return {"out_dir": str(out), "videos": len(report.videos), "questions": len(report.questions),
            "splits": {s: len(vs) for s, vs in splits.items()}, "linked_videos": linked}


def _link_videos(folder: Path, videos: dict[str, dict]) -> bool:
    """Symbolic links ``folder/ID.ext`` (and ``ID.srt``) to each video; False when links cannot be made."""
    folder.mkdir(exist_ok=True)
    wanted: dict[str, Path] = {}
    for video_id, entry in videos.items():
        path = Path(entry["path"])
        wanted[path.name] = path
        if entry["subtitles"]:
            wanted[f"{video_id}.srt"] = Path(entry["subtitles"])
    for old in folder.iterdir():
        if old.is_symlink() and (old.name not in wanted or Path(os.readlink(old)) != wanted[old.name]):
            old.unlink()
    try:
        for name, target in wanted.items():
            link = folder / name
            if link.is_symlink() or link.exists():
                continue
            link.symlink_to(target)
    except OSError:
        return False
    return True
