"""The one exception type that means "the user's input is wrong, here is the fix".

CLIs print it as a single line and exit non-zero; anything else is a bug and keeps its
traceback.
"""


class InputError(ValueError):
    """Bad user input: the message names the input, the value, and what to do instead."""
