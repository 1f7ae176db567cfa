"""Settings: a TOML file plus ``FLEETWATCH_<SECTION>__<KEY>`` environment overrides.

Every setting has a default (CONTRACT.md §2), so an empty file is a valid config; the
effective values are printed by ``fleetwatch check-config`` with secrets masked. The
settings object is frozen: a running daemon never changes its mind about its config.

Precedence, highest first: environment, TOML file, defaults.

**Every check of a setting lives here**, in the models' validators, never in the code
that later uses the value: ``check-config`` and ``run`` both call :func:`load_settings`,
so they accept and refuse exactly the same files. A refusal is one line naming the
setting (:class:`~fleetwatch.errors.ConfigError`, exit 2).

A setting nothing reads any more is *deprecated* before it is removed: for one release
it is still accepted (an operator's existing file must not stop the daemon), left out
of the example file, and reported by :func:`deprecated_settings` (logged at start,
printed by ``check-config``).
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from fleetwatch.core.model import ACQUIRER_DECISIONS, BLAMES, CAUSES, KINDS
from fleetwatch.core.notify_events import QuietHours
from fleetwatch.errors import ConfigError

UNUSED_SETTING = "nothing reads it any more: ignored in this release, refused from the next one; remove it"


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``; an empty host is 127.0.0.1) -> (host, port), ValueError otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"must be host:port with a port from 1 to 65535, e.g. 127.0.0.1:9464 (got {value!r})")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ValueError(f"an IPv6 host goes in brackets, e.g. [::1]:9464 (got {value!r})")
    return host.strip("[]") or "127.0.0.1", int(port)


def known_zone(setting: str, name: str) -> str:
    """``name`` if it is an IANA time zone this machine knows (ValueError naming ``setting``)."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"{setting} {name!r} is not a known IANA time zone") from exc
    return name


class _Section(BaseModel):
    # Attribute docstrings become field descriptions: the example config is generated from them.
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class MqttSettings(_Section):
    url: str = "mqtt://127.0.0.1:1883"
    """``mqtt://`` or ``mqtts://``; user and password may be given in the URL."""
    topic_prefix: str = "fleet/v1"
    client_id: str = "fleetwatch"
    username: str | None = None
    password: SecretStr | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive_s: int = Field(default=30, ge=5)
    session_expiry_s: int = Field(default=86400, ge=0)
    """How long the broker keeps our session (and queues QoS 1) while we are away."""
    receive_maximum: int = Field(default=1000, ge=20, le=65535)
    """MQTT 5 Receive Maximum: unacknowledged QoS 1 deliveries we accept at once."""
    reconnect_max_s: float = Field(default=30.0, gt=0)
    publish_max_inflight: int = Field(default=100, ge=1, le=65000)
    """Our own QoS 1 publishes (terminal notices) awaiting the broker's PUBACK at once; the
    rest wait in a queue that keeps only the newest payload per topic."""

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError("mqtt.url must start with mqtt:// or mqtts://")
        try:
            parts.port  # noqa: B018 - urlsplit checks the port only when asked
        except ValueError as exc:
            raise ValueError(f"mqtt.url has a bad port: {exc}") from exc
        return v

    @model_validator(mode="after")
    def _tls_files_need_tls(self) -> Self:
        given = [name for name in ("ca_file", "cert_file", "key_file") if getattr(self, name)]
        if given and urlsplit(self.url).scheme != "mqtts":
            raise ValueError(f"mqtt.{given[0]} is set but mqtt.url is not mqtts://: the files would be ignored "
                             "and the connection left unencrypted")
        if self.key_file and not self.cert_file:
            raise ValueError("mqtt.key_file is set without mqtt.cert_file")
        return self


STORE_SCHEMES = {"sqlite": "sqlite", "postgresql": "postgresql", "postgres": "postgresql"}
"""``store.url`` scheme -> backend (CONTRACT.md §9: ``postgres://`` is PostgreSQL too)."""


