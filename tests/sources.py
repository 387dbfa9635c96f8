"""The package's source files as syntax trees, for the tests that check the shape of the code.

The trees are built in a child interpreter and sent back pickled. CPython 3.11.7 keeps the AST
constructor's recursion depth in state that every thread shares (python/cpython#106905): an
`ast.parse` that runs while another thread builds a tree fails with "SystemError: AST constructor
recursion depth mismatch". The traceback module of 3.11 builds one to underline an error, and by the
time these tests run the suite has background threads that log errors (a CI run failed this way
once), so a parse in this process is not safe; the child has one thread.
"""

from __future__ import annotations

import ast
import functools
import pickle
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mqtt_tasks"

_PARSE_ALL = """
import ast, pickle, sys
from pathlib import Path
paths = sorted(Path(sys.argv[1]).rglob("*.py"))
sys.stdout.buffer.write(pickle.dumps([(p, ast.parse(p.read_text(encoding="utf-8"), str(p))) for p in paths]))
"""


@functools.cache
def package_trees() -> dict[Path, ast.Module]:
    """Every module of the package by path, parsed once per test session."""
    child = [sys.executable, "-c", _PARSE_ALL, str(PACKAGE)]
    done = subprocess.run(child, capture_output=True, check=True, timeout=120)
    trees: list[tuple[Path, ast.Module]] = pickle.loads(done.stdout)  # our own child's output
    return dict(trees)
