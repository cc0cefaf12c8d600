"""User-facing errors.

Anything the user can fix (a bad path, a wrong key, a missing install) raises `UserError` with one line that says what
is wrong and how to fix it. The CLI prints that line and exits with code 2; it never shows a traceback for these.
"""


class UserError(Exception):
    """An error caused by input the user controls. `str(err)` is the one line shown to them."""

    exit_code = 2

    def __init__(self, message: str):
        # One line only: a multi-line message would be cut up by log collectors and is harder to grep.
        super().__init__(" ".join(str(message).split()))
