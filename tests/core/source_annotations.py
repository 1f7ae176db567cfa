"""Field annotations read from a class's source file, for tests of records that mypyc
compiles: a compiled class keeps only ``type`` in its annotations for optional fields."""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def annotations_in_source(cls: type) -> dict[str, str]:
    """Field -> annotation text, as written in the class body."""
    module = sys.modules[cls.__module__]
    source = Path(module.__file__ or "").parent / f"{cls.__module__.rpartition('.')[2]}.py"
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            return {n.target.id: ast.unparse(n.annotation) for n in node.body
                    if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    raise AssertionError(f"{cls.__name__} not found in {source}")
