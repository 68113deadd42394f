"""How problems and notices reach the user.

The CLI and the app catch `UserError` and show its message alone (no traceback) with a
non-zero exit code; anything else is a bug and keeps its traceback. `notice` is the one
way to tell the user something on the side (a fallback, a rebuild, a skipped file).
"""

import sys


class UserError(Exception):
    """Bad input, a missing file, no network...: something the user can act on."""

    exit_code = 2


def notice(message: str) -> None:
    """One line on stderr, so that --json output on stdout stays clean."""
    print(f"cocoattr: {message}", file=sys.stderr, flush=True)


def invalid_config(source: str, error: Exception) -> UserError:
    """One line naming the first bad key of a pydantic `ValidationError` (or any error)."""
    errors = getattr(error, "errors", None)
    if callable(errors):
        first = errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "(top level)"
        value = "" if first["type"] == "missing" else f" (got {first.get('input')!r:.60})"
        return UserError(f"{source}: {key}: {first['msg'].lower()}{value}")
    return UserError(f"{source}: invalid config ({error})")
