"""LongVideo-R1 platform: train and evaluate long-video navigation agents with RL.

Rooms (subpackages) and the direction of their imports, bottom to top:

- ``corpus``   videos, the hierarchical caption tree, captioners, the sharded caption store
- ``platform`` configuration, the ``lvr1`` command line, the pipeline driver

Lower rooms never import higher ones.
"""

__version__ = "0.1.0"
