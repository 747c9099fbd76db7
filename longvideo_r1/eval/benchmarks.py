"""Benchmark question files -> :class:`~longvideo_r1.agent.episode.Question` lists.

Every loader turns one public question format into the same thing: the question text, the options
as plain texts (lettered A, B, C, … in order), the answer letter, the video id (the caption store's
key: caption the benchmark's videos under these ids), the task type(s) and, where the benchmark has
them, clue intervals in seconds. A file may be JSON lines (``.jsonl``), a JSON list (``.json``) or
Parquet (``.parquet``); a folder means its ``questions.jsonl`` (the demo corpus) or else every such
file directly inside it, in name order. A bad or missing field is an :class:`InputError` naming the
file, the row (1-based; ``line N`` for JSON lines) and the field.

Options written with their letters (``"A. red"``, ``"(B) blue"``, ``"C) green"``) lose the prefix when
every option carries its own letter in order; options inside the question text (LVBench, some MLVU
exports: a first line with the question, then one ``(A) …`` line per option) are split off. The
answer may be a letter, a lettered option (``"(C) …"``) or, where the format gives the text of the
right option (MLVU), that text.

``demo`` — our corpus, ``questions.jsonl`` (``lvr1 corpus demo``)
    ``qid`` -> qid (else ``VIDEO:line``); ``video_id``; ``question``; ``options`` (texts);
    ``answer`` (letter); ``clue_intervals`` ``[[start, end], …]`` s; ``task_type``; ``split`` (or
    ``splits.json`` beside the file: ``{split: [video ids]}``); ``data_source`` (default ``lvr1_demo``).
    ``--split`` default ``test``; ``all`` takes every row.

``lvbench`` — LVBench ``video_info.meta.jsonl`` (HF ``THUDM/LVBench``), one line per video
    ``key`` -> video id; for each item of ``qa``: ``uid`` -> qid; ``question`` holds the question and
    four ``(A) …`` option lines -> question + options; ``answer`` (letter); ``question_type`` (a list:
    a question counts toward each of its types in the per-task table; the first is ``task_type``);
    ``time_reference`` (``"MM:SS-MM:SS"``, hours allowed, several pairs allowed) -> clue intervals;
    an empty or unreadable one leaves the question without clues (F1 is then not computed for it).
    Flattened rows (one question per row with ``key``, ``question``, ``answer``, as the reference
    evaluation reads them) load too. No splits. Data source ``lvbench``.

``videomme`` — Video-MME ``videomme/test-00000-of-00001.parquet`` (HF ``lmms-lab/Video-MME``)
    ``videoID`` (the YouTube id) -> video id; ``question_id`` -> qid; ``question``; ``options``
    (``["A. …", …]``) -> options; ``answer`` (letter); ``task_type``; ``duration``
    (``short``/``medium``/``long``) is the split: ``--split`` default ``long`` (the paper's "VideoMME
    long"), ``all`` for every row. No clue intervals: reward on the answer alone
    (data source ``videocaption_videomme``).

``mlvu`` — MLVU dev: lmms-eval's ``sy1998/MLVU_dev`` Parquet or the MLVU repository's
    ``json/*.json`` files
    ``video_name`` or ``video`` (file name; its extension and folders are dropped) -> video id;
    ``question_id`` -> qid (else ``VIDEO:row``); ``question`` (option lines inside it are split off);
    ``candidates`` -> options; ``answer`` (a letter, or the text of the right candidate) -> letter;
    ``task_type`` or ``question_type`` -> task type. No clue intervals, no splits. Data source
    ``mlvu``. (MLVU captions use a minimum tree width of 3; that is a matter for the captioner.)

``cgbench`` — CG-Bench ``cgbench.json`` / ``cgbench_mini.json`` (HF ``CG-Bench/CG-Bench``)
    ``qid``; ``video_uid`` -> video id; ``question``; ``choices`` -> options; ``right_answer``
    (letter; ``answer`` is the text of the right choice, used only when ``right_answer`` is absent);
    ``clue_intervals`` ``[[start, end], …]`` s; ``task_type``, ``question_type`` or ``sub_category``
    -> task type. No splits. Data source ``videocaption_cgbench`` (answer + localisation reward).

``--format auto`` reads the fields of the first row to tell the formats apart.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path

from longvideo_r1.agent.episode import Question
from longvideo_r1.corpus.video import validate_video_id
from longvideo_r1.errors import InputError

FORMATS = ("demo", "lvbench", "videomme", "mlvu", "cgbench")
LETTERS = "ABCDEFGHIJ"
DEFAULT_SPLIT = {"demo": "test", "videomme": "long"}
"""``--split`` when none is given; formats not listed take every row (``all``)."""
VIDEOMME_SPLITS = ("short", "medium", "long")
DATA_SOURCE = {"lvbench": "lvbench", "videomme": "videocaption_videomme", "mlvu": "mlvu",
               "cgbench": "videocaption_cgbench"}
_FILE_SUFFIXES = (".jsonl", ".json", ".parquet")
# path parts too generic to name a benchmark by (runs/demo-cpu/corpus/questions.jsonl -> demo-cpu)
_GENERIC_NAMES = {"questions", "corpus", "data", "json", "test", "dev", "annotations", "video_info", "videomme",
                  "eval", "benchmark", "benchmarks"}


@dataclass
class Benchmark:
    """The questions of one benchmark file (after the split), in file order."""

    name: str
    format: str
    path: Path
    split: str
    questions: list[Question]
    task_types: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """every task type of each question, by qid (LVBench questions have several)"""

    def tasks_of(self, question: Question) -> tuple[str, ...]:
        return self.task_types.get(question.qid) or ((question.task_type,) if question.task_type else ())


# ====================================================================== reading rows

def _fail(where: str, what: str) -> InputError:
    return InputError(f"{where}: {what}")


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        if (path / "questions.jsonl").is_file():
            return [path / "questions.jsonl"]
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(_FILE_SUFFIXES))
        if not files:
            raise InputError(f"benchmark {path}: the folder holds no questions.jsonl and no .jsonl, .json or "
                             ".parquet question files")
        return files
    if not path.is_file():
        raise InputError(f"benchmark file {path}: no such file; give a question file (.jsonl, .json, .parquet) "
                         "or a corpus folder holding questions.jsonl")
    return [path]


def read_rows(path: str | Path) -> list[tuple[str, dict]]:
    """Every row of a question file (or folder) as ``(where, row)``; ``where`` names file and row."""
    rows: list[tuple[str, dict]] = []
    for file in _files(Path(path)):
        rows.extend(_read_file(file))
    if not rows:
        raise InputError(f"benchmark {path}: no questions in it")
    return rows


def _read_file(file: Path) -> list[tuple[str, dict]]:
    out = []
    if file.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(file)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"benchmark file {file}: not a readable Parquet file "
                             f"({str(exc).splitlines()[0][:160]})") from None
        for n, row in enumerate(table.to_pylist(), start=1):
            out.append((f"{file} row {n}", row))
        return out
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"benchmark file {file}: cannot be read ({exc})") from None
    if file.suffix == ".jsonl" or (file.suffix != ".json" and not text.lstrip().startswith("[")):
        return _read_file_lines(file, text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):   # JSON lines in a .json file
            return _read_file_lines(file, text)
        raise InputError(f"benchmark file {file}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(data, dict):   # a file holding a single row
        data = [data]
    if not isinstance(data, list):
        raise InputError(f"benchmark file {file}: expected a JSON list of question objects")
    for n, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise InputError(f"benchmark file {file} row {n}: expected a JSON object")
        out.append((f"{file} row {n}", row))
    return out


def _read_file_lines(file: Path, text: str) -> list[tuple[str, dict]]:
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"benchmark file {file} line {n}: not valid JSON ({exc.msg}); fix the line") from None
        if not isinstance(row, dict):
            raise InputError(f"benchmark file {file} line {n}: expected a JSON object per line")
        out.append((f"{file} line {n}", row))
    return out


def detect_format(row: dict, where: str) -> str:
    """The format a row is written in, from its field names."""
    keys = set(row)
    if "key" in keys and ("qa" in keys or "question" in keys):
        return "lvbench"
    if "videoID" in keys or ("options" in keys and row.get("duration") in VIDEOMME_SPLITS):
        return "videomme"
    if "video_uid" in keys or "right_answer" in keys or "choices" in keys:
        return "cgbench"
    if "candidates" in keys or "video_name" in keys:
        return "mlvu"
    if "video_id" in keys and "question" in keys:
        return "demo"
    raise InputError(f"{where}: cannot tell the benchmark format from the fields ({', '.join(sorted(keys)[:12])}); "
                     f"pass --format {'|'.join(FORMATS)}")


# ====================================================================== field readers

def _get(row: dict, names: tuple[str, ...], where: str, required: bool = True):
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    if required:
        alternatives = f" (or {', '.join(repr(n) for n in names[1:])})" if len(names) > 1 else ""
        raise _fail(where, f"missing field {names[0]!r}{alternatives}")
    return None


def _text(value, where: str, name: str) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, f"field {name!r} must be non-empty text, got {value!r:.60}")
    return value.strip()


def _video_id(value, where: str, name: str, strip_extension: bool = False) -> str:
    text = _text(value, where, name)
    if strip_extension:
        text = re.split(r"[\\/]", text)[-1]
        text = re.sub(r"\.(mp4|mkv|webm|avi|mov|flv|m4v)$", "", text, flags=re.I)
    try:
        return validate_video_id(text)
    except InputError as exc:
        raise _fail(where, f"field {name!r}: {exc}") from None


_LETTERED = re.compile(r"^\s*\(?([A-J])\s*[.):]\s*(.*)$", re.S)
_OPTION_LINE = re.compile(r"^\s*(?:\(([A-J])\)|([A-J])[.)])\s*(.*)$")


def _options(value, where: str, name: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise _fail(where, f"field {name!r} must be a list of option texts, got {value!r:.60}")
    if not 2 <= len(value) <= len(LETTERS):
        raise _fail(where, f"field {name!r} has {len(value)} options; a question needs 2 to {len(LETTERS)}")
    texts = [_text(v, where, f"{name}[{i}]") for i, v in enumerate(value)]
    matches = [_LETTERED.match(t) for t in texts]
    if all(m and m.group(1) == LETTERS[i] and m.group(2).strip() for i, m in enumerate(matches)):
        texts = [m.group(2).strip() for m in matches]
    return texts


def split_inline_options(text: str) -> tuple[str, list[str]]:
    """``"Q?\\n(A) x\\n(B) y"`` -> ``("Q?", ["x", "y"])``; no option lines -> ``(text, [])``."""
    lines = text.strip().splitlines()
    for first, line in enumerate(lines):
        m = _OPTION_LINE.match(line)
        if m and (m.group(1) or m.group(2)) == "A" and first > 0:
            options = []
            for k, rest in enumerate(lines[first:]):
                m = _OPTION_LINE.match(rest)
                if not m or (m.group(1) or m.group(2)) != LETTERS[k]:
                    if rest.strip():
                        return text.strip(), []
                    continue
                options.append(m.group(3).strip())
            question = "\n".join(lines[:first]).strip()
            if len(options) >= 2 and question:
                return question, options
            break
    return text.strip(), []


def _letter(value, options: list[str], where: str, name: str, texts_allowed: bool = False) -> str:
    """An answer as its letter: ``"B"``, ``"(B) …"``/``"B. …"``, or (``texts_allowed``) an option's text."""
    text = _text(value, where, name)
    letters = LETTERS[: len(options)]
    if len(text) == 1 and text.upper() in letters:
        return text.upper()
    if texts_allowed:
        folded = [o.strip().casefold() for o in options]
        if text.casefold() in folded:
            return letters[folded.index(text.casefold())]
    m = _LETTERED.match(text)
    if m and m.group(1) in letters:
        return m.group(1)
    what = f"a letter {letters[0]}-{letters[-1]}" + (" or the text of one option" if texts_allowed else "")
    raise _fail(where, f"field {name!r} is {text!r:.60}; expected {what}")


