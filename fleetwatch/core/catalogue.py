"""Message catalogues: the words of a notice, per language, as data (CONTRACT §5).

The texts live in TOML files shipped in the package (``fleetwatch/catalogues/*.toml``),
one per language, and an operator may lay their own files over them
(``notice.catalogue_dir``); this module is the pure part: it checks a catalogue's
shape, merges an override over the shipped one field by field, picks the entry for a
notice (most specific key first, each field from the first entry that has it), fills
the placeholders and formats money. Reading the files is the adapter's job
(``adapters/catalogues.py``).

A catalogue file has these tables:

- ``[notice."KIND.CAUSE"]`` (and variants ``KIND.CAUSE.merchant``, ``host_outage.CAUSE.network``
  ...; see :func:`fleetwatch.core.notices.catalogue_keys`): ``title``, ``what_happened``,
  ``what_to_do`` (a list of steps), ``next`` and ``action`` (the one line a terminal's
  screen shows).
- ``[whose.WHOSE]``: ``label`` and ``explain`` for each of the contract's ``whose``.
- ``[page]``: the page's own words; ``[money]``: ``format`` (``{symbol}`` ``{code}``
  ``{amount}``), ``fallback`` (for a currency without a symbol) and ``symbols``;
  ``[defaults]``: what ``{support_phone}`` and ``{acquirer_name}`` say when not configured;
  ``list_separator``.

Texts may use only the contract's placeholders (:data:`PLACEHOLDERS`); anything else in
braces is refused when the catalogue is loaded, so an operator's typo is one clear error
at start, not a page with ``{supprt_phone}`` on it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from fleetwatch.core.notices import Money, NoticeFacts
from fleetwatch.core.settlement import minor_unit_exponent

PLACEHOLDERS: Final = ("support_phone", "acquirer_name", "terminal_id", "amount", "batch_no", "settle_days")
TEXT_FIELDS: Final = ("title", "what_happened", "next", "action")
LIST_FIELDS: Final = ("what_to_do",)
ENTRY_FIELDS: Final = (*TEXT_FIELDS, *LIST_FIELDS)
TABLES: Final = ("notice", "whose", "page", "money", "defaults")
SCREEN_TITLE_MAX: Final = 24
SCREEN_ACTION_MAX: Final = 60
ELLIPSIS: Final = "…"

_BRACES: Final = re.compile(r"\{([^{}]*)\}")


class CatalogueError(ValueError):
    """A catalogue file has the wrong shape or an unknown placeholder."""


def cut(text: str, limit: int) -> str:
    """At most ``limit`` code points; a longer text ends in "…"."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + ELLIPSIS


def fill(text: str, values: Mapping[str, str]) -> str:
    """Replace ``{name}`` for the contract's placeholders only (no str.format: no attribute access)."""
    return _BRACES.sub(lambda m: values.get(m[1], m[0]), text)


def placeholders_in(text: str) -> set[str]:
    """Every ``{...}`` a text uses."""
    return set(_BRACES.findall(text))


@dataclass(frozen=True, slots=True)
class Context:
    """What the operator configured for the texts."""

    support_phone: str = ""
    acquirer_name: str = ""
    settle_days: int = 1


@dataclass(frozen=True, slots=True)
class Texts:
    """The words of one notice, placeholders filled."""

    title: str
    what_happened: str
    what_to_do: tuple[str, ...]
    next: str
    action: str


