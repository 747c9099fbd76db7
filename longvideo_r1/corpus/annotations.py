"""Annotation files -> :class:`~longvideo_r1.agent.episode.Question` lists.

Every loader turns one public question format into the same thing: the question text, the options
as plain texts (lettered A, B, C, … in order), the answer letter, the video id (the file stem of the
video; the caption store's key), the task type(s) and, where the format has them, clue intervals in
seconds. A file may be JSON lines (``.jsonl``), a JSON list (``.json``) or Parquet (``.parquet``); a
folder means its ``questions.jsonl`` (a corpus folder) or else every such file directly inside it, in
name order.

A bad or missing field is an :class:`AnnotationError` (an :class:`InputError`) that names the file,
the row (1-based; ``line N`` for JSON lines), the question id when it could be read, and the field.
:func:`load_benchmark` (``lvr1 eval``) raises the first one; :func:`parse_items` collects them all
(``lvr1 corpus check``, :mod:`longvideo_r1.corpus.check`).

Options written with their letters (``"A. red"``, ``"(B) blue"``, ``"C) green"``) lose the prefix when
every option carries its own letter in order; options inside the question text (LVBench, some MLVU
exports: a first line with the question, then one ``(A) …`` line per option) are split off. The
answer may be a letter, a lettered option (``"(C) …"``) or, where the format gives the text of the
right option (MLVU), that text.

``lvr1`` — our own format, ``questions.jsonl`` of a corpus folder (``lvr1 corpus demo``, ``lvr1 corpus
check``); ``demo`` is accepted as another name for it
    ``qid`` -> qid (else ``VIDEO:line``); ``video_id``; ``question``; ``options`` (texts);
    ``answer`` (letter); ``clue_intervals`` ``[[start, end], …]`` s; ``task_type``; ``split`` (or
    ``splits.json`` beside the file: ``{split: [video ids]}``); ``data_source`` (default ``lvr1_demo``).
    ``--split`` default ``test``; ``all`` takes every row.

``lvbench`` — LVBench ``video_info.meta.jsonl`` (HF ``THUDM/LVBench``), one line per video
    ``key`` -> video id; for each item of ``qa``: ``uid`` -> qid; ``question`` holds the question and
    four ``(A) …`` option lines -> question + options; ``answer`` (letter); ``question_type`` (a list:
    a question counts toward each of its types in the per-task table; the first is ``task_type``);
    ``time_reference`` (``"MM:SS-MM:SS"``, hours allowed, several pairs allowed) -> clue intervals;
    an empty or unreadable one leaves the question without clues (F1 is then not computed for it;
    ``lvr1 corpus check`` reports an unreadable one). Flattened rows (one question per row with
    ``key``, ``question``, ``answer``, as the reference evaluation reads them) load too. No splits.
    Data source ``lvbench``.

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
    ``task_type`` or ``question_type`` -> task type; ``split`` if present. No clue intervals. Data
    source ``mlvu``. (MLVU captions use a minimum tree width of 3; that is a matter for the captioner.)

``cgbench`` — CG-Bench ``cgbench.json`` / ``cgbench_mini.json`` (HF ``CG-Bench/CG-Bench``)
    ``qid``; ``video_uid`` -> video id; ``question``; ``choices`` -> options; ``right_answer``
    (letter; ``answer`` is the text of the right choice, used only when ``right_answer`` is absent);
    ``clue_intervals`` ``[[start, end], …]`` s; ``task_type``, ``question_type`` or ``sub_category``
    -> task type; ``split`` if present. Data source ``videocaption_cgbench`` (answer + localisation
    reward).

``--format auto`` reads the fields of the first row to tell the formats apart.

Strict reading (``strict=True``, what ``lvr1 corpus check`` uses) also refuses a clue interval with
``start >= end``, an LVBench ``time_reference`` that is given but cannot be read, and a ``split``
that is not text; the lenient reading (``lvr1 eval``) takes them as the benchmarks ship them.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path

from longvideo_r1.corpus.questions import Question
from longvideo_r1.corpus.video import validate_video_id
from longvideo_r1.errors import InputError

FORMATS = ("lvr1", "cgbench", "lvbench", "videomme", "mlvu")
FORMAT_ALIASES = {"demo": "lvr1"}
"""other names a format is accepted under (``demo`` was the name of ``lvr1``)"""
LETTERS = "ABCDEFGHIJ"
MIN_OPTIONS, MAX_OPTIONS = 2, len(LETTERS)
DEFAULT_SPLIT = {"lvr1": "test", "videomme": "long"}
"""``--split`` when none is given; formats not listed take every row (``all``)."""
VIDEOMME_SPLITS = ("short", "medium", "long")
DATA_SOURCE = {"lvr1": "lvr1_demo", "lvbench": "lvbench", "videomme": "videocaption_videomme", "mlvu": "mlvu",
               "cgbench": "videocaption_cgbench"}
FIELDS = {
    "lvr1": {"qid": "qid", "video": "video_id", "options": "options", "answer": "answer",
             "clues": "clue_intervals", "split": "split"},
    "cgbench": {"qid": "qid", "video": "video_uid", "options": "choices", "answer": "right_answer",
                "clues": "clue_intervals", "split": "split"},
    "lvbench": {"qid": "uid", "video": "key", "options": "question", "answer": "answer",
                "clues": "time_reference", "split": None},
    "videomme": {"qid": "question_id", "video": "videoID", "options": "options", "answer": "answer",
                 "clues": None, "split": "duration"},
    "mlvu": {"qid": "question_id", "video": "video_name", "options": "candidates", "answer": "answer",
             "clues": None, "split": "split"},
}
"""the name, in each format, of the field that holds each part of a question (for problem reports)"""
_FILE_SUFFIXES = (".jsonl", ".json", ".parquet")
# path parts too generic to name a benchmark by (runs/demo-cpu/corpus/questions.jsonl -> demo-cpu)
_GENERIC_NAMES = {"questions", "corpus", "data", "json", "test", "dev", "annotations", "video_info", "videomme",
                  "eval", "benchmark", "benchmarks"}


class AnnotationError(InputError):
    """One problem with one annotation row (or one question of it).

    ``where`` names the file and the row (``FILE row 3``, ``FILE line 7 qa 2``); ``qid`` is the
    question id when it could be read (else None); ``field`` the field at fault (None when the
    whole row is, e.g. a line that is not JSON); ``message`` says what is wrong and what is expected.
    ``str()`` is ``"WHERE: MESSAGE"``.
    """

    def __init__(self, where: str, message: str, field: str | None = None, qid: str | None = None):
        super().__init__(f"{where}: {message}")
        self.where, self.message, self.field, self.qid = where, message, field, qid

    def __reduce__(self):            # pickled whole (process pools, Ray), not from str(self) alone
        return type(self), (self.where, self.message, self.field, self.qid)


@dataclass
class Row:
    """One row of an annotation file as read."""

    where: str
    data: dict
    file: Path
    index: int
    """0-based position among the rows read from ``file``"""


@dataclass
class Annotations:
    """Every row of an annotation file (or of the files of a folder), and the lines that could not be read."""

    path: Path
    files: dict[Path, str]
    """each file read, in order, and how it is written: ``jsonl``, ``json`` (a JSON list) or ``parquet``"""
    rows: list[Row]
    errors: list[AnnotationError] = field(default_factory=list)


@dataclass
class Item:
    """One question read from an annotation row."""

    question: Question
    tasks: tuple[str, ...]
    split: str | None
    where: str
    row: int
    """index of its row in :attr:`Annotations.rows`"""
    qa: int | None = None
    """0-based index of the question in an LVBench row's ``qa`` list (None for a one-question row)"""


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

