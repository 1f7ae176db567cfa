"""The message catalogues: complete in every shipped language, safe for a shop owner to read."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from fleetwatch.adapters.catalogues import LANGS, load_catalogues, shipped_data
from fleetwatch.core.attribution import BUILTIN_RC
from fleetwatch.core.catalogue import (
    PLACEHOLDERS,
    Catalogue,
    CatalogueError,
    Context,
    cut,
    fill,
    merge,
    negotiate,
    parse,
    placeholders_in,
    render_notice,
)
from fleetwatch.core.model import CAUSES, Incident
from fleetwatch.core.notices import UPSTREAM_KINDS, WHOSE_VALUES, build_notices
from fleetwatch.errors import ConfigError

CATALOGUES = load_catalogues()
FAKE_ID = "3f2a9c0d5e8b4a1f9e7d6c5b4a392817"


def all_texts(data: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, text) for every notice and whose text of a catalogue file."""
    out: list[tuple[str, str]] = []
    for key, entry in data.get("notice", {}).items():
        for name, value in entry.items():
            for text in value if isinstance(value, list) else [value]:
                out.append((f"notice.{key}.{name}", text))
    for key, entry in data.get("whose", {}).items():
        out += [(f"whose.{key}.{name}", v) for name, v in entry.items()]
    return out


@pytest.mark.parametrize("lang", LANGS)
def test_every_kind_cause_and_whose_has_texts(lang: str) -> None:
    """Each (kind, cause) of model.CAUSES has a complete entry, each upstream kind has its variant,
    and every whose has a label and an explanation."""
    data = shipped_data(lang)
    entries = data["notice"]
    needed = [f"{k}.{c}" for k, causes in CAUSES.items() for c in causes]
    needed += [f"host_outage.{c}.{u}" for c in CAUSES["host_outage"] for u in UPSTREAM_KINDS if u != "host"]
    needed += [f"upstream.{u}" for u in UPSTREAM_KINDS]
    needed += [f"network.{c}.merchant" for c in CAUSES["network"]]
    for key in needed:
        assert key in entries, f"{lang}: no entry {key}"
    for key, entry in entries.items():
        if key.count(".") == 1 or key.startswith("upstream."):
            for name in ("title", "what_happened", "what_to_do", "next", "action"):
                assert entry.get(name), f"{lang}: {key} has no {name}"
            assert all(s.strip() for s in entry["what_to_do"]), key
    for whose in WHOSE_VALUES:
        assert data["whose"][whose]["label"], whose
        assert data["whose"][whose]["explain"], whose


@pytest.mark.parametrize("lang", LANGS)
def test_texts_never_show_an_id_or_a_bare_response_code(lang: str) -> None:
    """No placeholder outside the contract's six (there is none for an incident id), and no
    response code standing alone: a number like 57 only as a measure (57 mm, 57毫米)."""
    codes = "|".join(sorted(BUILTIN_RC, key=len, reverse=True))
    bare = re.compile(rf"(?<![A-Za-z0-9])({codes}|rc|RC)(?![A-Za-z0-9]| ?mm|毫米)")
    for where, text in all_texts(shipped_data(lang)):
        assert placeholders_in(text) <= set(PLACEHOLDERS), where
        assert not bare.search(text), f"{where}: {text}"


@pytest.mark.parametrize("lang", LANGS)
def test_rendered_notices_carry_no_incident_id(lang: str) -> None:
    """Every entry rendered for a real incident: the incident's id appears in no text."""
    cat = CATALOGUES[lang]
    for kind, causes in CAUSES.items():
        for cause in causes:
            for scope in ("terminal", "merchant", "fleet"):
                if kind == "host_outage" and scope != "fleet":
                    continue
                i = Incident(id=FAKE_ID, key="k", kind=kind, cause=cause, scope=scope,
                             severity="major", status="open", opened_at=1.0, updated_at=1.0,
                             summary=f"summary {FAKE_ID}", terminal_id="T1" if scope == "terminal" else None,
                             merchant_id="M1" if scope != "fleet" else None,
                             evidence={"amount_minor": 100, "currency": "CNY", "batch_no": 3})
                members = {FAKE_ID: {"T1"}} if scope == "fleet" else {}
                [facts] = build_notices("M1", [i], members, 2.0, 10.0)
                notice = render_notice("M1", [facts], cat, Context("95588", "Bank"), 2.0)
                t = notice.items[0].texts
                for text in (t.title, t.what_happened, t.next, t.action, *t.what_to_do,
                             notice.items[0].whose_label, notice.items[0].whose_explain):
                    assert FAKE_ID not in text
                    assert "{" not in text, text