def _number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and value == value and abs(value) != float("inf")


def _clues(value, where: str, name: str) -> list[list[float]] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise _fail(where, f"field {name!r} must be a list of [start, end] pairs in seconds, got {value!r:.60}")
    out = []
    for k, pair in enumerate(value):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, (list, tuple)) or len(pair) != 2 \
                or not all(_number(v) for v in pair) or pair[0] < 0 or pair[1] < pair[0]:
            raise _fail(where, f"field {name}[{k}] is {pair!r:.60}; each clue is [start, end] in seconds with "
                               "0 <= start <= end")
        out.append([float(pair[0]), float(pair[1])])
    return out or None


_CLOCK = r"(\d+(?::\d{1,2}){0,2}(?:\.\d+)?)"
_TIME_RANGE = re.compile(_CLOCK + r"\s*[-–~]\s*" + _CLOCK)


def _seconds(clock: str) -> float:
    total = 0.0
    for part in clock.split(":"):
        total = total * 60 + float(part)
    return total


def parse_time_reference(value) -> list[list[float]] | None:
    """LVBench ``time_reference`` (``"01:14-01:20"``, ``"1:02:03-1:02:10, 1:05:00-1:05:09"``) -> clues."""
    if not isinstance(value, str):
        return None
    out = []
    for a, b in _TIME_RANGE.findall(value):
        start, end = _seconds(a), _seconds(b)
        if end >= start:
            out.append([start, end])
    return out or None


