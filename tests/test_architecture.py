"""The package's shape: imports point down (import-linter's contract in pyproject.toml, run
here too), no import circle anywhere, and modules and functions small enough to read."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "cocoattr"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
# Functions still over the limit, each with the reason it stays whole (README "Architecture").
LONG_FUNCTIONS: dict[str, str] = {}


def _strongly_connected(graph: grimp.ImportGraph, modules: set[str]) -> list[set[str]]:
    """Tarjan's algorithm over the module import graph; components of 2+ modules are circles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v) & modules:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            out.append(component)

    for m in sorted(modules):
        if m not in index:
            visit(m)
    return out


def test_import_contracts_hold():
    lint_imports = Path(sys.executable).parent / "lint-imports"  # installed by requirements-dev.txt
    proc = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_no_import_circle_anywhere_in_the_package():
    """Every import counts, the function-local ones included (grimp reads them all)."""
    graph = grimp.build_graph("cocoattr")
    modules = {m for m in graph.modules if m.startswith("cocoattr")}
    circles = [sorted(c) for c in _strongly_connected(graph, modules) if len(c) > 1]
    assert not circles, circles


def _functions(tree: ast.AST, prefix: str = ""):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield f"{prefix}{node.name}", node.end_lineno - node.lineno + 1
            yield from _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")


def test_modules_and_functions_stay_small():
    too_long, long_functions = [], {}
    for path in sorted([*PACKAGE.rglob("*.py"), ROOT / "app.py"]):
        text = path.read_text("utf-8")
        rel = path.relative_to(ROOT).as_posix()
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append((rel, text.count("\n")))
        for name, n in _functions(ast.parse(text)):
            if n > MAX_FUNCTION_LINES:
                long_functions[f"{rel}:{name}"] = n
    assert not too_long, too_long
    assert set(long_functions) <= set(LONG_FUNCTIONS), long_functions


def test_the_built_wheel_holds_every_module_and_data_file(tmp_path):
    """`pip install cocoattr` must give a working `cocoattr` command: every tracked file of the
    package (subpackages such as cli and ui, the vocabularies, the gallery) goes into the wheel.
    Built from a copy of the tracked files, so the checkout gets no build/ folder."""
    import shutil
    import zipfile

    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    tracked = [f for f in listed.stdout.splitlines() if (ROOT / f).is_file()]
    source = tmp_path / "source"
    for f in tracked:
        (source / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, source / f)
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
             "--wheel-dir", str(tmp_path), str(source)]  # fmt: skip
    proc = subprocess.run(build, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("cocoattr-*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    missing = [f for f in tracked if f.startswith("cocoattr/") and f not in inside]
    assert not missing, f"left out of the wheel: {missing[:8]}"
