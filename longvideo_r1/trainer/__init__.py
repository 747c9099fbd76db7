"""The trainer room: training data, the RL math, the DeepSpeed learner on Ray, and the two stages.

What it builds: ``splits`` (a corpus split and the episode rules), ``sft_data`` (teacher
trajectories), ``rl_data`` (verl RL rows), ``batches`` (SFT tokenisation and batches). The math:
``algos`` (plain tensor functions, advantage estimators registered by name). The learner:
``learner`` (one DeepSpeed rank; ``LearnerRank`` is its Ray actor) and ``learner_group`` (the ranks).
The stages: ``sft`` and ``rl`` (with ``rl_batch``), both run by the skeleton in ``loop``.

It imports ``rollout`` (the RL stage drives the rollout pool and reads its batch contract),
``reward``, ``agent``, ``corpus``, ``cluster.resources`` and the bottom layer; never ``platform``.
"""