def _task_list(value, where: str, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value.strip(),) if value.strip() else ()
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(v.strip() for v in value if v.strip())
    raise _fail(where, f"field {name!r} must be text or a list of texts, got {value!r:.60}")


# ====================================================================== one loader per format

Parsed = tuple[Question, tuple[str, ...], str | None]   # question, its task types, its split (or None)


def _demo(where: str, row: dict) -> list[Parsed]:
    video = _video_id(_get(row, ("video_id",), where), where, "video_id")
    options = _options(_get(row, ("options",), where), where, "options")
    answer = _letter(_get(row, ("answer",), where), options, where, "answer")
    tasks = _task_list(row.get("task_type"), where, "task_type")
    qid = _text(row["qid"], where, "qid") if row.get("qid") is not None else f"{video}:{where.rsplit(' ', 1)[-1]}"
    q = Question(video, _text(_get(row, ("question",), where), where, "question"), options, answer,
                 _clues(row.get("clue_intervals"), where, "clue_intervals"), qid, tasks[0] if tasks else None,
                 row.get("data_source") or "lvr1_demo")
    split = row.get("split")
    return [(q, tasks, split if isinstance(split, str) else None)]


def _lvbench_one(where: str, video: str, qa: dict) -> Parsed:
    raw = _text(_get(qa, ("question",), where), where, "question")
    question, options = split_inline_options(raw)
    if "options" in qa or "candidates" in qa:
        name = "options" if "options" in qa else "candidates"
        options = _options(qa[name], where, name)
    if not options:
        raise _fail(where, "field 'question' has no option lines: LVBench writes the question, then one "
                           "'(A) …' line per option")
    answer = _letter(_get(qa, ("answer",), where), options, where, "answer")
    qid = _text(qa["uid"], where, "uid") if qa.get("uid") is not None else f"{video}:{where.rsplit(' ', 1)[-1]}"
    tasks = _task_list(qa.get("question_type"), where, "question_type")
    clues = parse_time_reference(qa.get("time_reference"))
    return (Question(video, question, options, answer, clues, qid, tasks[0] if tasks else None,
                     DATA_SOURCE["lvbench"]), tasks, None)