@dataclass(frozen=True, slots=True)
class Catalogue:
    """One language's texts (already merged with any operator override)."""

    lang: str
    notice: Mapping[str, Mapping[str, Any]]
    whose: Mapping[str, Mapping[str, str]]
    page: Mapping[str, str]
    money_format: str = "{code} {amount}"
    money_fallback: str = "{code} {amount}"
    symbols: Mapping[str, str] = field(default_factory=dict)
    defaults: Mapping[str, str] = field(default_factory=dict)
    list_separator: str = ", "

    # ---- words ---------------------------------------------------------------------------

    def entry(self, keys: Sequence[str]) -> dict[str, Any]:
        """Each field from the first of ``keys`` whose entry has it; KeyError if none has a title."""
        out: dict[str, Any] = {}
        for key in keys:
            for name, value in self.notice.get(key, {}).items():
                out.setdefault(name, value)
        if "title" not in out:
            raise KeyError(f"no catalogue entry for {keys[0]!r} in {self.lang}")
        return out

    def texts(self, facts: NoticeFacts, ctx: Context, *, terminal_id: str | None = None) -> Texts:
        """The notice's texts; ``terminal_id`` narrows ``{terminal_id}`` to one terminal (its screen)."""
        values = self.values(facts, ctx, terminal_id=terminal_id)
        e = self.entry(facts.keys)
        steps = e.get("what_to_do", ())
        return Texts(
            title=fill(str(e.get("title", "")), values),
            what_happened=fill(str(e.get("what_happened", "")), values),
            what_to_do=tuple(fill(str(s), values) for s in steps),
            next=fill(str(e.get("next", "")), values),
            action=fill(str(e.get("action", e.get("title", ""))), values),
        )

    def values(self, facts: NoticeFacts, ctx: Context, *, terminal_id: str | None = None) -> dict[str, str]:
        """Placeholder values for one notice."""
        sep = self.list_separator
        terminals = (terminal_id,) if terminal_id is not None else facts.terminal_ids
        batches = list(dict.fromkeys(str(m.batch_no) for m in facts.money))
        return {
            "support_phone": ctx.support_phone or self.defaults.get("support_phone", ""),
            "acquirer_name": ctx.acquirer_name or self.defaults.get("acquirer_name", ""),
            "terminal_id": sep.join(terminals) if terminals else self.defaults.get("terminal_id", ""),
            "amount": sep.join(self.totals(facts.money)) or self.defaults.get("amount", ""),
            "batch_no": sep.join(batches) or self.defaults.get("batch_no", ""),
            "settle_days": str(ctx.settle_days),
        }

    def whose_label(self, whose: str) -> str:
        return self.whose.get(whose, {}).get("label", whose)

    def whose_explain(self, whose: str) -> str:
        return self.whose.get(whose, {}).get("explain", "")

    def word(self, name: str, **values: str) -> str:
        """A page word (``[page]``), with its own ``{...}`` filled."""
        return fill(self.page.get(name, name), values)

    # ---- money ---------------------------------------------------------------------------

    def money(self, amount_minor: int, currency: str) -> str:
        """``¥4,684.17`` (zh-CN) or ``CNY 4,684.17`` (en), as the catalogue's format says."""
        exp = minor_unit_exponent(currency)
        sign = "-" if amount_minor < 0 else ""
        major, minor = divmod(abs(amount_minor), 10**exp)
        amount = sign + f"{major:,}" + (f".{minor:0{exp}d}" if exp else "")
        symbol = self.symbols.get(currency)
        pattern = self.money_format if symbol is not None else self.money_fallback
        return fill(pattern, {"symbol": symbol or "", "code": currency, "amount": amount})

    def totals(self, money: Sequence[Money]) -> list[str]:
        """The total per currency, in the order currencies first appear."""
        sums: dict[str, int] = {}
        for m in money:
            sums[m.currency] = sums.get(m.currency, 0) + m.amount_minor
        return [self.money(v, c) for c, v in sums.items()]


# ---- building and checking ----------------------------------------------------------------

def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """An operator's file over the shipped one: tables merge, entries merge field by field."""
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in base.items()}
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse(lang: str, data: Mapping[str, Any], *, source: str = "catalogue") -> Catalogue:
    """Check a (merged) catalogue's shape and placeholders and build it; CatalogueError if wrong."""
    unknown = set(data) - {*TABLES, "list_separator", "lang"}
    if unknown:
        raise CatalogueError(f"{source}: unknown table(s) {sorted(unknown)}")
    notice = _table(data, "notice", source)
    for key, entry in notice.items():
        if not isinstance(entry, Mapping):
            raise CatalogueError(f"{source}: notice.{key} must be a table")
        for name, value in entry.items():
            where = f"{source}: notice.{key}.{name}"
            if name in TEXT_FIELDS:
                _check_text(value, where)
            elif name in LIST_FIELDS:
                if not isinstance(value, list):
                    raise CatalogueError(f"{where} must be a list of texts")
                for step in value:
                    _check_text(step, where)
            else:
                raise CatalogueError(f"{where}: unknown field (known: {', '.join(ENTRY_FIELDS)})")
    whose = _table(data, "whose", source)
    for key, entry in whose.items():
        if not isinstance(entry, Mapping) or not all(isinstance(v, str) for v in entry.values()):
            raise CatalogueError(f"{source}: whose.{key} must be a table of texts")
        for name, value in entry.items():
            _check_text(value, f"{source}: whose.{key}.{name}")
    page = _table(data, "page", source)
    money = _table(data, "money", source)
    defaults = _table(data, "defaults", source)
    for table, values in (("page", page), ("defaults", defaults)):
        for name, value in values.items():
            if not isinstance(value, str):
                raise CatalogueError(f"{source}: {table}.{name} must be a text")
    symbols = money.get("symbols", {})
    if not isinstance(symbols, Mapping):
        raise CatalogueError(f"{source}: money.symbols must be a table")
    sep = data.get("list_separator", ", ")
    if not isinstance(sep, str):
        raise CatalogueError(f"{source}: list_separator must be a text")
    return Catalogue(
        lang=lang, notice=notice, whose=whose, page=page,
        money_format=str(money.get("format", "{code} {amount}")),
        money_fallback=str(money.get("fallback", "{code} {amount}")),
        symbols={str(k): str(v) for k, v in symbols.items()}, defaults=defaults, list_separator=sep,
    )


