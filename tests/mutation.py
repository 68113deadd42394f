"""Mutation testing of one module with mutmut, in a scratch copy so the repo is never touched.

    .venv/bin/python tests/mutation.py metrics [--timeout 900] [--keep DIR] [--show FILE]

(mutmut 3.8.1 must be importable by that python: it is in requirements-dev.txt, or
`pip install --target DIR mutmut==3.8.1` and run with `PYTHONPATH=DIR`.)

mutmut 3 mutates the code into `mutants/` beside `pyproject.toml` and reads its settings from
`[tool.mutmut]` there. This copies the working tree (tracked and untracked-but-not-ignored files,
plus `checkpoints/` where a module's tests need it) into a temporary folder, appends a
`[tool.mutmut]` that mutates one module and runs only that module's test files, runs
`mutmut run --max-children 2` (`--children N`) under a time cap, and prints killed / survived / timeout /
no tests / not checked and the score = (killed + timeout) / (mutants run). `--show FILE`
writes the diff of every survivor (what a new test must catch); `--keep DIR` reuses and keeps
the scratch copy with mutmut's cached verdicts (its `[tool.mutmut]` test list is the one of the
first run): after new tests, start a fresh run.
Not a pytest module (no `test_` prefix): a run takes minutes.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# module -> (file mutated, test files run against each mutant, extra ignored paths to copy)
MODULES: dict[str, tuple[str, list[str], list[str]]] = {
    "metrics": ("cocoattr/metrics.py", ["tests/test_metrics.py", "tests/test_metrics_edges.py"], []),
    # the MiniLM test (~1 min a mutant on 2 busy cores) is left out: see docs/reliability.md
    "query": (
        "cocoattr/query.py",
        ["tests/test_query.py", "tests/test_query_edges.py", "-k", "not with_minilm"],
        [],
    ),
    "download": (
        "cocoattr/data/download.py",
        [
            "tests/test_download_mutants.py",
            "tests/test_data_download.py",
            "tests/test_data_download_lying.py",
            "tests/test_download_edges.py",
        ],
        [],
    ),
    # test_hub_inprocess.py first: test_hub.py's CLI subprocesses are invisible to mutmut
    "hub": (
        "cocoattr/hub.py",
        ["tests/test_hub_inprocess.py", "tests/test_hub.py", "tests/test_model.py"],
        ["checkpoints/default"],
    ),
    "checkpoints": (
        "cocoattr/checkpoints.py",
        ["tests/test_model.py", "tests/test_hub.py"],
        ["checkpoints/default"],
    ),
    # rel_untrusted: the crafted-root tests of `Index.serve_from` (its CLI subprocesses are invisible)
    "index": (
        "cocoattr/index.py",
        ["tests/test_index_mutants.py", "tests/test_index.py", "tests/test_reliability_untrusted.py"],
        ["checkpoints/default", "app.py"],  # one test there imports the app
    ),
}


def _copy_tree(dest: Path, extra: list[str]) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, check=True, capture_output=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file() and not src.is_symlink():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for rel in extra:
        if (REPO / rel).is_dir():
            shutil.copytree(REPO / rel, dest / rel, dirs_exist_ok=True)


def _configure(dest: Path, target: str, tests: list[str], extra: list[str]) -> None:
    existing = [t for t in tests if not t.endswith(".py") or (REPO / t).is_file()]
    pyproject = dest / "pyproject.toml"
    text = pyproject.read_text("utf-8")
    text += (
        f'\n[tool.mutmut]\nsource_paths = ["cocoattr/"]\nonly_mutate = [{target!r}]\n'.replace("'", '"')
        + f"also_copy = {extra!r}\n".replace("'", '"')
        + f"pytest_add_cli_args_test_selection = {existing!r}\n".replace("'", '"')
        + 'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]\n'
        # fork each worker from a process that only collected the tests: one forked from the process
        # that ran them inherits its threads (torch's OpenMP pool, the predictor's decode pool) with
        # their locks held, and hangs; each such mutant then ends as a "timeout"
        + 'process_isolation = "forkserver"\n'
    )
    pyproject.write_text(text, "utf-8")


def _mutmut(dest: Path, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    # One thread per worker: no OpenMP pool to inherit across a fork (see process_isolation), and
    # --max-children 2 uses the cores anyway.
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mutmut", *args],
        cwd=dest,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("module", choices=sorted(MODULES))
    p.add_argument("--timeout", type=float, default=900, help="seconds for `mutmut run` (default 900)")
    p.add_argument("--keep", type=Path, default=None, help="scratch folder to reuse and keep")
    p.add_argument("--show", type=Path, default=None, help="write every survivor's diff to this file")
    p.add_argument("--children", type=int, default=2, help="mutants tested at once (default 2)")
    args = p.parse_args(argv)
    target, tests, extra = MODULES[args.module]

    dest = args.keep or Path(tempfile.mkdtemp(prefix=f"cocoattr-mutmut-{args.module}-"))
    fresh = not (dest / "pyproject.toml").is_file()
    dest.mkdir(parents=True, exist_ok=True)
    if fresh:
        _copy_tree(dest, extra)
        _configure(dest, target, tests, extra)
    else:  # a rerun: new or changed tests and sources; mutmut retries what changed
        for rel in tests:
            if rel.endswith(".py") and (REPO / rel).is_file():
                shutil.copy2(REPO / rel, dest / rel)
                if (dest / "mutants" / rel).parent.is_dir():
                    shutil.copy2(REPO / rel, dest / "mutants" / rel)
    try:
        cap = False
        try:
            run = _mutmut(dest, "run", "--max-children", str(args.children), timeout=args.timeout)
            tail = (run.stdout + run.stderr)[-2000:]
        except subprocess.TimeoutExpired as e:
            cap = True
            tail = ((e.stdout or b"") + (e.stderr or b"")).decode(errors="replace")[-2000:]
        results = _mutmut(dest, "results", "--all", "true").stdout
        status = dict(re.findall(r"^\s+(\S+): (.+)$", results, re.M))
        if not status:
            print(tail, file=sys.stderr)
            print("mutation.py: mutmut reported no mutants (see its output above)", file=sys.stderr)
            return 1
        counts = Counter(status.values())
        run_n = sum(n for s, n in counts.items() if s != "not checked")
        detected = counts["killed"] + counts["timeout"]
        print(f"module {target}: {len(status)} mutants, {run_n} run" + (" (time cap hit)" if cap else ""))
        for s, n in sorted(counts.items()):
            print(f"  {s}: {n}")
        if run_n:
            print(f"score (killed + timeout) / run = {detected}/{run_n} = {100 * detected / run_n:.1f}%")
        if args.show:
            survivors = sorted(k for k, s in status.items() if s in ("survived", "no tests"))
            with open(args.show, "w", encoding="utf-8") as f:
                for name in survivors:
                    f.write(f"### {name} ({status[name]})\n{_mutmut(dest, 'show', name).stdout}\n")
            print(f"{len(survivors)} survivor diffs in {args.show}")
        return 0
    finally:
        if args.keep is None:
            shutil.rmtree(dest, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
