"""`python -m cocoattr ...`: one argparse entry, one subcommand per job (a module per group).

Handlers import their modules lazily so `--help` is instant. A `UserError` anywhere becomes
one line on stderr and exit code 2; Ctrl-C exits 130 after whatever was finished is saved.
"""

from __future__ import annotations

import argparse
import sys

from cocoattr import __version__
from cocoattr.allocator import tune_malloc
from cocoattr.cli import checkpoint, data, index, predict
from cocoattr.cli.arguments import probability, writable_file, writable_folder
from cocoattr.errors import UserError

__all__ = ["build_parser", "main", "probability", "writable_file", "writable_folder"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cocoattr", description="Visual attributes: predict, search, train."
    )
    parser.add_argument("--version", action="version", version=f"cocoattr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    predict.add_commands(sub)
    checkpoint.add_commands(sub)
    index.add_commands(sub)
    data.add_commands(sub)
    return parser


def _search_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["search"]


def _query_words_not_flags(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """`search furry -indoor --top-k 3`: an exclude looks like a flag to argparse. Move search's
    own options first and the query words, in order, after `--`, wherever they were typed.

    An exclude has one dash; a `--word` that is none of search's options (nor, as argparse
    allows, a prefix of exactly one) is a mistyped option, a usage error rather than a query word.
    """
    if not argv or argv[0] != "search" or "--" in argv:
        return argv
    search = _search_parser(parser)
    takes_value = {o: a.nargs != 0 for a in search._actions for o in a.option_strings}
    flags, words, i = [], [], 1
    while i < len(argv):
        word = argv[i]
        name, eq, value = word.partition("=")
        if name.startswith("--") and name not in takes_value:
            matches = [o for o in takes_value if o.startswith(name)]
            if len(matches) > 1:
                search.error(f"ambiguous option {name}: could be {', '.join(sorted(matches))}")
            if not matches:
                options = ", ".join(sorted(o for o in takes_value if o.startswith("--")))
                search.error(f"unknown option {name} (options: {options}; an exclude is written -word)")
            name = matches[0]
        if name in takes_value:
            flags.append(name + eq + value)
            if takes_value[name] and not eq and i + 1 < len(argv):
                flags.append(argv[i + 1])
                i += 1
        else:
            words.append(word)
        i += 1
    return [argv[0], *flags, "--", *words] if words else [argv[0], *flags]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(_query_words_not_flags(parser, argv))
    tune_malloc()  # before any decode or model thread exists
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"cocoattr: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("cocoattr: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
