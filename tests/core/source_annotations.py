"""Field annotations read from a class's source file, and test values of those types, for
tests of records that mypyc compiles: a compiled class keeps only ``type`` in its annotations
for optional fields, and its ``__init__`` checks the types it is given."""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any

from fleetwatch.core import model


def annotations_in_source(cls: type) -> dict[str, str]:
    """Field -> annotation text, as written in the class body."""
    module = sys.modules[cls.__module__]
    source = Path(module.__file__ or "").parent / f"{cls.__module__.rpartition('.')[2]}.py"
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            return {n.target.id: ast.unparse(n.annotation) for n in node.body
                    if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    raise AssertionError(f"{cls.__name__} not found in {source}")


def value_of_type(annotation: str, i: int) -> Any:
    """A value of the annotated type that differs from the one any other ``i`` gets (bools
    alternate, so two neighbouring flags swapped still show)."""
    if "BatchRecord" in annotation:
        return model.BatchRecord(terminal_id=f"T{i}", batch_no=i, currency="EUR", merchant_id=f"M{i}")
    if "TxnRecord" in annotation:
        return model.TxnRecord(f"T{i}", f"X{i}", f"M{i}", i, "EUR", "sale", "approved", i, i, float(i))
    if annotation.startswith("dict"):
        return {f"key-{i}": None}
    if "str" in annotation:
        return f"value-{i}"
    if "float" in annotation:
        return i + 0.25
    if "bool" in annotation:
        return i % 2 == 0
    if "int" in annotation:
        return 1000 + i
    raise AssertionError(f"no test value for {annotation}")
