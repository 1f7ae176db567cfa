"""The golden tests find the shared tools where they are told to, and fail loudly when they are not."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.golden import SHARED_ENV, shared_dir


def test_configured_shared_directory_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$FLEETWATCH_SHARED wins over the ../shared default, whatever the checkout layout."""
    (tmp_path / "tools").mkdir()
    for name in ("score.py", "replay.py"):
        (tmp_path / "tools" / name).write_text("", encoding="utf-8")
    monkeypatch.setenv(SHARED_ENV, str(tmp_path))
    assert shared_dir() == tmp_path


def test_missing_shared_tools_fail_with_the_place_and_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A configured directory without the tools is an error naming it and the variable, never a
    silent skip nor a fall back to some other place."""
    monkeypatch.setenv(SHARED_ENV, str(tmp_path))
    expected = f"{SHARED_ENV}={tmp_path}: missing tools/score.py, tools/replay.py"
    with pytest.raises(FileNotFoundError, match=re.escape(expected)):
        shared_dir()
