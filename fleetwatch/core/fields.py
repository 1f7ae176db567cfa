"""The checks msgspec no longer makes for the terminal messages (see fleetwatch/core/messages.py).

A module of its own so the checks are compiled with the hot path (fleetwatch/compiled.txt):
messages.py stays Python because msgspec reads its Structs' annotations, and these run on
every message, where an interpreted call costs as much as the check itself.
"""

from __future__ import annotations

from fleetwatch.core.messages import BatchClose, Message, Settlement, StateMsg, StatusCleared, TerminalStatus, TxnResult

_ID_PUNCTUATION = str.maketrans("", "", "-.")


def is_id(s: str) -> bool:
    """1 to 32 characters of ``A-Z a-z 0-9 - .`` (the contract's identifier format)."""
    if not (0 < len(s) <= 32 and s.isascii()):
        return False
    if s.isalnum():
        return True
    rest = s.translate(_ID_PUNCTUATION)
    return not rest or rest.isalnum()


def is_currency(s: str) -> bool:
    """Three ASCII capital letters."""
    return len(s) == 3 and s.isascii() and s.isalpha() and s.isupper()


def is_rc(s: str) -> bool:
    """Two ASCII letters or digits."""
    return len(s) == 2 and s.isascii() and s.isalnum()


ID_RULE = "Expected `str` of 1 to 32 characters of A-Z a-z 0-9 - ."
CURRENCY_RULE = "Expected `str` of three capital letters A-Z"
RC_RULE = "Expected `str` of two characters A-Z a-z 0-9"


def invalid_field(msg: Message, topic_terminal_id: str | None = None) -> str | None:
    """What msgspec's patterns would have refused in a decoded terminal message, as
    ``"<rule> - at `$.<field>`"``, or None when every field is valid.

    ``terminal_id`` is not checked again when it equals ``topic_terminal_id`` (the
    topic pattern checked that one); checks run in field order, like msgspec's.
    """
    if isinstance(msg, (Settlement, StatusCleared)):  # a tuple: ``X | Y`` builds a union object per call
        return None
    if msg.terminal_id != topic_terminal_id and not is_id(msg.terminal_id):
        return f"{ID_RULE} - at `$.terminal_id`"
    if isinstance(msg, StateMsg):
        return None
    if isinstance(msg, TerminalStatus):
        if msg.merchant_id is not None and not is_id(msg.merchant_id):
            return f"{ID_RULE} - at `$.merchant_id`"
        return None
    if not is_id(msg.merchant_id):
        return f"{ID_RULE} - at `$.merchant_id`"
    if isinstance(msg, TxnResult):
        if not is_currency(msg.currency):
            return f"{CURRENCY_RULE} - at `$.currency`"
        if msg.rc is not None and not is_rc(msg.rc):
            return f"{RC_RULE} - at `$.rc`"
    elif isinstance(msg, BatchClose) and not is_currency(msg.currency):
        return f"{CURRENCY_RULE} - at `$.currency`"
    return None
