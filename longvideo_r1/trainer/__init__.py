"""The learner: training data (SFT trajectories, RL rows), the RL math, and the DeepSpeed engine on Ray."""