class StoreSettings(_Section):
    url: str = "sqlite:////var/lib/fleetwatch/fleetwatch.db"
    """``sqlite:///relative.db``, ``sqlite:////absolute.db``, or ``postgresql://user:password@host:5432/db``
    (also ``postgres://``); the password is never printed or logged."""
    flush_interval_ms: int = Field(default=5, ge=1, le=1000)
    """The writer commits what it holds at least this often (and acknowledges QoS 1)."""
    max_batch: int | None = Field(default=None, deprecated=UNUSED_SETTING)
    terminal_flush_s: float = Field(default=2.0, gt=0)
    """Terminal state (last seen etc.) is written coalesced, at most this often."""
    dead_letters_kept: int = Field(default=1000, ge=0)
    retain_days: float = Field(default=90, gt=0)
    """Transactions, settlements, resolved incidents and dead letters older than this many days
    (of ``detect.day_s``) are deleted; batches are kept until settled and then as long."""
    retention_every_s: float = Field(default=300.0, gt=0)
    """How often the retention job looks for rows that aged out."""
    retention_chunk: int = Field(default=1000, ge=1)
    """Rows deleted per transaction: intake waits for at most one such chunk."""

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        scheme = urlsplit(v).scheme
        if (scheme not in STORE_SCHEMES or (scheme == "sqlite" and not v.startswith("sqlite:///"))
                or (scheme == "sqlite" and not v.removeprefix("sqlite:///").strip("/"))):
            raise ValueError("store.url must be sqlite:///relative.db, sqlite:////absolute.db or "
                             "postgresql://user:password@host:port/database (or postgres://)")
        return v

    @property
    def backend(self) -> Literal["sqlite", "postgresql"]:
        return "postgresql" if STORE_SCHEMES[urlsplit(self.url).scheme] == "postgresql" else "sqlite"

    @property
    def sqlite_path(self) -> str:
        """``sqlite:///a.db`` -> ``a.db``; ``sqlite:////var/x.db`` -> ``/var/x.db``."""
        return self.url.removeprefix("sqlite:///")


class HaSettings(_Section):
    """Several instances on one PostgreSQL store: one active, the others standby (docs/SCALING.md)."""

    lease_s: float = Field(default=5.0, ge=1.0, le=300.0)
    """The active instance's lease in the store, renewed every lease_s / 3; when it is not renewed
    (the active died or lost the store) a standby takes over once it has expired. PostgreSQL only:
    a SQLite store belongs to one process."""
    takeover_s: float = Field(default=15.0, gt=0)
    """What a takeover may take, from the old active's last renewal to the new one subscribed
    (lease expiry, restore, broker session); a slower one is logged as a warning."""

    @model_validator(mode="after")
    def _lease_fits(self) -> Self:
        if self.lease_s >= self.takeover_s:
            raise ValueError(f"ha.lease_s ({self.lease_s}) must be shorter than ha.takeover_s ({self.takeover_s}): "
                             "a standby can only take over once the lease has expired")
        return self


class HttpSettings(_Section):
    listen: str = "127.0.0.1:9464"
    api_token: SecretStr = SecretStr("")
    """Empty: generated at first start and kept in the store (shared by every instance on it);
    written at each start to ``token_file``, whose path is logged."""
    token_file: str | None = None
    """Where a generated token is written; default: beside the store."""

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_listen(v)
        return v

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_listen(self.listen)


