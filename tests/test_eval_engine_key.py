"""Which checkpoints may share one evaluation engine (their weights loaded in place, one after another)."""

import json
import shutil

import pytest

from longvideo_r1.errors import InputError
from longvideo_r1.eval.pipeline_eval import engine_key
from longvideo_r1.rollout.workers import checkpoint_tensors


@pytest.fixture()
def two(tiny_qwen3_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_qwen3_dir, a)
    shutil.copytree(tiny_qwen3_dir, b)
    return a, b


def _edit(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_same_shapes_and_tokenizer_share_an_engine(two):
    a, b = two
    # a re-save by another transformers version rewrites these keys without changing the tokenizer
    _edit(b / "tokenizer_config.json", tokenizer_class="TokenizersBackend", is_local=True)
    _edit(b / "config.json", transformers_version="0.0.0")
    assert engine_key(a) == engine_key(b)


@pytest.mark.parametrize("change", ["shape", "template", "tokens"])
def test_a_different_shape_or_tokenizer_gets_its_own_engine(two, change):
    a, b = two
    if change == "shape":
        _edit(b / "config.json", num_hidden_layers=json.loads((a / "config.json").read_text())["num_hidden_layers"] + 1)
    elif change == "template":
        (b / "chat_template.jinja").write_text("{{ messages }}")
        (b / "tokenizer_config.json").write_text(
            json.dumps({**json.loads((a / "tokenizer_config.json").read_text()), "chat_template": "{{ messages }}"}))
    else:
        _edit(b / "tokenizer_config.json", eos_token="<|im_start|>")
    assert engine_key(a) != engine_key(b)


def test_no_config_means_no_sharing(tmp_path):
    assert engine_key(tmp_path) is None


def test_checkpoint_tensors_name_a_tied_output_embedding(tiny_qwen3_dir, tmp_path):
    config = json.loads((tiny_qwen3_dir / "config.json").read_text())
    assert config["tie_word_embeddings"]
    state = dict(checkpoint_tensors(str(tiny_qwen3_dir)))
    assert "lm_head.weight" in state and state["lm_head.weight"] is state["model.embed_tokens.weight"]
    with pytest.raises(InputError, match="no \\*.safetensors"):
        checkpoint_tensors(str(tmp_path))
