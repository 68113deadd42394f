"""The one exception type for problems a user can fix.

The CLI and the app catch `UserError` and show its message alone (no traceback) with a
non-zero exit code; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input, a missing file, no network...: something the user can act on."""

    exit_code = 2
