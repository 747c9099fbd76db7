"""LongVideo-R1 platform: train and evaluate long-video navigation agents with RL.

Rooms (subpackages) and the direction of their imports, bottom to top:

- ``corpus``   videos, the hierarchical caption tree, captioners, the sharded caption store
- ``platform`` configuration, the ``lvr1`` command line, the pipeline driver

Lower rooms never import higher ones.
"""

def _version() -> str:
    """The installed distribution's version (pyproject.toml is its one source)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("longvideo-r1")
    except PackageNotFoundError:      # a source tree that was never installed
        return "0+unknown"


__version__ = _version()
