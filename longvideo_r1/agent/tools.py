"""The agent's tools and the single-episode driver.

``get_caption`` is served by the caption store, in-process (:class:`CaptionStore`) or through its
Ray actors (:class:`CaptionStoreClient`): both have ``get(video_id, ids)`` and ``video(video_id)``.
``video_qa`` is served by a :mod:`longvideo_r1.agent.video_qa` backend. :func:`run_episode` plays one
episode with one policy; rollout workers drive many episodes through the same
:class:`~longvideo_r1.agent.episode.Episode` calls instead.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Protocol

from longvideo_r1.agent import protocol
from longvideo_r1.agent.episode import Episode, EpisodeConfig, HighCaption, Question
from longvideo_r1.agent.protocol import Action
from longvideo_r1.corpus.store import Caption, VideoRecord


class CaptionSource(Protocol):
    def get(self, video_id: str, ids) -> Caption: ...

    def video(self, video_id: str) -> VideoRecord: ...


class Tools:
    """What an episode's tool calls run against."""

    def __init__(self, captions: CaptionSource, video_qa=None):
        self.captions = captions
        self.video_qa = video_qa

    def start(self, question: Question, config: EpisodeConfig | None = None) -> Episode:
        """A new episode for ``question``: the video's width, duration and high-level captions."""
        video = self.captions.video(question.video_id)
        high = [self.captions.get(question.video_id, (h,)) for h in range(1, video.width + 1)]
        return Episode(question, video.width, video.duration,
                       [HighCaption(c.start, c.end, c.caption) for c in high], config)

    def run(self, video_id: str, action: Action) -> tuple[str, float]:
        """Run one tool call; returns the observation string and the seconds it took.

        For video_qa the seconds are the model's compute time as the backend measured it (frame
        decoding excluded); for get_caption the lookup time.
        """
        if action.kind == "get_caption":
            t0 = time.perf_counter()
            c = self.captions.get(video_id, action.ids)
            return protocol.caption_observation(action.ids, c.start, c.end, c.caption), time.perf_counter() - t0
        if action.kind == "video_qa":
            if self.video_qa is None:
                return protocol.video_qa_observation(
                    "video_qa is not available in this run; use get_caption instead."), 0.0
            answer, seconds = self.video_qa.answer(self.captions.video(video_id), action.ids, action.query)
            return protocol.video_qa_observation(answer), seconds
        raise ValueError(f"not a tool call: {action.kind}")


class Policy(Protocol):
    """A navigator: given the episode so far, write the next assistant turn."""

    name: str

    def act(self, episode: Episode, tools: Tools) -> str: ...


def run_episode(policy: Policy, question: Question, tools: Tools,
                config: EpisodeConfig | None = None) -> Episode:
    """Play one episode to the end: the policy acts, tools answer, the rules decide when it stops.

    A policy with a ``max_rounds(width)`` method (the exhaustive baseline) sets its own round limit.
    """
    if hasattr(policy, "max_rounds"):
        width = tools.captions.video(question.video_id).width
        config = replace(config or EpisodeConfig(), max_rounds=policy.max_rounds(width))
    episode = tools.start(question, config)
    while not episode.done:
        t0 = time.perf_counter()
        text = policy.act(episode, tools)
        action = episode.submit(text, time.perf_counter() - t0)
        if action.kind in ("get_caption", "video_qa"):
            observation, seconds = tools.run(question.video_id, action)
            episode.observe(observation, seconds)
    return episode
