"""Token-level chat for multi-turn rollouts: render the prompt once, then only append.

The prompt (system + first user turn) is rendered with the model's chat template. After that the
context only grows: each turn's sampled tokens as they were sampled, then an *observation block*:
the tokens that the chat template writes after an assistant turn (its end-of-turn marker), the
user turn holding the observation, and the generation prompt for the next assistant turn. The
block's layout is read off the template once, by rendering a conversation with sentinel strings, so
any chat template works (ChatML for Qwen3 and SmolLM2, Llama's, …) without re-tokenising history.
"""

from __future__ import annotations

from longvideo_r1.errors import InputError

_ASSISTANT = "\u2063LVR1-ASSISTANT\u2063"
_OBSERVATION = "\u2063LVR1-OBSERVATION\u2063"
TRUNCATION_MARKER = " …[observation truncated]"


class ChatTokens:
    def __init__(self, tokenizer):
        if getattr(tokenizer, "chat_template", None) is None:
            raise InputError("the model's tokenizer has no chat template; rollouts need one to build prompts")
        self.tokenizer = tokenizer
        rendered = tokenizer.apply_chat_template(
            [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
             {"role": "assistant", "content": _ASSISTANT}, {"role": "user", "content": _OBSERVATION}],
            tokenize=False, add_generation_prompt=True)
        after = rendered[rendered.index(_ASSISTANT) + len(_ASSISTANT):]
        self._before_obs, self._after_obs = after.split(_OBSERVATION)
        eos = tokenizer.eos_token
        # When the model itself ended its turn with the end-of-turn token, do not write it twice.
        self._eos_text = eos if eos and self._before_obs.startswith(eos) else None
        self._eos_id = tokenizer.convert_tokens_to_ids(eos) if self._eos_text else None
        self._special = [t for t in tokenizer.all_special_tokens if t]

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        ids = self.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                                 return_dict=False)
        return list(ids)

    def sanitize(self, text: str) -> str:
        """Observation text may not smuggle in special tokens (a caption saying ``<|im_end|>``)."""
        for token in self._special:
            if token in text:
                text = text.replace(token, token.replace("<", "‹").replace(">", "›"))
        return text

    def observation_ids(self, observation: str, turn_ids: list[int], max_tokens: int | None = None) -> list[int]:
        """Tokens that follow a sampled turn ``turn_ids``: end of turn, the observation, next generation prompt."""
        content = self.tokenizer.encode(self.sanitize(observation), add_special_tokens=False)
        if max_tokens is not None and len(content) > max_tokens:
            marker = self.tokenizer.encode(TRUNCATION_MARKER, add_special_tokens=False)
            content = content[: max(0, max_tokens - len(marker))] + marker
        before = self._before_obs
        if self._eos_text and turn_ids and turn_ids[-1] == self._eos_id:
            before = before[len(self._eos_text):]
        return (self.tokenizer.encode(before, add_special_tokens=False) + content
                + self.tokenizer.encode(self._after_obs, add_special_tokens=False))