class DetectSettings(_Section):
    """Detection constants. Every duration is a multiple of ``heartbeat_interval_s``."""

    heartbeat_interval_s: float = Field(default=60.0, gt=0)
    offline_after_missed: float = Field(default=3, gt=0)
    clear_after_intervals: float = Field(default=3, gt=0)
    correlation_window_intervals: float = Field(default=5, gt=0)
    upstream_clear_intervals: float = Field(default=5, gt=0)
    sweep_intervals: float = Field(default=0.25, gt=0)
    """How often the sweeper looks for silence and expired windows."""
    weak_signal_dbm: int = -100
    weak_signal_intervals: float = Field(default=10, gt=0)
    battery_low_pct: int = Field(default=15, ge=0, le=100)
    battery_critical_pct: int = Field(default=5, ge=0, le=100)
    reader_window_cards: int = Field(default=50, ge=5)
    reader_window_intervals: float = Field(default=1440, gt=0)
    reader_min_failing_cards: int = Field(default=5, ge=1)
    reader_min_distinct_cards: int = Field(default=20, ge=1)
    reader_baseline_factor: float = Field(default=4.0, gt=1)
    reader_min_share: float = Field(default=0.15, gt=0, lt=1)
    comm_error_min: int = Field(default=3, ge=1)
    """Failed link attempts (connect, tls, host, rc 06 20 22 30 68) the rate window must
    hold before ``comm_errors`` opens."""
    upstream_min_terminals: int = Field(default=20, ge=2)
    upstream_min_share: float = Field(default=0.10, gt=0, le=1)
    group_min_terminals: int = Field(default=10, ge=2)
    fleet_share_for_group: float = Field(default=0.9, gt=0, le=1)
    merchant_min_terminals: int = Field(default=2, ge=2)
    merchant_min_share: float = Field(default=0.8, gt=0, le=1)
    evidence_update_intervals: float = Field(default=1, ge=0)
    """An open incident's evidence-only changes are written at most this often."""
    flap_silence_intervals: float = Field(default=1.5, gt=1)
    """A terminal back from offline is watched for this long a silence while its incident
    clears (hysteresis): missing a beat then counts as a flap of the same incident."""
    print_error_min: int = Field(default=2, ge=1)
    """Failed receipts (stage print) the rate window must hold before ``print_errors`` opens."""
    rate_window_attempts: int = Field(default=20, ge=2)
    """Link and print failures are judged by their share of a terminal's last this many
    attempts (comm_errors, print_errors): one success never ends an incident."""
    rate_window_intervals: float = Field(default=60, gt=0)
    """Attempts older than this leave the rate window whatever their number."""
    rate_min_attempts: int = Field(default=5, ge=1)
    """Attempts the rate window must hold before its share opens or clears anything (an
    unbroken run of failures reaching comm_error_min / print_error_min opens sooner)."""
    rate_open_share: float = Field(default=0.5, gt=0, le=1)
    """Failing share of the window that opens comm_errors / print_errors."""
    rate_clear_share: float = Field(default=0.2, ge=0, lt=1)
    """Failing share below which the condition is gone (hysteresis follows); it also goes
    once no attempt has failed for clear_after_intervals (failures stopped, or no trade)."""
    rate_baseline_factor: float = Field(default=3.0, ge=1)
    """The open share is at least this many times the fleet's own failing share
    (learned per correlation window, not while a host outage is open)."""
    reader_default_baseline: float = Field(default=0.02, ge=0, lt=1)
    """Failing share assumed until a terminal's own healthy baseline is learned."""
    upstream_hold_fraction: float = Field(default=0.1, gt=0, le=1)
    """An upstream incident counts as still failing while at least this fraction of its
    peak (and at least one terminal) still fails."""
    group_concentration: float = Field(default=0.25, gt=0, le=1)
    """A group explains a wave when the rest of the fleet fails at most this fraction as often."""
    upstream_baseline_alpha: float = Field(default=0.05, ge=0, le=1)
    """Smoothing of the fleet's baselines per correlation window: its normal count of
    failing terminals (upstreams) and its normal failing share of attempts (rates)."""
    merchant_parent_kinds: tuple[str, ...] = ("network", "config")
    """Kinds whose terminal incidents can share a merchant-scope parent (a shop's link or
    acquirer setup); settlement_gap has its own merchant rule."""
    recent_txn_keys: int = Field(default=200_000, ge=0)
    """How many (terminal_id, txn_id) are remembered to drop QoS 1 redeliveries."""
    persist_freshness_intervals: float = Field(default=5, gt=0)
    """A terminal whose only news is freshness (last seen, seq, uptime, battery level,
    signal) is written to the store at most this often; any other change is written at
    the next flush. A million terminals beating every minute would otherwise rewrite a
    million rows a minute; after a crash, last seen is at most this stale."""
    processors: dict[str, dict[str, str]] = Field(default_factory=dict)
    """Extra response-code attributions per processor: {processor: {rc: blame}}."""
    processor: str | None = None
    """Which processor table applies on top of the built-in ISO 8583 / UnionPay one."""
    day_s: float = Field(default=86400.0, gt=0)
    """The length of a day. 86400: real days from local midnight in ``timezone``; any other
    value compresses every calendar quantity (hours, recent_hours, settle_days, link days,
    store.retain_days) and ignores time zones (tests and demos)."""
    timezone: str = "Asia/Shanghai"
    """IANA zone merchants' times are shown in (until a merchant has its own hours)."""
    hours_learn_days: int = Field(default=7, ge=1, le=16)
    """Watched days of a slot of the day before a merchant's usual closed hours are learned from
    it (a slot silent on most of them is closed). At most 16: a merchant's learning is then
    at most 64 bytes."""
    hours_grace_intervals: float = Field(default=30, ge=0)
    """A terminal silent since closing time that is still silent this long after its shop's
    usual opening opens network offline."""

    @field_validator("timezone")
    @classmethod
    def _zone_exists(cls, v: str) -> str:
        return known_zone("detect.timezone", v)

    @property
    def zone(self) -> ZoneInfo:
        """``timezone`` as a tzinfo (cached by zoneinfo)."""
        return ZoneInfo(self.timezone)

    def intervals(self, n: float) -> float:
        """``n`` heartbeat intervals in seconds."""
        return n * self.heartbeat_interval_s

    @field_validator("processors")
    @classmethod
    def _processor_tables(cls, v: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for name, table in v.items():
            for rc, value in table.items():
                _check_attribution(f"detect.processors.{name}", rc, value)
        return v

    @field_validator("merchant_parent_kinds")
    @classmethod
    def _known_kinds(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [k for k in v if k not in KINDS]
        if unknown:
            raise ValueError(f"unknown kind {unknown[0]!r}; kinds are {', '.join(KINDS)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.processor is not None and self.processor not in self.processors:
            raise ValueError(f"detect.processor {self.processor!r} names no table of detect.processors "
                             f"(tables: {', '.join(sorted(self.processors)) or 'none'})")
        if self.battery_critical_pct > self.battery_low_pct:
            raise ValueError("detect.battery_critical_pct must not be above detect.battery_low_pct")
        if self.rate_clear_share >= self.rate_open_share:
            raise ValueError("detect.rate_clear_share must be below detect.rate_open_share")
        return self


_RC = re.compile(r"[0-9A-Za-z]{2}")
_RC_CONFIG_CAUSES = tuple(c for c in CAUSES["config"] if ("config", c) not in ACQUIRER_DECISIONS)


def _check_attribution(where: str, rc: str, value: str) -> None:
    """One ``rc = "blame"`` (or ``"config:cause"``) entry of a processor table."""
    if not _RC.fullmatch(rc):
        raise ValueError(f"{where}: {rc!r} is not a two-character response code")
    blame, sep, cause = value.partition(":")
    if blame not in BLAMES:
        raise ValueError(f"{where}.{rc}: unknown blame {value!r}; blames are {', '.join(BLAMES)}")
    if sep and (blame != "config" or cause not in _RC_CONFIG_CAUSES):
        raise ValueError(f"{where}.{rc}: {value!r} names no config cause; use config:CAUSE with CAUSE one of "
                         f"{', '.join(_RC_CONFIG_CAUSES)}")


class SettlementSettings(_Section):
    batch_close_deadline_s: float = Field(default=93600, gt=0)
    settlement_deadline_s: float = Field(default=172800, gt=0)
    saf_max_age_s: float = Field(default=4 * 3600, gt=0)
    sweep_s: float | None = Field(default=None, deprecated=UNUSED_SETTING)
    void_lookup_per_batch: int = Field(default=1000, ge=0)
    """Refunds and preauths remembered per open batch so a later void can reverse them
    exactly (a voided sale is reversed by the void's own amount, so sales need no memory)."""
    done_keys_kept: int = Field(default=100_000, ge=0)
    """Recently finished batches remembered so a re-sent BatchClose or Settlement for
    them is not mistaken for a new, empty batch."""


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"
    """auto: readable console on a TTY, JSON lines otherwise."""
    reject_log_interval_s: float = Field(default=10.0, ge=0)


RECEIVER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


class MerchantWebhook(_Section):
    """One receiver of merchant notifications (CONTRACT §6): the acquirer's SMS gateway, app
    push or chat bot. Its ``name`` is the ``channel`` label of the metrics."""

    name: str
    url: str
    secret: SecretStr
    """HMAC-SHA256 key of the ``X-Fleetwatch-Signature`` header."""
    lang: Literal["zh-CN", "en"] | None = None
    """The language of its texts; unset: ``notice.default_lang``."""
    min_severity: Literal["info", "minor", "major", "critical"] = "major"
    """Notices below it go into the daily digest (the acquirer's decisions never do)."""
    kinds: list[str] = Field(default_factory=list)
    """Only these incident kinds; empty: every kind."""
    quiet_hours: str = ""
    """e.g. "22:00-08:00" in ``notify.timezone``: only critical events and the acquirer's decisions then."""
    timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not RECEIVER_NAME.match(v):
            raise ValueError(f"must be 1-32 of a-z 0-9 _ - (a metric label), got {v!r}")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if urlsplit(v).scheme not in ("http", "https") or not urlsplit(v).netloc:
            raise ValueError(f"must be an http:// or https:// URL (got {mask_url(v)!r})")
        return v

    @field_validator("secret")
    @classmethod
    def _secret(cls, v: SecretStr) -> SecretStr:
        if len(v.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (it signs every event)")
        return v

    @field_validator("kinds")
    @classmethod
    def _kinds(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown kind(s) {unknown}; known: {', '.join(KINDS)}")
        return v

    @field_validator("quiet_hours")
    @classmethod
    def _quiet(cls, v: str) -> str:
        if v:
            QuietHours.parse(v)
        return v


class NotifySettings(_Section):
    alertmanager_url: str = ""
    """Empty: no pushing to Alertmanager."""
    min_severity: Literal["info", "minor", "major", "critical"] = "major"
    """The paging threshold for Alertmanager (merchant receivers have their own ``min_severity``)."""
    resend_s: float = Field(default=60.0, gt=0)
    generator_url: str = ""
    merchant_webhooks: list[MerchantWebhook] = Field(default_factory=list)
    """Merchant notifications (CONTRACT §6); empty: none are made."""
    merchant_max_per_hour: int = Field(default=6, ge=1)
    """Events per merchant and receiver in one hour; the rest of it goes into one digest."""
    give_up_after_s: float = Field(default=86400.0, gt=0)
    """An event not delivered this long after it was due is marked failed."""
    timezone: str = "Asia/Shanghai"
    """IANA zone of quiet hours, hourly caps and daily digests."""
    delivery_concurrency: int = Field(default=8, ge=1, le=256)
    """Deliveries in flight at once, over all receivers."""
    retry_initial_s: float = Field(default=1.0, gt=0)
    """The first retry's delay; each next one doubles it (with jitter) up to ``retry_max_s``."""
    retry_max_s: float = Field(default=300.0, gt=0)
    poll_s: float = Field(default=0.5, gt=0)
    """How often the delivery worker looks for due events when it was not woken."""

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        return known_zone("notify.timezone", v)

    @field_validator("merchant_webhooks")
    @classmethod
    def _unique(cls, v: list[MerchantWebhook]) -> list[MerchantWebhook]:
        names = [w.name for w in v]
        if len(names) != len(set(names)):
            raise ValueError(f"receiver names must be unique (got {names})")
        return v

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @field_validator("alertmanager_url", "generator_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if v and urlsplit(v).scheme not in ("http", "https"):
            raise ValueError(f"must be an http:// or https:// URL (got {v!r})")
        return v


Lang = Literal["zh-CN", "en"]


class NoticeSettings(_Section):
    """Merchant notices (CONTRACT §5): the signed page, the API and the terminal's screen."""

    link_key: SecretStr = SecretStr("")
    """HMAC key of signed merchant links. Empty: generated at first start and kept in the
    store (shared by every instance on it). Changing it invalidates every link."""
    public_url: str = ""
    """Base of signed links, e.g. https://notices.example-acquirer.cn; empty: the address the
    page is served on."""
    listen: str = ""
    """e.g. "0.0.0.0:9465": serve /m/ on this address only (no /api, no /metrics there)."""
    default_lang: Lang = "zh-CN"
    terminal_lang: Lang = "zh-CN"
    recent_hours: float = Field(default=24, ge=0)
    """Resolved notices stay on the page this long (hours of detect.day_s / 24)."""
    catalogue_dir: str = ""
    """A folder of the operator's catalogue files (zh-CN.toml, en.toml) overriding any text."""
    support_phone: str = ""
    acquirer_name: str = ""
    settle_days: int = Field(default=1, ge=0, le=30)
    """T+N: the days after which money is normally credited."""
    publish_to_terminals: bool = True
    """Publish each terminal's notice, retained, on {prefix}/term/{id}/notice; false clears
    what was published."""

    @field_validator("public_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and urlsplit(v).scheme not in ("http", "https"):
            raise ValueError("notice.public_url must start with http:// or https://")
        return v.rstrip("/")

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        if v:
            _, sep, port = v.rpartition(":")
            if not sep or not port.isdigit():
                raise ValueError('notice.listen must be "host:port"')
        return v

    @property
    def host_port(self) -> tuple[str, int] | None:
        if not self.listen:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)


class Settings(BaseSettings):
    """The daemon's whole configuration."""

    model_config = SettingsConfigDict(
        env_prefix="FLEETWATCH_", env_nested_delimiter="__", frozen=True, extra="forbid",
        case_sensitive=False,
    )

    mqtt: MqttSettings = MqttSettings()
    store: StoreSettings = StoreSettings()
    ha: HaSettings = HaSettings()
    http: HttpSettings = HttpSettings()
    detect: DetectSettings = DetectSettings()
    settlement: SettlementSettings = SettlementSettings()
    log: LogSettings = LogSettings()
    notify: NotifySettings = NotifySettings()
    notice: NoticeSettings = NoticeSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the file (passed as init kwargs), which wins over defaults.
        return (env_settings, init_settings)


def load_settings(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Read the TOML file (if any), apply ``overrides`` then the environment, validate.

    Raises ConfigError with a readable message on a missing file, bad TOML or a bad value.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update(values)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {describe_errors(exc)}") from exc
    except ValueError as exc:  # pydantic-settings' own (an environment value that is not valid JSON)
        raise ConfigError(f"invalid configuration: {' '.join(str(exc).split())}") from exc


_SECRET_NAMES = ("password", "api_token", "secret", "link_key")


def describe_errors(exc: ValidationError) -> str:
    """A validation failure as one line: ``section.key: what is wrong (got value)``, joined by ``; ``."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "settings"
        if error["type"] == "extra_forbidden":
            parts.append(f"{where}: unknown setting")
            continue
        message = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        value = error.get("input")
        shown = "" if isinstance(value, dict | list) or value is None or error["type"] == "value_error" else (
            " (got ***)" if any(s in where for s in _SECRET_NAMES) else f" (got {value!r})"
        )
        # A validator that names its own setting(s) is not prefixed with them again.
        parts.append(f"{message}{shown}" if message.startswith(where) else f"{where}: {message}{shown}")
    return "; ".join(" ".join(p.split()) for p in parts)


def deprecated_settings(settings: Settings) -> list[str]:
    """One sentence per deprecated setting the configuration still sets (file or environment)."""
    found = []
    for section_name in Settings.model_fields:
        section = getattr(settings, section_name)
        for name, field in type(section).model_fields.items():
            if field.deprecated and name in section.model_fields_set:
                found.append(f"{section_name}.{name} is deprecated: {field.deprecated}")
    return found


def effective_settings(settings: Settings) -> dict[str, Any]:
    """Settings as plain data with secrets masked (for check-config); deprecated keys left out.

    Secret fields (``SecretStr``: passwords, tokens, keys) print as stars already; every
    URL setting (``url`` or ``*_url``, in any section) has its password masked too.
    """
    dumped: dict[str, Any] = settings.model_dump(mode="json")
    for section_name in Settings.model_fields:
        section = dumped[section_name]
        for name, field in type(getattr(settings, section_name)).model_fields.items():
            if field.deprecated:
                section.pop(name, None)
        for key, value in section.items():
            if isinstance(value, str) and (key == "url" or key.endswith("_url")):
                section[key] = mask_url(value)
    for hook in dumped["notify"]["merchant_webhooks"]:
        hook["url"] = mask_url(hook["url"])
    return dumped


def start_summary(settings: Settings) -> dict[str, str]:
    """The few facts the start log line carries: where messages, state and the API are."""
    summary = {"broker": mask_url(settings.mqtt.url), "store": mask_url(settings.store.url),
               "listen": settings.http.listen}
    if settings.notice.listen:
        summary["merchant_listen"] = settings.notice.listen
    return summary


MASK = "**********"


def mask_url(url: str) -> str:
    """``url`` with its password, in the authority or a ``password=`` query, replaced by stars."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    secret_query = "password" in parts.query.lower()
    if password is None and not secret_query:
        return url  # untouched: urlsplit/geturl would fold sqlite://// into sqlite://
    netloc = parts.netloc
    if password is not None:
        userinfo, _, hostinfo = netloc.rpartition("@")
        netloc = f"{userinfo.split(':', 1)[0]}:{MASK}@{hostinfo}"
    query = "&".join(
        f"{k}={MASK}" if "password" in k.lower() else item
        for item in parts.query.split("&") if item
        for k in [item.partition("=")[0]]
    )
    return parts._replace(netloc=netloc, query=query).geturl()


def render_example() -> str:
    """Every setting with its default and its docstring: deploy/fleetwatch.example.toml.

    Generated from the models so the example can never drift from the code (a test
    compares the committed file with this output).
    """
    lines = [
        "# fleetwatch settings: every key with its default. Copy, keep what you change.",
        "# Any key can also be set from the environment: FLEETWATCH_<SECTION>__<KEY>.",
        "# Detection durations are multiples of detect.heartbeat_interval_s.",
    ]
    defaults = Settings.model_construct()
    for section_name in Settings.model_fields:
        section = getattr(defaults, section_name)
        lines += ["", f"[{section_name}]"]
        for name, field in type(section).model_fields.items():
            if field.deprecated:
                continue
            if field.description:
                lines += [f"# {line}".rstrip() for line in field.description.splitlines()]
            lines.append(_toml_line(name, getattr(section, name)))
    return "\n".join(lines) + "\n"


def _toml_line(name: str, value: Any) -> str:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None:
        return f"# {name} = (unset)"
    if isinstance(value, bool):
        return f"{name} = {'true' if value else 'false'}"
    if isinstance(value, int | float):
        return f"{name} = {value!r}"
    if isinstance(value, str):
        return f"{name} = {json.dumps(value)}"
    if isinstance(value, tuple | list):
        return f"{name} = [{', '.join(json.dumps(v) for v in value)}]"
    if isinstance(value, dict):
        return f"{name} = {{}}" if not value else f"# {name}: see docs"
    raise TypeError(f"cannot render {name}={value!r}")