def test_money_reads_as_the_contract_shows_it() -> None:
    assert CATALOGUES["zh-CN"].money(468417, "CNY") == "¥4,684.17"
    assert CATALOGUES["en"].money(468417, "CNY") == "CNY 4,684.17"
    assert CATALOGUES["en"].money(12345, "JPY") == "JPY 12,345"
    assert CATALOGUES["zh-CN"].money(1234567, "KWD") == "KWD 1,234.567"


def test_placeholders_fill_from_the_operator_and_the_notice() -> None:
    """support_phone / acquirer_name come from the settings, else the catalogue's default words."""
    incs = [Incident(id="x", key="k", kind="settlement_gap", cause="not_settled", scope="terminal",
                     severity="major", status="open", opened_at=1.0, updated_at=1.0, summary="",
                     terminal_id="T1", merchant_id="M1",
                     evidence={"amount_minor": 468417, "currency": "CNY", "batch_no": 17})]
    [facts] = build_notices("M1", incs, {}, 2.0, 10.0)
    texts = CATALOGUES["zh-CN"].texts(facts, Context(support_phone="95588", acquirer_name="示例银行", settle_days=2))
    assert "¥4,684.17" in texts.what_happened
    assert "T+2" in texts.what_happened
    assert any("示例银行（95588）" in s for s in texts.what_to_do)
    plain = CATALOGUES["en"].texts(facts, Context())
    assert any("your acquirer (the number on your terminal or contract)" in s for s in plain.what_to_do)


def test_fill_touches_only_known_names() -> None:
    assert fill("{amount} {unknown} {0.__class__}", {"amount": "¥1"}) == "¥1 {unknown} {0.__class__}"


def test_cut_counts_code_points() -> None:
    assert cut("打印纸用完，请换一卷57毫米热敏纸", 60) == "打印纸用完，请换一卷57毫米热敏纸"
    assert cut("a" * 30, 24) == "a" * 23 + "…"
    assert len(cut("银" * 70, 60)) == 60


@pytest.mark.parametrize(("lang", "header", "expected"), [
    (None, None, "zh-CN"),
    ("en", None, "en"),
    ("en-GB", "zh-CN", "en"),
    ("fr", "fr-FR, en-US;q=0.8, zh;q=0.9", "zh-CN"),
    (None, "de, en;q=0.5", "en"),
    (None, "zh-TW", "zh-CN"),
    (None, "en;q=0, de", "zh-CN"),
])
def test_language_by_parameter_then_header_then_default(lang: str | None, header: str | None,
                                                        expected: str) -> None:
    assert negotiate(lang, header, "zh-CN") == expected


def test_an_operator_overrides_one_field(tmp_path: Path) -> None:
    """An override file changes only what it names; the rest stays as shipped."""
    (tmp_path / "en.toml").write_text('[notice."printer.no_paper"]\ntitle = "Paper out: call {support_phone}"\n')
    cats = load_catalogues(str(tmp_path))
    entry = cats["en"].entry(["printer.no_paper"])
    assert entry["title"] == "Paper out: call {support_phone}"
    assert entry["what_to_do"] == shipped_data("en")["notice"]["printer.no_paper"]["what_to_do"]
    assert cats["zh-CN"].entry(["printer.no_paper"])["title"] == "打印机缺纸"


def test_a_misspelt_placeholder_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / "zh-CN.toml").write_text('[notice."printer.jam"]\nnext = "请致电 {supprt_phone}"\n')
    with pytest.raises(ConfigError, match=r"supprt_phone"):
        load_catalogues(str(tmp_path))
    with pytest.raises(ConfigError, match="not a directory"):
        load_catalogues(str(tmp_path / "missing"))


def test_shape_errors_are_refused() -> None:
    with pytest.raises(CatalogueError, match="unknown field"):
        parse("en", {"notice": {"printer.jam": {"titel": "x"}}})
    with pytest.raises(CatalogueError, match="list"):
        parse("en", {"notice": {"printer.jam": {"what_to_do": "one step"}}})
    merged = merge({"notice": {"a": {"title": "A", "next": "N"}}}, {"notice": {"a": {"title": "B"}}})
    assert merged == {"notice": {"a": {"title": "B", "next": "N"}}}
    assert isinstance(parse("en", merged), Catalogue)
