"""How problems and notices reach the user.

The CLI and the app catch `UserError` and show its message alone (no traceback) with a
non-zero exit code; anything else is a bug and keeps its traceback. `notice` is the one
way to tell the user something on the side (a fallback, a rebuild, a skipped file).
"""

import importlib
import sys
from functools import lru_cache


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


@lru_cache(maxsize=1)
def http_client_errors() -> tuple[type[Exception], ...]:
    """The connection errors huggingface_hub lets through once its own retries are spent: its
    HTTP client's (httpx2 under huggingface_hub 2, httpx under 1). Neither is an OSError, so a
    Hub call that catches only OSError shows a traceback for an unreachable server."""
    found = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).HTTPError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)