def _fail(where: str, field_name: str | None, what: str) -> AnnotationError:
    return AnnotationError(where, what, field_name)


@contextmanager
def _about(qid: str | None):
    """Errors raised inside carry ``qid`` (when they do not name one already)."""
    try:
        yield
    except AnnotationError as exc:
        if exc.qid is None:
            exc.qid = qid
        raise


def annotation_files(path: Path) -> list[Path]:
    """The question files of an annotation path: the file itself, a folder's questions.jsonl, or its files."""
    if path.is_dir():
        if (path / "questions.jsonl").is_file():
            return [path / "questions.jsonl"]
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(_FILE_SUFFIXES))
        if not files:
            raise InputError(f"annotations {path}: the folder holds no questions.jsonl and no .jsonl, .json or "
                             ".parquet question files; give the annotation file itself")
        return files
    if not path.is_file():
        raise InputError(f"annotation file {path}: no such file; give a question file (.jsonl, .json, .parquet) "
                         "or a corpus folder holding questions.jsonl")
    return [path]


def read_annotations(path: str | Path) -> Annotations:
    """Every row of a question file (or folder). A line of a JSON-lines file that is not a JSON object
    is collected in ``errors`` (the other lines are read); a file that cannot be read at all is an
    :class:`InputError`."""
    path = Path(path)
    out = Annotations(path, {}, [])
    for file in annotation_files(path):
        kind, rows, errors = _read_file(file)
        out.files[file] = kind
        out.rows.extend(rows)
        out.errors.extend(errors)
    if not out.rows and not out.errors:
        raise InputError(f"annotations {path}: no questions in it")
    return out


