"""The one exception type for bad user input.

Every check of user input (files, columns, values, config keys) raises :class:`InputError` with a
one-line message naming what is wrong, where, and what was expected. The CLI turns it into a
single line on stderr and exit code 2.
"""

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad input from the user: a missing file or column, a wrong value, a bad config key."""
