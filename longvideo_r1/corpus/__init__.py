"""The corpus room: video files, the hierarchical caption tree, captioners and the caption store.

Owns everything between a folder of videos and the captions the agent reads. It imports only
``longvideo_r1.errors`` and third-party libraries (numpy, decord, PyAV, pyarrow, and Ray for
serving), never the agent, rollout, trainer or platform rooms.
"""
