"""Topic + bytes -> Envelope | Rejection: the only gate between the broker and the core.

Every message passes here once, so the accepted path is kept to: one topic parse by
string methods, one length check, one bytes regex (the PAN prefilter), an ASCII test, one typed msgspec
decode with a decoder built once per message type (without regex patterns for the
terminal messages) and the string-method checks of ``fields.invalid_field``. Anything slower (the generic parse
that tells ``version`` from ``schema`` from ``json``) runs only after the typed decode
has already failed.

Checks run in the contract's order, and the first that fails names the reason:
``topic`` -> ``too_large`` -> ``pan`` -> ``json`` -> ``version`` -> ``schema`` ->
``spoof``. ``pan`` comes before everything that reads the payload, so a message with a
card number is rejected as ``pan`` whatever else is wrong with it and nothing of it
(no excerpt, no digit in the detail) leaves this module.

``decode`` never raises, for any bytes on any topic: a daemon must not die on a
terminal's bad firmware.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import msgspec

from fleetwatch.core import pan
from fleetwatch.core.fields import invalid_field, is_id
from fleetwatch.core.messages import (
    BatchClose,
    Envelope,
    Heartbeat,
    Payload,
    Settlement,
    StateMsg,
    StatusCleared,
    TerminalStatus,
    TxnResult,
)
from fleetwatch.core.model import DeadLetter, MessageType, RejectReason

EXCERPT_CHARS: Final = 256

_TERM_LEAVES: Final[dict[str, MessageType]] = {
    "heartbeat": "heartbeat", "txn": "txn", "batch": "batch", "state": "state",
}
_TYPES: Final[dict[MessageType, type[Payload]]] = {
    "heartbeat": Heartbeat, "txn": TxnResult, "batch": BatchClose, "state": StateMsg,
    "settlement": Settlement, "status": TerminalStatus,
}
_PAN_DETAIL: Final = "a string value holds a card number candidate; payload discarded"


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message was not accepted, safe to count, log and dead-letter.

    ``detail`` never quotes the payload. ``payload_excerpt`` is the payload's first
    characters (UTF-8, invalid bytes replaced, PAN candidates masked) for an operator
    to see what firmware sent; it is always ``None`` for ``pan``. ``terminal_id`` comes
    from the topic, never from the payload (which may be lying), and is ``None`` for
    the settlement topic and for a topic that did not parse. For reason ``topic`` the
    topic itself is truncated and masked like an excerpt: it is untrusted input too.
    """

    reason: RejectReason
    detail: str
    topic: str
    terminal_id: str | None = None
    payload_excerpt: str | None = None

    def dead_letter(self, received_at: float) -> DeadLetter:
        """The store effect for this rejection."""
        return DeadLetter(
            topic=self.topic,
            reason=self.reason,
            detail=self.detail,
            received_at=received_at,
            payload_excerpt=None if self.reason == "pan" else self.payload_excerpt,
        )


def excerpt(data: bytes | str) -> str:
    """First :data:`EXCERPT_CHARS` characters with PAN candidates masked.

    Masks before truncating, so a card number cut by the truncation is still masked;
    only a bounded head is decoded, so a huge ``too_large`` payload costs nothing.
    """
    head = data[: EXCERPT_CHARS * 8]
    text = head.decode("utf-8", errors="replace") if isinstance(head, bytes) else head
    return pan.redact(text)[:EXCERPT_CHARS]


def _is_version_1(v: object) -> bool:
    return type(v) is int and v == 1


def _schema_detail(exc: msgspec.DecodeError) -> str:
    """msgspec's message minus any payload value it quotes (enum mismatches do)."""
    text = str(exc)
    head, sep, path = text.rpartition(" - at `")
    if not sep:
        head, path = text, ""
    if head.startswith("Invalid enum value"):
        head = "Invalid enum value"
    return f"{head}{sep}{path}"[:200]