def read_rows(path: str | Path) -> list[tuple[str, dict]]:
    """Every row of a question file (or folder) as ``(where, row)``; the first unreadable line is raised."""
    annotations = read_annotations(path)
    if annotations.errors:
        raise annotations.errors[0]
    return [(r.where, r.data) for r in annotations.rows]


def _read_file(file: Path) -> tuple[str, list[Row], list[AnnotationError]]:
    if file.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(file)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"annotation file {file}: not a readable Parquet file "
                             f"({str(exc).splitlines()[0][:160]}); re-export it") from None
        return "parquet", [Row(f"{file} row {n + 1}", row, file, n) for n, row in enumerate(table.to_pylist())], []
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"annotation file {file}: cannot be read ({exc}); save it as UTF-8 text") from None
    if file.suffix == ".jsonl" or (file.suffix != ".json" and not text.lstrip().startswith("[")):
        return ("jsonl", *_read_file_lines(file, text))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):   # JSON lines in a .json file
            return ("jsonl", *_read_file_lines(file, text))
        raise InputError(f"annotation file {file}: not valid JSON ({exc.msg} at line {exc.lineno}); "
                         "fix it there") from None
    if isinstance(data, dict):   # a file holding a single row
        data = [data]
    if not isinstance(data, list):
        raise InputError(f"annotation file {file}: expected a JSON list of question objects")
    rows, errors = [], []
    for n, row in enumerate(data, start=1):
        if isinstance(row, dict):
            rows.append(Row(f"{file} row {n}", row, file, len(rows)))
        else:
            errors.append(AnnotationError(f"{file} row {n}", f"expected a JSON object, got {row!r:.60}"))
    return "json", rows, errors


def _read_file_lines(file: Path, text: str) -> tuple[list[Row], list[AnnotationError]]:
    rows, errors = [], []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(AnnotationError(f"{file} line {n}", f"not valid JSON ({exc.msg}); fix the line"))
            continue
        if not isinstance(row, dict):
            errors.append(AnnotationError(f"{file} line {n}", "expected a JSON object per line"))
            continue
        rows.append(Row(f"{file} line {n}", row, file, len(rows)))
    return rows, errors


