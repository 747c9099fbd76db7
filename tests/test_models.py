"""Offline models: a tiny random Qwen3 with the real tokenizer, and SmolLM2 converted from its GGUF."""

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from longvideo_r1.errors import InputError
from longvideo_r1.models import (MARKER, QWEN3_VOCAB_SIZE, convert_smollm2, is_complete, make_tiny_qwen3,
                                 prepare_models, qwen3_tokenizer_dir, smollm2_gguf_path)

CONVERSATION = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Name a colour."},
                {"role": "assistant", "content": "Blue."},
                {"role": "user", "content": "What is the capital of France?"}]


def mtimes(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


# ------------------------------------------------------------------------------------ tiny Qwen3

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_qwen3(tmp_path_factory.mktemp("tiny") / "tiny-qwen3", seed=3)


@pytest.fixture(scope="module")
def qwen3_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen3_tokenizer_dir())


def test_tiny_qwen3_weights_are_a_function_of_the_seed(tiny, tmp_path):
    state = torch.get_rng_state()
    again = make_tiny_qwen3(tmp_path / "again", seed=3)
    assert torch.equal(torch.get_rng_state(), state)          # the global RNG is left alone
    assert (again / "model.safetensors").read_bytes() == (tiny / "model.safetensors").read_bytes()
    a, b = load_file(tiny / "model.safetensors"), load_file(make_tiny_qwen3(tmp_path / "other", seed=4)
                                                             / "model.safetensors")
    assert a.keys() == b.keys()
    assert not torch.equal(a["model.embed_tokens.weight"], b["model.embed_tokens.weight"])
    assert a["model.embed_tokens.weight"].shape == (QWEN3_VOCAB_SIZE, 64)
    assert all(t.dtype == torch.float32 for t in a.values())
    size = sum(p.stat().st_size for p in tiny.iterdir())
    assert 20e6 < size < 60e6


