"""Records whose ``__init__`` is written out by hand for the compiled hot path (a dataclass's
generated one stays interpreted under mypyc) must still take exactly their fields: the same
names, in the same order, with the same defaults. These tests would fail on a field added,
dropped, renamed, reordered or given another default without its ``__init__`` following."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from fleetwatch.core import model, settlement
from tests.core.source_annotations import annotations_in_source, value_of_type

HAND_WRITTEN: tuple[type[Any], ...] = (
    model.TerminalRecord, model.BatchRecord, model.TxnRecord, model.TxnWrite, settlement._Batch,
)


def _distinct_values(cls: type[Any]) -> dict[str, object]:
    """A different value for every field, so a value landing in the wrong one shows."""
    annotations = annotations_in_source(cls)
    return {f.name: value_of_type(annotations[f.name], i) for i, f in enumerate(dataclasses.fields(cls))}


@pytest.mark.parametrize("cls", HAND_WRITTEN, ids=lambda c: c.__name__)
def test_every_field_is_taken_by_keyword(cls: type[Any]) -> None:
    values = _distinct_values(cls)
    obj = cls(**values)
    assert {name: getattr(obj, name) for name in values} == values


@pytest.mark.parametrize("cls", HAND_WRITTEN, ids=lambda c: c.__name__)
def test_fields_are_taken_positionally_in_declaration_order(cls: type[Any]) -> None:
    values = _distinct_values(cls)
    obj = cls(*values.values())
    assert [getattr(obj, name) for name in values] == list(values.values())


@pytest.mark.parametrize("cls", HAND_WRITTEN, ids=lambda c: c.__name__)
def test_defaults_are_the_fields_defaults(cls: type[Any]) -> None:
    values = _distinct_values(cls)
    required = {f.name: values[f.name] for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    obj = cls(**required)
    for f in dataclasses.fields(cls):
        if f.name in required:
            continue
        factory = f.default_factory
        expected = f.default if f.default is not dataclasses.MISSING else factory() if callable(factory) else None
        assert getattr(obj, f.name) == expected, f.name


def test_a_default_factory_gives_each_record_its_own_object() -> None:
    rec = model.BatchRecord(terminal_id="T1", batch_no=1, currency="EUR", merchant_id="M1")
    a, b = settlement._Batch(rec), settlement._Batch(rec)
    a.gaps["x"] = {}
    assert b.gaps == {}


@pytest.mark.parametrize("cls", HAND_WRITTEN, ids=lambda c: c.__name__)
def test_too_many_arguments_are_refused(cls: type[Any]) -> None:
    values = _distinct_values(cls)
    with pytest.raises(TypeError):
        cls(*values.values(), None)