def detect_format(row: dict, where: str, what: str = "annotation") -> str:
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
        return "lvr1"
    raise InputError(f"{where}: cannot tell the {what} format from the fields ({', '.join(sorted(keys)[:12])}); "
                     f"pass --format {'|'.join(FORMATS)}")


def resolve_format(fmt: str, annotations: Annotations, what: str = "annotation") -> str:
    """``fmt`` as one of :data:`FORMATS`: an alias resolved, ``auto`` detected from the first row."""
    fmt = FORMAT_ALIASES.get(fmt, fmt)
    if fmt != "auto" and fmt not in FORMATS:
        raise InputError(f"{what} format {fmt!r} is unknown: choose auto, {', '.join(FORMATS)}")
    if fmt != "auto":
        return fmt
    if not annotations.rows:
        raise annotations.errors[0]
    return detect_format(annotations.rows[0].data, annotations.rows[0].where, what)


# ====================================================================== field readers

def _get(row: dict, names: tuple[str, ...], where: str, required: bool = True):
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    if required:
        alternatives = f" (or {', '.join(repr(n) for n in names[1:])})" if len(names) > 1 else ""
        raise _fail(where, names[0], f"missing field {names[0]!r}{alternatives}; add it")
    return None


def _text(value, where: str, name: str, field_name: str | None = None) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, field_name or name, f"field {name!r} must be non-empty text, got {value!r:.60}")
    return value.strip()


def _raw_qid(row: dict, names: tuple[str, ...]) -> str | None:
    """The question id as written, if it reads as one (for problem reports before the row is read)."""
    for name in names:
        value = row.get(name)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
            return str(value).strip()
    return None


def _video_id(value, where: str, name: str, strip_extension: bool = False) -> str:
    text = _text(value, where, name)
    if strip_extension:
        text = re.split(r"[\\/]", text)[-1]
        text = re.sub(r"\.(mp4|mkv|webm|avi|mov|flv|m4v)$", "", text, flags=re.I)
    try:
        return validate_video_id(text)
    except InputError as exc:
        raise _fail(where, name, f"field {name!r}: {exc}") from None


_LETTERED = re.compile(r"^\s*\(?([A-J])\s*[.):]\s*(.*)$", re.S)
_OPTION_LINE = re.compile(r"^\s*(?:\(([A-J])\)|([A-J])[.)])\s*(.*)$")


def _options(value, where: str, name: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise _fail(where, name, f"field {name!r} must be a list of option texts, got {value!r:.60}")
    if not MIN_OPTIONS <= len(value) <= MAX_OPTIONS:
        raise _fail(where, name, f"field {name!r} has {len(value)} options; a question needs {MIN_OPTIONS} "
                                 f"to {MAX_OPTIONS}")
    texts = [_text(v, where, f"{name}[{i}]", name) for i, v in enumerate(value)]
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
                if not m or k >= len(LETTERS) or (m.group(1) or m.group(2)) != LETTERS[k]:
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
    raise _fail(where, name, f"field {name!r} is {text!r:.60}, not among the {len(options)} options; "
                             f"expected {what}")


def _number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and value == value and abs(value) != float("inf")


def _clues(value, where: str, name: str, strict: bool = False) -> list[list[float]] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise _fail(where, name, f"field {name!r} must be a list of [start, end] pairs in seconds, got {value!r:.60}")
    out = []
    for k, pair in enumerate(value):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, (list, tuple)) or len(pair) != 2 \
                or not all(_number(v) for v in pair) or pair[0] < 0 or pair[1] < pair[0] \
                or (strict and pair[1] == pair[0]):
            rule = "0 <= start < end" if strict else "0 <= start <= end"
            raise _fail(where, name, f"field {name}[{k}] is {pair!r:.60}; each clue is [start, end] in seconds "
                                     f"with {rule}")
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


