"""The settlement book skips its per-transaction evaluation when a txn cannot change a
finding (core/settlement.py, ``_txn_changes_nothing``): the book must say exactly what it
would say if it evaluated every batch after every transaction."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetwatch.core.model import Finding, Signal
from fleetwatch.core.settlement import SettlementBook, _Batch
from tests.core.test_settlement import CFG, Msg, Swap, close, feed, hb, settle, txn


class EvaluatingBook(SettlementBook):
    """The book without the shortcut: every txn evaluates its batch."""

    def _txn_changes_nothing(self, b: _Batch, at: float) -> bool:
        return False


TIDS = ("T1", "T2")
BATCHES = (1, 2)
CURRENCIES = ("CNY", "JPY")


@st.composite
def message(draw: st.DrawFn, n: int) -> Msg:
    tid = draw(st.sampled_from(TIDS))
    batch = draw(st.sampled_from(BATCHES))
    cur = draw(st.sampled_from(CURRENCIES))
    kind = draw(st.sampled_from(("txn", "txn", "txn", "txn", "close", "settle", "tamper", "calm", "swap")))
    amount = draw(st.integers(0, 500))
    if kind == "txn":
        type_ = draw(st.sampled_from(("sale", "sale", "refund", "void", "preauth", "completion")))
        outcome = draw(st.sampled_from(("approved", "approved", "approved", "declined")))
        orig = draw(st.sampled_from((None, f"x{n - 1}", f"x{n - 2}")))
        return txn(f"x{n}", amount, type_, outcome, tid=tid, batch=batch, cur=cur, orig=orig, ts=n)
    if kind == "close":
        result = draw(st.sampled_from(("confirmed", "confirmed", "mismatch", "unconfirmed")))
        return close(amount, draw(st.integers(0, 5)), result=result, tid=tid, batch=batch, cur=cur)
    if kind == "settle":
        return settle(amount, draw(st.integers(0, 5)), tid=tid, batch=batch, cur=cur,
                      credited_at=draw(st.integers(0, 2)))
    if kind == "swap":
        return Swap(hb(tid=tid, ts=n))
    return hb(tid=tid, ts=n, tamper=kind == "tamper")


@st.composite
def day(draw: st.DrawFn) -> list[tuple[float, Msg | None]]:
    """Up to 60 steps, time moving on by 0 to 4 s (deadlines are 6 s); None is a tick."""
    steps: list[tuple[float, Msg | None]] = []
    t = 0.0
    for n in range(draw(st.integers(1, 60))):
        t += draw(st.sampled_from((0.0, 0.5, 1.0, 2.0, 4.0)))
        steps.append((t, None if draw(st.integers(0, 4)) == 0 else draw(message(n))))
    return steps


def run(book: SettlementBook, steps: list[tuple[float, Msg | None]]) -> list[tuple[float, list[Signal]]]:
    out = []
    for t, msg in steps:
        out.append((t, book.tick(t) if msg is None else feed(book, t, msg)))
        out.append((t, book.tick(t)))
    return out


@settings(max_examples=400, deadline=None)
@given(day())
def test_shortcut_says_what_evaluating_every_txn_says(steps: list[tuple[float, Msg | None]]) -> None:
    fast, slow = SettlementBook(CFG), EvaluatingBook(CFG)
    assert run(fast, steps) == run(slow, steps)
    end = steps[-1][0] + 100
    assert fast.tick(end) == slow.tick(end)
    assert fast.summary(end) == slow.summary(end)
    assert fast.take_dirty() == slow.take_dirty()
    for tid in TIDS:
        assert fast.open_gaps(tid) == slow.open_gaps(tid)
        assert fast.unsettled(tid) == slow.unsettled(tid)


def test_an_open_batch_is_not_evaluated_per_txn_but_at_its_deadline() -> None:
    """The shortcut is taken (no evaluation for the second txn of an open batch) and the
    deadline still opens batch_not_closed through tick."""
    calls: list[str] = []

    class Counting(SettlementBook):
        def _evaluate(self, b: _Batch, at: float, trigger: str) -> list[Signal]:
            calls.append(trigger)
            return super()._evaluate(b, at, trigger)

    book = Counting(CFG)
    assert feed(book, 0.0, txn("a", 100)) == []
    assert feed(book, 1.0, txn("b", 50)) == []
    assert calls == []
    opened = book.tick(CFG.batch_close_deadline_s)
    assert calls == ["deadline"]
    assert [(s.cause, s.evidence["amount_minor"]) for s in opened if isinstance(s, Finding)] == [
        ("batch_not_closed", 150)]
    assert len(opened) == 1
