"""Language-model navigators: any OpenAI-compatible endpoint, or a local transformers model directory.

Both generate until ``</tool>`` or ``</answer>`` (PROTOCOL §2). Servers drop the stop string from
the text they return, so it is put back: the episode then sees exactly the turn the model wrote.

- ``openai:MODEL@URL`` e.g. ``openai:longvideo-r1@http://127.0.0.1:8000/v1`` (a vLLM server with a
  released LongVideo-R1 checkpoint); the API key, if needed, comes from ``OPENAI_API_KEY``.
- ``local:DIR``: a transformers checkpoint directory with its tokenizer and chat template.

:class:`OpenAIPolicy` keeps an account of its calls (:class:`CallUsage`): the prompt and completion
tokens the server reports in the response's ``usage`` (0 when it sends none), and the seconds of the
successful HTTP attempt. ``policy.last_call`` is the account of the latest call made *by the calling
thread* (so one policy can serve many episodes at once), ``policy.totals`` the sum over all calls.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

from longvideo_r1.agent.episode import Episode
from longvideo_r1.agent.protocol import STOP_STRINGS
from longvideo_r1.agent.tools import Tools
from longvideo_r1.errors import InputError
from longvideo_r1.openai_client import ChatClient


def close_stopped_turn(text: str) -> str:
    """Re-append the stop string a server removed: ``…<tool>get_caption((1,2))`` -> ``…</tool>``."""
    for open_tag, close_tag in (("<tool>", "</tool>"), ("<answer>", "</answer>")):
        start = text.rfind(open_tag)
        if start >= 0 and text.find(close_tag, start) < 0 and start >= text.rfind("</think>"):
            return text + close_tag
    return text


@dataclass
class CallUsage:
    """What chat calls cost: how many, the tokens the server reported, and the model's seconds."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    def add(self, other: CallUsage) -> CallUsage:
        self.calls += other.calls
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.seconds += other.seconds
        return self

    def to_dict(self) -> dict:
        return asdict(self)


class OpenAIPolicy:
    """A navigator served by an OpenAI-compatible chat-completions endpoint.

    Safe to share between threads. It pickles as its settings (the connection pool is made anew
    where it lands), so a teacher holding one can be sent to a Ray actor.
    """

    name = "openai"

    def __init__(self, endpoint: str, model: str, api_key: str | None = None, temperature: float = 0.0,
                 max_tokens: int = 2048, timeout: float = 300.0, retries: int = 2, extra: dict | None = None):
        self._settings = {"endpoint": endpoint, "model": model, "api_key": api_key, "temperature": temperature,
                          "max_tokens": max_tokens, "timeout": timeout, "retries": retries, "extra": extra}
        self.client = ChatClient(endpoint, model, api_key=api_key, timeout=timeout, retries=retries,
                                 what="llm policy")
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.extra = extra
        self.totals = CallUsage()
        self._totals_lock = threading.Lock()
        self._last = threading.local()

    def __getstate__(self) -> dict:
        return dict(self._settings)

    def __setstate__(self, settings: dict) -> None:
        self.__init__(**settings)

    def __repr__(self) -> str:  # never show the API key
        return f"OpenAIPolicy(endpoint={self.client.base_url!r}, model={self.client.model!r})"

    @property
    def endpoint(self) -> str:
        """The base URL requests go to (``http://host:port/v1``)."""
        return self.client.base_url

    @property
    def last_call(self) -> CallUsage | None:
        """The account of the latest call this thread made (None before its first, or if it failed)."""
        return getattr(self._last, "call", None)

    def check(self) -> None:
        """Make sure something answers HTTP at the endpoint; an :class:`InputError` saying what to do if not.

        Asks ``GET {base}/models`` once, without retries. Any HTTP answer counts as reachable (not every
        server lists its models); only a connection that cannot be made (refused, unknown host, no answer
        within the timeout) fails, before any question is played.
        """
        import httpx

        url = self.client.base_url + "/models"
        try:
            httpx.get(url, timeout=min(float(self.timeout), 10.0))
        except httpx.TransportError as exc:
            cause = exc.__cause__ or exc
            reason = " ".join(f"{type(exc).__name__}: {cause}".split())[:200]
            raise InputError(f"llm policy: the endpoint {self.client.base_url} cannot be reached ({reason}); start "
                             f"the OpenAI-compatible server that serves model {self.client.model!r} there (e.g. "
                             "`vllm serve MODEL --port 8000`), or check the URL and port given as the endpoint") \
                from None

    def act(self, episode: Episode, tools: Tools) -> str:
        q = episode.question
        self._last.call = None
        text, seconds, (prompt_tokens, completion_tokens) = self.client.complete_counted(
            episode.prompt(), max_tokens=self.max_tokens, temperature=self.temperature, stop=list(STOP_STRINGS),
            extra=self.extra, context=f"question {q.qid or q.video_id} round {episode.round}")
        call = CallUsage(1, prompt_tokens, completion_tokens, seconds)
        self._last.call = call
        with self._totals_lock:
            self.totals.add(call)
        return close_stopped_turn(text)


class LocalPolicy:
    """A navigator running a local transformers model on this machine (CPU or GPU)."""

    name = "local"

    def __init__(self, model_dir: str, max_new_tokens: int = 512, temperature: float = 0.0, device: str = "cpu"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
            self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
        except (OSError, ValueError) as exc:
            raise InputError(f"local policy {model_dir}: not a loadable transformers checkpoint "
                             f"({str(exc).splitlines()[0][:200]}); pass a folder with config.json, weights "
                             "and a tokenizer") from None
        if self.tokenizer.chat_template is None:
            raise InputError(f"local policy {model_dir}: the tokenizer has no chat template")
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.device = device

    def act(self, episode: Episode, tools: Tools) -> str:
        import torch

        ids = self.tokenizer.apply_chat_template(episode.prompt(), add_generation_prompt=True, tokenize=True,
                                                 return_tensors="pt", return_dict=False).to(self.device)
        sampling = {"do_sample": True, "temperature": self.temperature} if self.temperature > 0 else \
            {"do_sample": False}
        with torch.no_grad():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.max_new_tokens,
                                      stop_strings=list(STOP_STRINGS), tokenizer=self.tokenizer,
                                      pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                                      **sampling)
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def make_llm_policy(spec: str, **options):
    kind, _, rest = spec.partition(":")
    if kind == "openai":
        model, at, endpoint = rest.rpartition("@")
        if not at or not model or not endpoint:
            raise InputError(f"policy {spec!r}: write openai:MODEL@URL, e.g. openai:longvideo-r1@http://127.0.0.1:8000/v1")
        return OpenAIPolicy(endpoint, model, **options)
    if kind == "local":
        if not rest:
            raise InputError(f"policy {spec!r}: write local:MODEL_DIR")
        return LocalPolicy(rest, **options)
    raise InputError(f"policy {spec!r}: LLM policies are openai:MODEL@URL or local:MODEL_DIR")
