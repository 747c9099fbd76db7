"""The rollout room: generation engines (vLLM, transformers), token-level multi-turn episodes, and
the Ray pool of rollout workers that plays them and takes new weights from the learner.

It imports ``agent`` (protocol, episode rules, tools) and ``corpus``; never the trainer or platform.
"""