def _table(data: Mapping[str, Any], name: str, source: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, Mapping):
        raise CatalogueError(f"{source}: [{name}] must be a table")
    return dict(value)


def _check_text(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise CatalogueError(f"{where} must be a text")
    bad = placeholders_in(value) - set(PLACEHOLDERS)
    if bad:
        raise CatalogueError(f"{where}: unknown placeholder(s) {sorted(bad)}; "
                             f"known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}")


def negotiate(lang: str | None, accept_language: str | None, default: str) -> str:
    """The contract's language choice: ``?lang=``, else Accept-Language, by prefix, else default.

    ``zh*`` is ``zh-CN`` and ``en*`` is ``en``; Accept-Language is read by its q values,
    highest first (ties in the order given).
    """
    for candidate in ([lang] if lang else []) + _accepted(accept_language):
        found = match_lang(candidate)
        if found is not None:
            return found
    return default


def match_lang(tag: str) -> str | None:
    t = tag.strip().lower()
    if t.startswith("zh"):
        return "zh-CN"
    if t.startswith("en"):
        return "en"
    return None


def _accepted(header: str | None) -> list[str]:
    if not header:
        return []
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate(header.split(",")[:32]):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        for p in params.split(";"):
            name, _, value = p.strip().partition("=")
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if tag and q > 0:
            ranked.append((-q, i, tag))
    ranked.sort()
    return [tag for _, _, tag in ranked]


# ---- a merchant's notice with its words ----------------------------------------------------

@dataclass(frozen=True, slots=True)
class MoneyLine:
    """One money entry as shown: the contract's fields plus its display text."""

    amount_minor: int
    currency: str
    display: str
    batch_no: int
    business_date: str | None
    terminal_id: str | None


@dataclass(frozen=True, slots=True)
class NoticeItem:
    """One notice with its words, for the API and the page."""

    facts: NoticeFacts
    texts: Texts
    money: tuple[MoneyLine, ...]
    whose_label: str
    whose_explain: str


@dataclass(frozen=True, slots=True)
class Notice:
    """A merchant's notices in one language at ``generated_at``."""

    merchant_id: str
    lang: str
    generated_at: float
    items: tuple[NoticeItem, ...]

    @property
    def current(self) -> tuple[NoticeItem, ...]:
        return tuple(i for i in self.items if i.facts.current)

    @property
    def resolved(self) -> tuple[NoticeItem, ...]:
        return tuple(i for i in self.items if not i.facts.current)


def render_notice(
    merchant_id: str, facts: Sequence[NoticeFacts], catalogue: Catalogue, ctx: Context, now: float,
) -> Notice:
    """Put words on the facts."""
    values = {"support_phone": ctx.support_phone or catalogue.defaults.get("support_phone", ""),
              "acquirer_name": ctx.acquirer_name or catalogue.defaults.get("acquirer_name", "")}
    items = tuple(
        NoticeItem(
            facts=f, texts=catalogue.texts(f, ctx),
            money=tuple(MoneyLine(m.amount_minor, m.currency, catalogue.money(m.amount_minor, m.currency),
                                  m.batch_no, m.business_date, m.terminal_id) for m in f.money),
            whose_label=fill(catalogue.whose_label(f.whose), values),
            whose_explain=fill(catalogue.whose_explain(f.whose), values),
        )
        for f in facts
    )
    return Notice(merchant_id, catalogue.lang, now, items)
