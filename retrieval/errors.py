"""The one exception type that means "the user's input is wrong, here is the fix".

CLIs print it as a single line and exit non-zero; anything else is a bug and keeps its
traceback.
"""

from collections.abc import Iterator
from contextlib import contextmanager


class InputError(ValueError):
    """Bad user input: the message names the input, the value, and what to do instead."""


@contextmanager
def stored(what: str, fix: str) -> Iterator[None]:
    """Read a stored entry (a gallery's decision policy...): a missing key, a wrong type or a
    bad value becomes one ``InputError`` naming the entry and the fix."""
    try:
        yield
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"the stored {what} is damaged ({exc}); {fix}") from None