class Decoder:
    """Decodes one MQTT message against the contract's topics and payloads.

    Holds only immutable, precomputed state (the topic pattern, one typed msgspec decoder
    per message type), so one instance serves the whole daemon.
    """

    __slots__ = ("_decoders", "_max_bytes", "_settlement_topic", "_status_prefix", "_term_prefix",
                 "_term_prefix_len")

    def __init__(self, prefix: str, max_bytes: int = 8192) -> None:
        prefix = prefix.rstrip("/")
        self._term_prefix = f"{prefix}/term/"
        self._term_prefix_len = len(self._term_prefix)
        self._settlement_topic = f"{prefix}/host/settlement"
        self._status_prefix = f"{prefix}/host/terminal/"
        self._max_bytes = max_bytes
        self._decoders: dict[MessageType, msgspec.json.Decoder[Payload]] = {
            kind: msgspec.json.Decoder(cls) for kind, cls in _TYPES.items()
        }

    def route(self, topic: str) -> tuple[MessageType, str | None] | None:
        """(message type, terminal id from the topic) or None for a foreign topic.

        ``{prefix}/term/{id}/{leaf}`` with a valid id and one of the four leaves, by string
        methods (cheaper than a regex match and its groups); the id is validated here once,
        so the payload's ``terminal_id`` only has to equal it.
        """
        if topic == self._settlement_topic:
            return "settlement", None
        if not topic.startswith(self._term_prefix):
            return self._status_route(topic)
        terminal_id, _, leaf = topic[self._term_prefix_len :].partition("/")
        kind = _TERM_LEAVES.get(leaf)
        if kind is None or not is_id(terminal_id):
            return None
        return kind, terminal_id

    def _status_route(self, topic: str) -> tuple[MessageType, str | None] | None:
        """``{prefix}/host/terminal/{id}/status``: the acquirer's word on one terminal (§7)."""
        if not topic.startswith(self._status_prefix):
            return None
        terminal_id, _, leaf = topic[len(self._status_prefix):].partition("/")
        if leaf != "status" or not is_id(terminal_id):
            return None
        return "status", terminal_id

    def decode(self, topic: str, payload: bytes, received_at: float, retained: bool) -> Envelope | Rejection:
        """Accept the message as an :class:`Envelope` or say why not; never raises."""
        route = self.route(topic)
        if route is None:
            return Rejection("topic", "not a fleetwatch topic", excerpt(topic), None, excerpt(payload))
        kind, terminal_id = route
        if kind == "status" and not payload and terminal_id is not None:
            # A zero-length retained publish clears the acquirer's status (back to active).
            return Envelope(kind=kind, msg=StatusCleared(terminal_id), received_at=received_at, retained=retained)
        if len(payload) > self._max_bytes:
            detail = f"payload of {len(payload)} bytes exceeds the {self._max_bytes}-byte limit"
            return Rejection("too_large", detail, topic, terminal_id, excerpt(payload))
        has_pan = pan.payload_has_pan(payload)
        if has_pan:
            return Rejection("pan", _PAN_DETAIL, topic, terminal_id, None)
        if has_pan is None or not _is_utf8(payload):
            detail = "not parseable as UTF-8 JSON (malformed, bad UTF-8 or nested too deeply)"
            return Rejection("json", detail, topic, terminal_id, excerpt(payload))
        try:
            msg = self._decoders[kind].decode(payload)
        except (msgspec.DecodeError, RecursionError) as exc:
            return self._classify(exc, topic, terminal_id, payload)
        if msg.v != 1:
            return Rejection("version", "schema version is not 1", topic, terminal_id, excerpt(payload))
        bad = invalid_field(msg, terminal_id)
        if bad is not None:
            return Rejection("schema", bad, topic, terminal_id, excerpt(payload))
        if terminal_id is not None and msg.terminal_id != terminal_id:
            detail = "payload terminal_id differs from the topic's"
            return Rejection("spoof", detail, topic, terminal_id, excerpt(payload))
        return Envelope(kind=kind, msg=msg, received_at=received_at, retained=retained)

    @staticmethod
    def _classify(
        exc: msgspec.DecodeError | RecursionError, topic: str, terminal_id: str | None, payload: bytes
    ) -> Rejection:
        """Name the reason a typed decode failed; off the hot path (one generic parse)."""
        snippet = excerpt(payload)
        try:
            doc = msgspec.json.decode(payload)
        except msgspec.DecodeError as err:
            return Rejection("json", str(err)[:200], topic, terminal_id, snippet)
        except RecursionError:
            return Rejection("json", "JSON nested too deeply", topic, terminal_id, snippet)
        if not isinstance(doc, dict):
            return Rejection("schema", "payload is not a JSON object", topic, terminal_id, snippet)
        if "v" in doc and not _is_version_1(doc["v"]):
            return Rejection("version", "schema version is not 1", topic, terminal_id, snippet)
        if isinstance(exc, RecursionError):
            return Rejection("schema", "JSON nested too deeply", topic, terminal_id, snippet)
        return Rejection("schema", _schema_detail(exc), topic, terminal_id, snippet)


def _is_utf8(payload: bytes) -> bool:
    """The typed decode skips unknown fields without validating them, so check here.

    ``isascii`` is a few nanoseconds for the usual all-ASCII payload.
    """
    if payload.isascii():
        return True
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
