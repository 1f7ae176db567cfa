"""The one-SMS line of a merchant notification (CONTRACT §6: ``sms_text``).

A gateway that turns an event into an SMS needs a line that fits one message: at most 70
UTF-16 code units (the UCS-2 limit of one SMS, which is what Chinese text is sent in),
after the placeholders are filled, cut with "…". It says the notice's title, which
terminal ("N terminals" when the notice lists several) and what to do first; a
settlement notice names the amount. The templates are catalogue words (``[page]``
``sms``, ``sms_money``, ``sms_resolved``, ``sms_terminals``, ``sms_digest``), so an operator
can reword them like any other text.
"""

from __future__ import annotations

from typing import Final

from fleetwatch.core.catalogue import ELLIPSIS, Catalogue, Context
from fleetwatch.core.notices import NoticeFacts

SMS_MAX_UTF16: Final = 70


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units (a character outside the BMP counts 2)."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def cut_utf16(text: str, limit: int = SMS_MAX_UTF16) -> str:
    """At most ``limit`` UTF-16 units; a longer text is cut and ends in "…"."""
    if utf16_len(text) <= limit:
        return text
    out, used = [], utf16_len(ELLIPSIS)
    for ch in text:
        width = 2 if ord(ch) > 0xFFFF else 1
        if used + width > limit:
            break
        out.append(ch)
        used += width
    return "".join(out).rstrip() + ELLIPSIS


def terminal_phrase(facts: NoticeFacts, cat: Catalogue) -> str:
    """"POS机 T00012345", "3台POS机", or the catalogue's word for "your terminal"."""
    tids = facts.terminal_ids
    if len(tids) == 1:
        return cat.word("terminal", terminal_id=tids[0])
    if len(tids) > 1:
        return cat.word("sms_terminals", count=str(len(tids)))
    return cat.defaults.get("terminal_id", "")


def sms_text(facts: NoticeFacts, cat: Catalogue, ctx: Context) -> str:
    """The notice as one SMS: title, terminal, first step (and the amount of a settlement notice)."""
    texts = cat.texts(facts, ctx)
    terminal = terminal_phrase(facts, cat)
    if not facts.current:
        return cut_utf16(cat.word("sms_resolved", title=texts.title, terminal=terminal))
    step = texts.what_to_do[0] if texts.what_to_do else texts.action
    if facts.money:
        amount = cat.list_separator.join(cat.totals(facts.money))
        line = cat.word("sms_money", title=texts.title, amount=amount, terminal=terminal, step=step)
    else:
        line = cat.word("sms", title=texts.title, terminal=terminal, step=step)
    return cut_utf16(line)


def digest_sms(count: int, cat: Catalogue) -> str:
    """A digest's line: how many notices it holds."""
    return cut_utf16(cat.word("sms_digest", count=str(count)))