def _lvbench(where: str, row: dict) -> list[Parsed]:
    video = _video_id(_get(row, ("key",), where), where, "key")
    if "qa" not in row:
        return [_lvbench_one(where, video, row)]
    items = row["qa"]
    if not isinstance(items, list):
        raise _fail(where, f"field 'qa' must be a list of questions, got {items!r:.60}")
    out = []
    for k, qa in enumerate(items, start=1):
        here = f"{where} qa {k}"
        if not isinstance(qa, dict):
            raise _fail(here, "expected an object with uid, question, answer")
        out.append(_lvbench_one(here, video, qa))
    return out


def _videomme(where: str, row: dict) -> list[Parsed]:
    video = _video_id(_get(row, ("videoID",), where), where, "videoID")
    options = _options(_get(row, ("options",), where), where, "options")
    answer = _letter(_get(row, ("answer",), where), options, where, "answer")
    qid = _text(_get(row, ("question_id",), where), where, "question_id")
    tasks = _task_list(row.get("task_type"), where, "task_type")
    duration = row.get("duration")
    if duration is not None and duration not in VIDEOMME_SPLITS:
        raise _fail(where, f"field 'duration' is {duration!r:.40}; Video-MME uses {', '.join(VIDEOMME_SPLITS)}")
    q = Question(video, _text(_get(row, ("question",), where), where, "question"), options, answer, None, qid,
                 tasks[0] if tasks else None, DATA_SOURCE["videomme"])
    return [(q, tasks, duration)]


def _mlvu(where: str, row: dict) -> list[Parsed]:
    name = "video_name" if row.get("video_name") is not None else "video"
    video = _video_id(_get(row, ("video_name", "video"), where), where, name, strip_extension=True)
    question, inline = split_inline_options(_text(_get(row, ("question",), where), where, "question"))
    if row.get("candidates") is not None:
        options = _options(row["candidates"], where, "candidates")
    elif inline:
        options = inline
    else:
        raise _fail(where, "missing field 'candidates' (and the question holds no '(A) …' option lines)")
    answer = _letter(_get(row, ("answer",), where), options, where, "answer", texts_allowed=True)
    qid = _text(row["question_id"], where, "question_id") if row.get("question_id") is not None \
        else f"{video}:{where.rsplit(' ', 1)[-1]}"
    task_field = "task_type" if row.get("task_type") is not None else "question_type"
    tasks = _task_list(row.get(task_field), where, task_field)
    q = Question(video, question, options, answer, None, qid, tasks[0] if tasks else None, DATA_SOURCE["mlvu"])
    split = row.get("split")
    return [(q, tasks, split if isinstance(split, str) else None)]


