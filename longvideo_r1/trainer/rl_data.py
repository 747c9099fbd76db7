"""RL rows for verl (``lvr1 data rl``).

One verl row per question (PROTOCOL §4): ``data_source``, ``prompt`` (system + first user turn, as
``Tools.start(question, config).prompt()`` builds them), ``ability``, ``reward_model`` and
``extra_info`` (the reward's geometry plus what rebuilds the :class:`Question`), in Parquet.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from longvideo_r1.agent.episode import EpisodeConfig, Question
from longvideo_r1.agent.protocol import DEFAULT_SYSTEM_PROMPT
from longvideo_r1.errors import InputError
from longvideo_r1.reward.score import reward_source
from longvideo_r1.trainer.splits import (
    ABILITY,
    MAX_ROUNDS,
    episode_config,
    load_corpus_split,
    open_tools,
)

RL_COLUMNS = ("data_source", "prompt", "ability", "reward_model", "extra_info")
QUESTION_KEYS = ("video_uid", "qid", "question")
"""extra_info keys that rebuild a :class:`Question` (with ``options`` and ``task_type``, which may be null)"""


def _rl_schema():
    import pyarrow as pa

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    extra = pa.struct([("index", pa.int64()), ("video_uid", pa.string()), ("split", pa.string()),
                       ("clue_intervals", pa.list_(pa.list_(pa.float64()))), ("width", pa.int64()),
                       ("duration", pa.float64()), ("fps", pa.float64()), ("data_source", pa.string()),
                       ("qid", pa.string()), ("question", pa.string()), ("options", pa.list_(pa.string())),
                       ("task_type", pa.string())])
    return pa.schema([("data_source", pa.string()), ("prompt", pa.list_(message)), ("ability", pa.string()),
                      ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
                      ("extra_info", extra)])


def rl_rows(questions: list[Question], tools, config: EpisodeConfig, split: str,
            data_source: str | None = None) -> list[dict]:
    """One verl row per question (``data_source`` overrides each question's own)."""
    rows = []
    for index, q in enumerate(questions):
        if not q.answer:
            raise InputError(f"question {q.qid}: has no answer; RL rows need the ground-truth letter")
        episode = tools.start(q, config)
        video = tools.captions.video(q.video_id)
        source = data_source or reward_source(q)
        prompt = [{"role": m["role"], "content": m["content"]} for m in episode.prompt()]
        rows.append({
            "data_source": source, "prompt": prompt, "ability": ABILITY,
            "reward_model": {"style": "rule", "ground_truth": q.answer},
            "extra_info": {"index": index, "video_uid": q.video_id, "split": split,
                           "clue_intervals": [[float(a), float(b)] for a, b in (q.clue_intervals or [])],
                           "width": int(episode.width), "duration": float(episode.duration), "fps": float(video.fps),
                           "data_source": source, "qid": q.qid, "question": q.question,
                           "options": list(q.options) if q.options is not None else None,
                           "task_type": q.task_type},
        })
    return rows


def write_rl_parquet(rows: list[dict], path: str | Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(pa.Table.from_pylist(rows, schema=_rl_schema()), tmp)
    os.replace(tmp, path)
    return path


def generate_rl(corpus_dir, store, out, split: str = "train", data_source: str | None = None,
                max_rounds: int = MAX_ROUNDS, system_template: str = DEFAULT_SYSTEM_PROMPT) -> dict:
    t0 = time.perf_counter()
    rows = load_corpus_split(corpus_dir, split)
    tools = open_tools(store, {r["video_id"] for r in rows})
    written = rl_rows([Question.from_row(r) for r in rows], tools, episode_config(max_rounds, system_template),
                      split, data_source)
    write_rl_parquet(written, out)
    sources = sorted({r["data_source"] for r in written})
    return {"out": str(out), "split": split, "rows": len(written), "data_source": sources,
            "seconds": round(time.perf_counter() - t0, 2)}


def read_rl_rows(path: str | Path) -> tuple[list[Question], list[dict]]:
    """The questions of an RL Parquet file (as :func:`write_rl_parquet` writes it) and its raw rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise InputError(f"RL data {path}: no such file; make it with `lvr1 data rl --out {path}`")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"RL data {path}: not a readable Parquet file ({str(exc).splitlines()[0][:160]}); "
                         "regenerate it with `lvr1 data rl`") from None
    missing = [c for c in RL_COLUMNS if c not in table.column_names]
    if missing:
        raise InputError(f"RL data {path}: lacks column(s) {', '.join(missing)}; regenerate it with `lvr1 data rl`")
    rows = table.to_pylist()
    questions = []
    for i, row in enumerate(rows):
        extra, reward = row.get("extra_info") or {}, row.get("reward_model") or {}
        lacking = [k for k in QUESTION_KEYS if extra.get(k) is None]
        if lacking:
            raise InputError(f"RL data {path} row {i}: extra_info lacks {', '.join(lacking)}; rows written by "
                             "`lvr1 data rl` carry what rebuilds a question")
        if not reward.get("ground_truth"):
            raise InputError(f"RL data {path} row {i}: reward_model has no ground_truth; regenerate the file "
                             "with `lvr1 data rl`")
        questions.append(Question(extra["video_uid"], extra["question"], extra.get("options"), reward["ground_truth"],
                                  extra.get("clue_intervals") or None, extra["qid"], extra.get("task_type"),
                                  row["data_source"]))
    return questions, rows


