"""The text a policy reads and writes on a corpus, to fit its tokenizer to (``fitted-qwen3``).

:func:`corpus_texts` lists, in a fixed order, one string per piece of text:

1. the protocol's fixed strings: the last-round note, the corrective note of every kind of malformed
   turn (as :class:`~longvideo_r1.agent.episode.Episode` writes them, read off a played episode),
   the observation of a video_qa call without a backend, and the rollout's truncation marker;
2. every caption of the caption store, video by video (sorted ids), in tree order;
3. per question of ``questions.jsonl`` (every split, in file order), its prompt (system prompt for
   the video's tree width and first user turn) rendered with Qwen3's chat template and a generation
   prompt, as rollouts and SFT render it; for a training question with clue intervals, followed by
   the oracle teacher's episode (its assistant turns and the observations it got, each a text), as
   the SFT data hold them.

The episodes use the SFT/RL episode rules with ``splits.MAX_ROUNDS`` (15) rounds, whatever the
config says: the round limit changes only digits of the system prompt, and keeping it fixed keeps the
text (and the model fitted to it) independent of settings that do not change the corpus. The oracle
teacher plays without a video_qa backend (decoding clips would cost minutes), so its video_qa turns
are in the text but their answers are the "not available" observation; an ``openai`` teacher's turns
cannot be rendered without calling it, so the oracle's stand in for them. Special tokens stay in the
rendered prompts: :func:`longvideo_r1.models.fit_tokenizer` cuts them (and the protocol tags) out
before counting, as encoding does.

Everything is read from disk and computed on the CPU (about 3 s for the 8-video demo corpus: 1.25 M
characters in ~3,000 texts); the same corpus and store give the same list (and
:func:`~longvideo_r1.models.text_digest`).
"""

from __future__ import annotations

import functools
from pathlib import Path

from longvideo_r1.errors import InputError

MALFORMED_TURNS = (
    "I think the answer is B.",
    "<think>I need more detail.</think>",
    "<think>Two actions.</think><tool>get_caption((1, 1))</tool><answer>A</answer>",
    "<think>Nothing to say.</think><answer> </answer>",
    "<think>Unclosed.</think><tool>get_caption((1, 1))",
    "<think>A wrong tool.</think><tool>look((1, 1))</tool>",
    "<think>Too few ids.</think><tool>get_caption((1,))</tool>",
    "<think>Out of range.</think><tool>get_caption((1, 99))</tool>",
    "<think>Not integers.</think><tool>get_caption((1, 'a'))</tool>",
    "<think>A list.</think><tool>get_caption([1, 2])</tool>",
    "<think>Unreadable.</think><tool>get_caption((1 2))</tool>",
    "<think>No question.</think><tool>video_qa((1, 1, 1))</tool>",
    "<think>Empty question.</think><tool>video_qa((1, 1, 1), \"\")</tool>",
    "<think>Not read yet.</think><tool>video_qa((1, 1, 1), \"what colour is it?\")</tool>",
)
"""one turn of each kind the episode rules reject, to render their corrective notes"""


@functools.lru_cache(maxsize=4)
def _compiled(template: str):
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    return env.from_string(template)


def render_chat(template: str, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """``messages`` rendered with a chat template as ``transformers`` renders it (a sandboxed Jinja
    environment with ``trim_blocks`` and ``lstrip_blocks``; the template is compiled once)."""
    return _compiled(template).render(messages=messages, add_generation_prompt=add_generation_prompt)


def _read_questions(corpus_dir: Path) -> list[dict]:
    from longvideo_r1.trainer.splits import read_questions

    path = corpus_dir / "questions.jsonl"
    if not path.is_file():
        raise InputError(f"corpus {corpus_dir}: no questions.jsonl, so there is no question text to fit a "
                         "tokenizer on; give a corpus folder (a pipeline run's OUTPUT_DIR/corpus)")
    return read_questions(path)


def _train_qids(corpus_dir: Path) -> set[str]:
    from longvideo_r1.trainer.splits import load_corpus_split

    try:
        return {row["qid"] for row in load_corpus_split(corpus_dir, "train")}
    except InputError:          # a corpus without a train split: no teacher episodes
        return set()


def _malformed_notes(tools, question) -> list[str]:
    """The corrective notes of :data:`MALFORMED_TURNS`, as an episode writes them."""
    from longvideo_r1.agent.episode import EpisodeConfig

    episode = tools.start(question, EpisodeConfig(max_rounds=len(MALFORMED_TURNS) + 1, keep_malformed=True))
    notes = []
    for text in MALFORMED_TURNS:
        action = episode.submit(text)
        if action.kind != "invalid":
            raise RuntimeError(f"malformed turn {text!r} was accepted as {action.kind}")
        notes.append(episode.messages[-1]["content"])
    return list(dict.fromkeys(notes))


def corpus_texts(corpus_dir: str | Path | None, store: str | Path) -> list[str]:
    """The fitting text of a corpus folder and its caption store (see the module docstring).

    ``corpus_dir`` None: the protocol strings and the captions only (no questions, no teacher turns).
    Raises :class:`InputError` when the store or the questions cannot be read, or a question's video
    is not in the store.
    """
    from longvideo_r1.agent import protocol
    from longvideo_r1.agent.episode import Question
    from longvideo_r1.agent.teacher import OracleTeacher
    from longvideo_r1.agent.tools import Tools
    from longvideo_r1.corpus.store import CaptionStore
    from longvideo_r1.models import qwen3_chat_template
    from longvideo_r1.rollout.chat import TRUNCATION_MARKER
    from longvideo_r1.trainer.splits import MAX_ROUNDS, episode_config

    captions = CaptionStore(store)
    video_ids = captions.video_ids()
    if not video_ids:
        raise InputError(f"caption store {captions.root}: holds no video, so there is no caption text to fit a "
                         "tokenizer on; build it first (`lvr1 captions build`, or the pipeline's captions stage)")
    rows = _read_questions(Path(corpus_dir)) if corpus_dir is not None else []
    captions.require({row["video_id"] for row in rows}, "the videos of corpus questions")
    tools = Tools(captions)
    questions = [Question.from_row(row) for row in rows]
    texts = [protocol.LAST_ROUND_NOTE, protocol.video_qa_observation(
        "video_qa is not available in this run; use get_caption instead."), TRUNCATION_MARKER]
    if questions:
        texts += _malformed_notes(tools, questions[0])
    for video_id in video_ids:
        texts += [caption.caption for caption in captions.tree_captions(video_id)]
    if not questions:       # the system prompt of every tree width in the store
        widths = sorted({captions.video(video_id).width for video_id in video_ids})
        return texts + [protocol.system_prompt(width, MAX_ROUNDS) for width in widths]
    template = qwen3_chat_template()
    config = episode_config(MAX_ROUNDS)
    teacher = OracleTeacher()
    train = _train_qids(Path(corpus_dir))
    for row, question in zip(rows, questions):
        start = tools.start(question, config)
        texts.append(render_chat(template, start.prompt(), add_generation_prompt=True))
        if row["qid"] in train and question.clue_intervals:
            try:
                messages = teacher.run(question, tools, config).episode.messages
            except InputError:      # a question the teacher cannot play: the SFT data skip it too
                continue
            texts += [message["content"] for message in messages[2:]]
    return texts
