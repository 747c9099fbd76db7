"""A tiny Qwen3 taught two protocol turns, so rollout tests see real tool calls and answers.

It is trained here on the CPU, on the real episode prompts of the rollout test questions (our
system prompt, the first user turn with the store's high-level captions, the real observation of
``get_caption((1,1))``): after the question it writes ``get_caption((1,1))``; after that caption it
answers ``B``. A fixture for the rollout machinery, not a navigator: it only knows these contexts.
"""

from __future__ import annotations

from pathlib import Path

from longvideo_r1.agent.episode import EpisodeConfig, Question
from longvideo_r1.agent.protocol import Action

FIRST_TURN = "<think>Check part one.</think><tool>get_caption((1,1))</tool>"
SECOND_TURN = "<think>That settles it.</think><answer>B</answer>"
VIDEOS = (("vid_a", 3000), ("vid_b", 5000))


def question(video: str = "vid_a", qid: str = "q") -> Question:
    return Question(video, "What colour is the circle?", ["red", "blue", "green", "gray"], answer="B", qid=qid)


def _examples(tools, tokenizer, max_rounds: int):
    """(context tokens, target tokens) exactly as the rollout runner builds contexts."""
    from longvideo_r1.rollout.chat import ChatTokens

    chat = ChatTokens(tokenizer)
    first_turn = tokenizer.encode(FIRST_TURN, add_special_tokens=False)
    for video, _ in VIDEOS:
        episode = tools.start(question(video), EpisodeConfig(max_rounds=max_rounds, keep_malformed=True,
                                                            last_round_note="append"))
        prompt = chat.prompt_ids(episode.prompt())
        observation, _ = tools.run(video, Action("get_caption", ids=(1, 1)))
        yield prompt, first_turn
        yield prompt + first_turn + chat.observation_ids(observation, first_turn), \
            tokenizer.encode(SECOND_TURN, add_special_tokens=False)


def train_tiny_navigator(out_dir: Path, tools, max_rounds: int = 4, steps: int = 200, lr: float = 1e-2,
                         seed: int = 0) -> Path:
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from longvideo_r1.models import make_tiny_qwen3

    base = make_tiny_qwen3(Path(out_dir) / "base", seed=seed)
    tok = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    examples = list(_examples(tools, tok, max_rounds))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        total = 0.0
        for prompt, target in examples:
            ids = torch.tensor([prompt + target])
            # Only the target positions need logits: skip the vocabulary projection of the long prompt.
            logits = model(input_ids=ids, logits_to_keep=len(target) + 1).logits[0, :-1]
            loss = F.cross_entropy(logits, torch.tensor(target))
            loss.backward()
            total += loss.item()
        opt.step()
        opt.zero_grad()
        if total / len(examples) < 0.01:
            break
    print(f"tiny navigator trained: {_ + 1} steps, loss {total / len(examples):.4f}")
    if total / len(examples) > 0.05:
        raise RuntimeError(f"the tiny navigator did not learn its turns (loss {total / len(examples):.3f})")
    out = Path(out_dir) / "navigator"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
