"""Attribution: an outcome is not a fault; the table is data, extensible per processor."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from fleetwatch.config import DetectSettings
from fleetwatch.core.attribution import BUILTIN_RC, Attributor
from fleetwatch.core.messages import TxnResult
from tests.golden import txn_env

CARDHOLDER = ["01", "02", "04", "05", "07", "12", "13", "14", "33", "34", "38", "41", "43",
              "51", "54", "55", "57", "59", "61", "65", "75"]


def _txn(**fields: Any) -> TxnResult:
    msg = txn_env("T1", 1.0, "x", **fields).msg
    assert isinstance(msg, TxnResult)
    return msg


def _blame(attr: Attributor, **fields: Any) -> str:
    return attr.attribute(_txn(**fields)).blame


@pytest.mark.parametrize("rc", CARDHOLDER)
def test_issuer_and_cardholder_declines_blame_the_cardholder(rc: str) -> None:
    """A decline is the cardholder's or issuer's business, never the terminal's."""
    assert _blame(Attributor(DetectSettings()), outcome="declined", rc=rc) == "cardholder"


@pytest.mark.parametrize(("rc", "cause"), [("03", "invalid_merchant"), ("58", "not_permitted"),
                                           ("97", "not_registered"), ("A0", "keys"), ("77", "batch_sync")])
def test_configuration_codes_name_their_config_cause(rc: str, cause: str) -> None:
    """03 58 97 A0 77 are configuration problems with a named cause."""
    a = Attributor(DetectSettings()).attribute(_txn(outcome="declined", rc=rc))
    assert (a.blame, a.config_cause) == ("config", cause)


@pytest.mark.parametrize(("fields", "blame"), [
    ({"outcome": "declined", "rc": "91"}, "host"),
    ({"outcome": "declined", "rc": "96"}, "host"),
    ({"outcome": "declined", "rc": "68"}, "link"),
    ({"outcome": "error", "rc": None, "error": {"stage": "connect"}}, "link"),
    ({"outcome": "error", "rc": None, "error": {"stage": "tls"}}, "link"),
    ({"outcome": "error", "rc": None, "error": {"stage": "host"}}, "link"),
    ({"outcome": "error", "rc": None, "error": {"stage": "read"}}, "reader"),
    ({"outcome": "approved", "error": {"stage": "print"}}, "printer"),
    ({"outcome": "error", "rc": None, "error": {"stage": "pin"}}, "operator"),
    ({"outcome": "cancelled", "rc": None}, "operator"),
    ({"outcome": "approved", "rc": "10"}, "none"),
])
def test_stage_and_code_table(fields: dict[str, Any], blame: str) -> None:
    """Where it failed, then what the host said, decides the blame."""
    assert _blame(Attributor(DetectSettings()), **fields) == blame


def test_fallback_is_a_read_sample_but_not_a_fault_of_the_payment() -> None:
    """A fallback swipe that was approved is a reader sample; the payment itself went fine."""
    a = Attributor(DetectSettings()).attribute(_txn(entry="fallback"))
    assert a.read_failure
    assert a.blame == "none"


def test_processor_override_reassigns_an_overloaded_code() -> None:
    """One gateway answers 05 for 'no existing host': the operator maps it per processor."""
    cfg = DetectSettings(processors={"gw": {"05": "link", "N7": "config:keys"}}, processor="gw")
    attr = Attributor(cfg)
    assert _blame(attr, outcome="declined", rc="05") == "link"
    a = attr.attribute(_txn(outcome="declined", rc="N7"))
    assert (a.blame, a.config_cause) == ("config", "keys")
    assert _blame(Attributor(DetectSettings()), outcome="declined", rc="05") == "cardholder"


def test_unknown_blame_in_override_is_refused_by_the_settings() -> None:
    """A typo in the processor table is a configuration error of the settings model (so
    check-config sees it too), never a silent default nor a failure later in the core."""
    with pytest.raises(ValidationError, match="unknown blame"):
        DetectSettings(processors={"gw": {"05": "nobody"}}, processor="gw")


def test_builtin_table_is_data() -> None:
    """The mapping is a dict the operator's overrides merge into, not code."""
    assert BUILTIN_RC["91"] == "host"
    assert BUILTIN_RC["05"] == "cardholder"