def test_tiny_qwen3_reloads_with_the_real_qwen3_tokenizer_and_generates(tiny, qwen3_tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny)
    tok = AutoTokenizer.from_pretrained(tiny)
    assert type(model).__name__ == "Qwen3ForCausalLM" and model.dtype == torch.float32
    assert model.config.vocab_size == len(tok) == len(qwen3_tokenizer) == QWEN3_VOCAB_SIZE
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.config.max_position_embeddings == 32768
    assert tok.chat_template == qwen3_tokenizer.chat_template
    for special in ("<think>", "</think>", "<tool_call>", "<|im_end|>"):
        assert len(tok.encode(special)) == 1 and tok.encode(special) == qwen3_tokenizer.encode(special)
    rendered = tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert rendered == qwen3_tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>assistant\n")
    assert set(model.generation_config.eos_token_id) == set(tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"]))

    ids = tok(rendered, return_tensors="pt").input_ids
    outs = [model.generate(ids, max_new_tokens=6, do_sample=False, min_new_tokens=6) for _ in range(2)]
    assert outs[0].shape == (1, ids.shape[1] + 6) and torch.equal(outs[0], outs[1])


def test_a_finished_tiny_qwen3_is_skipped_and_other_arguments_rebuild_it(tiny, tmp_path):
    before = mtimes(tiny)
    started = time.perf_counter()
    assert make_tiny_qwen3(tiny, seed=3) == tiny
    assert time.perf_counter() - started < 1.0 and mtimes(tiny) == before
    marker = json.loads((tiny / MARKER).read_text())
    assert marker["complete"] and marker["params"]["seed"] == 3 and "model.safetensors" in marker["files"]

    folder = make_tiny_qwen3(tmp_path / "t", seed=3)
    make_tiny_qwen3(folder, seed=5, layers=1)
    assert json.loads((folder / MARKER).read_text())["params"]["layers"] == 1
    assert "model.layers.1.mlp.up_proj.weight" not in load_file(folder / "model.safetensors")
    assert not list(tmp_path.glob(".t.partial-*"))


def test_a_folder_with_foreign_files_is_never_deleted(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "notes.txt").write_text("precious")
    with pytest.raises(InputError, match="notes.txt"):
        make_tiny_qwen3(folder)
    assert (folder / "notes.txt").read_text() == "precious"
    assert not list(tmp_path.glob(".mine.partial-*"))


def test_a_deleted_weight_file_makes_the_folder_incomplete(tmp_path):
    folder = make_tiny_qwen3(tmp_path / "t", hidden_size=32, head_dim=32)
    assert is_complete(folder, "tiny-qwen3")
    (folder / "model.safetensors").unlink()
    assert not is_complete(folder)
    make_tiny_qwen3(folder, hidden_size=32, head_dim=32)
    assert is_complete(folder, "tiny-qwen3") and (folder / "model.safetensors").is_file()


def test_stale_partial_folders_of_dead_processes_are_cleaned(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".t.partial-{dead.pid}"
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    make_tiny_qwen3(tmp_path / "t", hidden_size=32, head_dim=32)
    assert not stale.exists()


@pytest.mark.parametrize("kwargs, needle", [({"head_dim": 16}, "head_dim"), ({"heads": 3, "kv_heads": 2}, "multiple"),
                                            ({"layers": 0}, "layers")])
def test_bad_tiny_qwen3_shapes_are_input_errors(tmp_path, kwargs, needle):
    with pytest.raises(InputError, match=needle):
        make_tiny_qwen3(tmp_path / "t", **kwargs)
    assert not (tmp_path / "t").exists()


def test_prepare_models_rejects_unknown_names(tmp_path):
    with pytest.raises(InputError, match="unknown model 'gpt5'.*tiny-qwen3, smollm2"):
        prepare_models(tmp_path, ["gpt5"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        prepare_models(tmp_path / "file", ["tiny-qwen3"])


# -------------------------------------------------------------------------------------- SmolLM2

@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """One conversion per module, into a folder that a crashed writer left half written (no marker).

    Dequantising the GGUF takes 12-18 s, so the GGUF-loaded model that the conversion itself makes is
    kept (by wrapping ``from_pretrained``) as the reference for the logits, instead of a second load.
    """
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("smol") / "smollm2"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(b"\0" * 100)
    loaded = []
    original = AutoModelForCausalLM.from_pretrained

    def keep(*args, **kwargs):
        model = original(*args, **kwargs)
        loaded.append((kwargs.get("gguf_file"), model))
        return model

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AutoModelForCausalLM, "from_pretrained", keep)
        path = convert_smollm2(folder)
    assert [name for name, _ in loaded] == [smollm2_gguf_path().name]
    return path, loaded[0][1]


@pytest.fixture(scope="module")
def smollm2(converted):
    return converted[0]


@pytest.mark.slow
def test_a_half_written_folder_is_rebuilt(smollm2):
    marker = json.loads((smollm2 / MARKER).read_text())
    assert marker["name"] == "smollm2" and marker["complete"] and marker["dtype"] == "float32"
    assert (smollm2 / "model.safetensors").stat().st_size > 500e6
    config = json.loads((smollm2 / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    assert not list(smollm2.parent.glob(".smollm2.partial-*"))


@pytest.mark.slow
def test_converted_smollm2_reloads_without_gguf_and_matches_its_logits(converted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    smollm2, reference = converted
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(smollm2)
    load_s = time.perf_counter() - started
    assert reference.config.quantization_config.to_dict()["quant_method"] == "gguf"
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert getattr(model.config, "quantization_config", None) is None
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    tok = AutoTokenizer.from_pretrained(smollm2)
    ids = tok.apply_chat_template(CONVERSATION, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        ours, theirs = model(**ids).logits, reference(**ids).logits
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-5), (ours - theirs).abs().max()
    answer = model.generate(**ids, max_new_tokens=12, do_sample=False)[0, ids["input_ids"].shape[1]:]
    assert "Paris" in tok.decode(answer)                      # a real pretrained model, not noise
    assert load_s < 30                                        # loose: a plain checkpoint, not a dequantisation


@pytest.mark.slow
def test_smollm2_chat_template_is_chatml_ending_turns_with_im_end(smollm2):
    from transformers import AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(smollm2)
    text = tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n"
                    "<|im_start|>assistant\nBlue.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?"
                    "<|im_end|>\n<|im_start|>assistant\n")
    assert tok.eos_token == "<|im_end|>" and tok.convert_tokens_to_ids("<|im_end|>") == 2
    assert GenerationConfig.from_pretrained(smollm2).eos_token_id == 2
    assert tok("hello").input_ids == tok("hello", add_special_tokens=False).input_ids   # no bos is added
    assert len(tok) == 49152 and tok.model_max_length == 8192


@pytest.mark.slow
def test_a_second_conversion_is_skipped(smollm2):
    before = mtimes(smollm2)
    started = time.perf_counter()
    assert convert_smollm2(smollm2) == smollm2
    assert time.perf_counter() - started < 1.0 and mtimes(smollm2) == before


# ------------------------------------------------------------------------------------------ CLI

def lvr1(*args):
    env = {**os.environ, "TRANSFORMERS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "longvideo_r1.platform.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=env)


def test_cli_models_prepare_prints_the_paths_as_json(tmp_path):
    result = lvr1("models", "prepare", "--out", tmp_path / "models", "--only", "tiny-qwen3")
    assert result.returncode == 0, result.stderr
    paths = json.loads(result.stdout)
    assert paths == {"tiny-qwen3": str((tmp_path / "models" / "tiny-qwen3").resolve())}
    assert is_complete(paths["tiny-qwen3"], "tiny-qwen3")


def test_cli_models_prepare_rejects_an_unknown_model_on_one_line(tmp_path):
    result = lvr1("models", "prepare", "--out", tmp_path, "--only", "tiny-qwen3", "llama-70b")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("lvr1: error: unknown model 'llama-70b'"), result.stderr
    assert not (tmp_path / "tiny-qwen3").exists()
