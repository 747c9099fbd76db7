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


def _own_extension_cache() -> None:
    """DeepSpeed's CPU ops (cpu_adam, shm_comm) are compiled at first use into TORCH_EXTENSIONS_DIR
    (default ~/.cache/torch_extensions, shared by every Python environment of the user). Two virtual
    environments of one machine (a checkout and a clean CI clone, say) then rebuild them for each
    other on every run, ~1-2 minutes each time; inside a writable virtual environment the cache is
    its own. Set TORCH_EXTENSIONS_DIR to choose another place."""
    import os
    import sys

    if "TORCH_EXTENSIONS_DIR" in os.environ or sys.prefix == sys.base_prefix:
        return
    if os.access(sys.prefix, os.W_OK):
        os.environ["TORCH_EXTENSIONS_DIR"] = os.path.join(sys.prefix, "torch_extensions")


_own_extension_cache()
