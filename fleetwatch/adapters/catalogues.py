"""Reads the message catalogues: the shipped ones (package data) and the operator's overrides.

The shipped files are ``fleetwatch/catalogues/<lang>.toml``; an operator's
``notice.catalogue_dir`` may hold files of the same names with only the entries (or
fields) to change. A file that is not valid TOML, or that uses a placeholder the
contract does not know, stops the daemon at start with one line naming the file.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Final

from fleetwatch.core.catalogue import Catalogue, CatalogueError, merge, parse
from fleetwatch.errors import ConfigError

LANGS: Final = ("zh-CN", "en")
"""The languages fleetwatch ships texts for (CONTRACT §5)."""


def shipped_data(lang: str) -> dict[str, Any]:
    """The shipped catalogue of ``lang`` as plain data."""
    text = resources.files("fleetwatch").joinpath("catalogues", f"{lang}.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def load_catalogues(override_dir: str = "") -> dict[str, Catalogue]:
    """Every shipped language, each with the operator's file for it laid over; ConfigError if bad."""
    folder = Path(override_dir) if override_dir else None
    if folder is not None and not folder.is_dir():
        raise ConfigError(f"notice.catalogue_dir {override_dir} is not a directory")
    out: dict[str, Catalogue] = {}
    for lang in LANGS:
        data = shipped_data(lang)
        source = f"catalogues/{lang}.toml"
        if folder is not None and (folder / f"{lang}.toml").is_file():
            path = folder / f"{lang}.toml"
            source = str(path)
            try:
                override = tomllib.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"catalogue {path} cannot be read: {exc}") from exc
            data = merge(data, override)
        try:
            out[lang] = parse(lang, data, source=source)
        except CatalogueError as exc:
            raise ConfigError(str(exc)) from exc
    return out