def _cgbench(where: str, row: dict) -> list[Parsed]:
    video = _video_id(_get(row, ("video_uid",), where), where, "video_uid")
    options = _options(_get(row, ("choices",), where), where, "choices")
    if row.get("right_answer") is not None:
        answer = _letter(row["right_answer"], options, where, "right_answer")
    else:
        answer = _letter(_get(row, ("right_answer", "answer"), where), options, where, "answer", texts_allowed=True)
    qid = _text(_get(row, ("qid",), where), where, "qid")
    task_field = next((f for f in ("task_type", "question_type", "sub_category") if row.get(f) is not None), None)
    tasks = _task_list(row.get(task_field), where, task_field) if task_field else ()
    q = Question(video, _text(_get(row, ("question",), where), where, "question"), options, answer,
                 _clues(row.get("clue_intervals"), where, "clue_intervals"), qid, tasks[0] if tasks else None,
                 DATA_SOURCE["cgbench"])
    split = row.get("split")
    return [(q, tasks, split if isinstance(split, str) else None)]


_LOADERS = {"demo": _demo, "lvbench": _lvbench, "videomme": _videomme, "mlvu": _mlvu, "cgbench": _cgbench}


# ====================================================================== the entry point

def _splits_json(path: Path) -> dict[str, str]:
    """video id -> split from the ``splits.json`` beside a demo question file (empty if none)."""
    folder = path if path.is_dir() else path.parent
    file = folder / "splits.json"
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"splits file {file}: not valid JSON ({exc}); fix or regenerate it") from None
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise InputError(f"splits file {file}: must map each split name to a list of video ids")
    return {video: split for split, videos in data.items() for video in videos}


def benchmark_name(path: Path, split: str) -> str:
    """A short name for result folders: the first non-generic part of the path, plus the split."""
    parts = [path.stem.split(".")[0] if path.suffix else path.name] + [p.name for p in path.resolve().parents]
    base = next((p for p in parts if p and p.lower() not in _GENERIC_NAMES and not p.startswith("test-0")),
                "benchmark")
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-.") or "benchmark"
    return base if split == "all" else f"{base}-{split}"


def load_benchmark(path: str | Path, fmt: str = "auto", split: str | None = None) -> Benchmark:
    """Read a benchmark question file (or folder) in ``fmt`` and keep the questions of ``split``."""
    path = Path(path)
    if fmt != "auto" and fmt not in FORMATS:
        raise InputError(f"benchmark format {fmt!r} is unknown: choose auto, {', '.join(FORMATS)}")
    rows = read_rows(path)
    if fmt == "auto":
        fmt = detect_format(rows[0][1], rows[0][0])
    parsed: list[Parsed] = []
    for where, row in rows:
        parsed.extend(_LOADERS[fmt](where, row))
    split = split or DEFAULT_SPLIT.get(fmt, "all")

    if fmt == "demo":
        by_video = _splits_json(path)
        parsed = [(q, t, s or by_video.get(q.video_id)) for q, t, s in parsed]
    known = list(dict.fromkeys(s for _, _, s in parsed if s))
    if fmt == "videomme":
        known = list(VIDEOMME_SPLITS)
        if split != "all" and any(s is None for _, _, s in parsed):
            raise InputError(f"benchmark {path}: --split {split} needs the field 'duration' on every row; "
                             "pass --split all")
    if split != "all":
        if split not in known:
            choices = ", ".join(["all", *known]) if known else "all (this benchmark has no splits)"
            raise InputError(f"split {split!r} is not in benchmark {path} ({fmt}): choose {choices} with --split")
        parsed = [p for p in parsed if p[2] == split]

    seen: dict[str, str] = {}
    for q, _, _ in parsed:
        if q.qid in seen:
            raise InputError(f"benchmark {path}: question id {q.qid!r} appears twice; question ids must be unique "
                             "(results are resumed by them)")
        seen[q.qid] = q.video_id
    if not parsed:
        raise InputError(f"benchmark {path}: no questions in split {split!r}")
    return Benchmark(benchmark_name(path, split), fmt, path, split, [q for q, _, _ in parsed],
                     {q.qid: t for q, t, _ in parsed if t})
