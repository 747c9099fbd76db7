"""Errors that speak to the user.

Every failure caused by input (a path, a video, a shard, an id) is raised as
:class:`InputError` with a message that names the input and says what to do. The
CLI prints that message on one line and exits non-zero, without a traceback.
"""


class InputError(Exception):
    """Bad input from the user: a missing file, a corrupt shard, an out-of-range id."""