def _strict_time_reference(value, where: str) -> list[list[float]] | None:
    """``time_reference`` read strictly: empty is no clue; anything else must be readable ranges, start < end."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    pairs = _TIME_RANGE.findall(value) if isinstance(value, str) else []
    if not pairs:
        raise _fail(where, "time_reference", f"field 'time_reference' is {value!r:.60}; write clue ranges as "
                                             "'MM:SS-MM:SS' (hours allowed, several separated by commas) or "
                                             "leave it empty")
    out = []
    for k, (a, b) in enumerate(pairs):
        start, end = _seconds(a), _seconds(b)
        if end <= start:
            raise _fail(where, "time_reference", f"field 'time_reference' range {k + 1} ({a}-{b}) ends before "
                                                 "it starts; each range is start-end with start < end")
        out.append([start, end])
    return out


def _task_list(value, where: str, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value.strip(),) if value.strip() else ()
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(v.strip() for v in value if v.strip())
    raise _fail(where, name, f"field {name!r} must be text or a list of texts, got {value!r:.60}")


def _split(row: dict, where: str, strict: bool) -> str | None:
    split = row.get("split")
    if isinstance(split, str) and split.strip():
        return split.strip()
    if strict and split is not None and split != "":
        raise _fail(where, "split", f"field 'split' must be a split name such as train, val or test, "
                                    f"got {split!r:.60}")
    return None


def _row_number(where: str) -> str:
    return where.rsplit(" ", 1)[-1]


# ====================================================================== one loader per format
# Each returns one entry per question of the row: (question, its task types, its split or None),
# or the AnnotationError of that question (LVBench rows hold several questions).

Parsed = tuple[Question, tuple[str, ...], str | None]


def _lvr1(where: str, row: dict, strict: bool) -> list[Parsed | AnnotationError]:
    with _about(_raw_qid(row, ("qid",))):
        video = _video_id(_get(row, ("video_id",), where), where, "video_id")
        qid = _text(row["qid"], where, "qid") if row.get("qid") is not None else f"{video}:{_row_number(where)}"
        with _about(qid):
            question = _text(_get(row, ("question",), where), where, "question")
            options = _options(_get(row, ("options",), where), where, "options")
            answer = _letter(_get(row, ("answer",), where), options, where, "answer")
            tasks = _task_list(row.get("task_type"), where, "task_type")
            clues = _clues(row.get("clue_intervals"), where, "clue_intervals", strict)
            source = row.get("data_source") or DATA_SOURCE["lvr1"]
            if not isinstance(source, str):
                raise _fail(where, "data_source", f"field 'data_source' must be text, got {source!r:.60}")
            q = Question(video, question, options, answer, clues, qid, tasks[0] if tasks else None, source)
            return [(q, tasks, _split(row, where, strict))]


def _lvbench_one(where: str, video: str, qa: dict, strict: bool) -> Parsed:
    raw = _text(_get(qa, ("question",), where), where, "question")
    question, options = split_inline_options(raw)
    if "options" in qa or "candidates" in qa:
        name = "options" if "options" in qa else "candidates"
        options = _options(qa[name], where, name)
    if not options:
        raise _fail(where, "question", "field 'question' has no option lines: LVBench writes the question, then "
                                       f"one '(A) …' line per option ({MIN_OPTIONS} to {MAX_OPTIONS} options)")
    answer = _letter(_get(qa, ("answer",), where), options, where, "answer")
    qid = _text(qa["uid"], where, "uid") if qa.get("uid") is not None else f"{video}:{_row_number(where)}"
    tasks = _task_list(qa.get("question_type"), where, "question_type")
    if strict:
        clues = _strict_time_reference(qa.get("time_reference"), where)
    else:
        clues = parse_time_reference(qa.get("time_reference"))
    return (Question(video, question, options, answer, clues, qid, tasks[0] if tasks else None,
                     DATA_SOURCE["lvbench"]), tasks, None)


def _lvbench(where: str, row: dict, strict: bool) -> list[Parsed | AnnotationError]:
    if "qa" not in row:
        with _about(_raw_qid(row, ("uid",))):
            video = _video_id(_get(row, ("key",), where), where, "key")
            return [_lvbench_one(where, video, row, strict)]
    items = row["qa"]
    video = _video_id(_get(row, ("key",), where), where, "key")
    if not isinstance(items, list):
        raise _fail(where, "qa", f"field 'qa' must be a list of questions, got {items!r:.60}")
    out: list[Parsed | AnnotationError] = []
    for k, qa in enumerate(items, start=1):
        here = f"{where} qa {k}"
        if not isinstance(qa, dict):
            out.append(_fail(here, "qa", "expected an object with uid, question, answer"))
            continue
        try:
            with _about(_raw_qid(qa, ("uid",))):
                out.append(_lvbench_one(here, video, qa, strict))
        except AnnotationError as exc:
            out.append(exc)
    return out


def _videomme(where: str, row: dict, strict: bool) -> list[Parsed | AnnotationError]:
    with _about(_raw_qid(row, ("question_id",))):
        video = _video_id(_get(row, ("videoID",), where), where, "videoID")
        qid = _text(_get(row, ("question_id",), where), where, "question_id")
        options = _options(_get(row, ("options",), where), where, "options")
        answer = _letter(_get(row, ("answer",), where), options, where, "answer")
        tasks = _task_list(row.get("task_type"), where, "task_type")
        duration = row.get("duration")
        if duration is not None and duration not in VIDEOMME_SPLITS:
            raise _fail(where, "duration", f"field 'duration' is {duration!r:.40}; Video-MME uses "
                                           f"{', '.join(VIDEOMME_SPLITS)}")
        q = Question(video, _text(_get(row, ("question",), where), where, "question"), options, answer, None, qid,
                     tasks[0] if tasks else None, DATA_SOURCE["videomme"])
        return [(q, tasks, duration)]


def _mlvu(where: str, row: dict, strict: bool) -> list[Parsed | AnnotationError]:
    with _about(_raw_qid(row, ("question_id",))):
        name = "video_name" if row.get("video_name") is not None else "video"
        video = _video_id(_get(row, ("video_name", "video"), where), where, name, strip_extension=True)
        qid = _text(row["question_id"], where, "question_id") if row.get("question_id") is not None \
            else f"{video}:{_row_number(where)}"
        with _about(qid):
            question, inline = split_inline_options(_text(_get(row, ("question",), where), where, "question"))
            if row.get("candidates") is not None:
                options = _options(row["candidates"], where, "candidates")
            elif inline:
                options = inline
            else:
                raise _fail(where, "candidates", "missing field 'candidates' (and the question holds no '(A) …' "
                                                 "option lines); add the options")
            answer = _letter(_get(row, ("answer",), where), options, where, "answer", texts_allowed=True)
            task_field = "task_type" if row.get("task_type") is not None else "question_type"
            tasks = _task_list(row.get(task_field), where, task_field)
            q = Question(video, question, options, answer, None, qid, tasks[0] if tasks else None, DATA_SOURCE["mlvu"])
            return [(q, tasks, _split(row, where, strict))]


def _cgbench(where: str, row: dict, strict: bool) -> list[Parsed | AnnotationError]:
    with _about(_raw_qid(row, ("qid",))):
        video = _video_id(_get(row, ("video_uid",), where), where, "video_uid")
        qid = _text(_get(row, ("qid",), where), where, "qid")
        question = _text(_get(row, ("question",), where), where, "question")
        options = _options(_get(row, ("choices",), where), where, "choices")
        if row.get("right_answer") is not None:
            answer = _letter(row["right_answer"], options, where, "right_answer")
        else:
            answer = _letter(_get(row, ("right_answer", "answer"), where), options, where, "answer",
                             texts_allowed=True)
        task_field = next((f for f in ("task_type", "question_type", "sub_category") if row.get(f) is not None), None)
        tasks = _task_list(row.get(task_field), where, task_field) if task_field else ()
        q = Question(video, question, options, answer,
                     _clues(row.get("clue_intervals"), where, "clue_intervals", strict), qid,
                     tasks[0] if tasks else None, DATA_SOURCE["cgbench"])
        return [(q, tasks, _split(row, where, strict))]


_LOADERS = {"lvr1": _lvr1, "lvbench": _lvbench, "videomme": _videomme, "mlvu": _mlvu, "cgbench": _cgbench}


def parse_items(annotations: Annotations, fmt: str, strict: bool = False) -> tuple[list[Item], list[AnnotationError]]:
    """Every question of every row in ``fmt`` (one of :data:`FORMATS`), and every row or question that
    could not be read (the rows of ``annotations.errors`` first). Nothing is raised for a bad row."""
    loader = _LOADERS[FORMAT_ALIASES.get(fmt, fmt)]
    items: list[Item] = []
    errors: list[AnnotationError] = list(annotations.errors)
    for index, row in enumerate(annotations.rows):
        try:
            parsed = loader(row.where, row.data, strict)
        except AnnotationError as exc:
            errors.append(exc)
            continue
        several = "qa" in row.data and fmt == "lvbench"
        for k, entry in enumerate(parsed):
            if isinstance(entry, AnnotationError):
                errors.append(entry)
                continue
            q, tasks, split = entry
            where = f"{row.where} qa {k + 1}" if several else row.where
            items.append(Item(q, tasks, split, where, index, k if several else None))
    return items, errors


# ====================================================================== splits.json

def read_splits_json(file: Path) -> dict[str, list[str]] | None:
    """``{split: [video ids]}`` from a ``splits.json`` (None when there is no such file)."""
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"splits file {file}: not valid JSON ({exc}); fix or regenerate it") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and k and isinstance(v, list)
                                             and all(isinstance(x, str) for x in v) for k, v in data.items()):
        raise InputError(f"splits file {file}: must map each split name to a list of video ids, "
                         'e.g. {"train": ["v1", "v2"], "test": ["v3"]}')
    return data


def splits_file(path: Path) -> Path:
    """The ``splits.json`` that belongs to an annotation file (beside it) or a corpus folder (inside it)."""
    return (path if path.is_dir() else path.parent) / "splits.json"


def _splits_json(path: Path) -> dict[str, str]:
    """video id -> split from the ``splits.json`` beside an lvr1 question file (empty if none)."""
    data = read_splits_json(splits_file(path)) or {}
    return {video: split for split, videos in data.items() for video in videos}


# ====================================================================== the entry point

def benchmark_name(path: Path, split: str) -> str:
    """A short name for result folders: the first non-generic part of the path, plus the split."""
    parts = [path.stem.split(".")[0] if path.suffix else path.name] + [p.name for p in path.resolve().parents]
    base = next((p for p in parts if p and p.lower() not in _GENERIC_NAMES and not p.startswith("test-0")),
                "benchmark")
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-.") or "benchmark"
    return base if split == "all" else f"{base}-{split}"


def load_benchmark(path: str | Path, fmt: str = "auto", split: str | None = None) -> Benchmark:
    """Read a benchmark question file (or folder) in ``fmt`` and keep the questions of ``split``.

    The first bad row is raised (an :class:`AnnotationError`); ``lvr1 corpus check`` lists them all.
    """
    path = Path(path)
    annotations = read_annotations(path)
    if annotations.errors:
        raise annotations.errors[0]
    fmt = resolve_format(fmt, annotations, "benchmark")
    items, errors = parse_items(annotations, fmt)
    if errors:
        raise errors[0]
    parsed = [(i.question, i.tasks, i.split) for i in items]
    split = split or DEFAULT_SPLIT.get(fmt, "all")

    if fmt == "lvr1":
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
