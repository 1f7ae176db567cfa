"""Settings: TOML file, environment overrides, the example file, and check-config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fleetwatch.config import Settings, effective_settings, load_settings, render_example
from fleetwatch.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "fleetwatch.example.toml"


def test_example_file_documents_every_setting_with_its_default() -> None:
    """The shipped example is exactly what the models render, so it lists every key and default."""
    assert EXAMPLE.read_text(encoding="utf-8") == render_example(), (
        "deploy/fleetwatch.example.toml is stale: regenerate it with "
        "`python -c 'from fleetwatch.config import render_example; print(render_example(), end=\"\")'`"
    )
    assert load_settings(EXAMPLE) == Settings()


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FLEETWATCH_<SECTION>__<KEY> wins over the TOML value; other file values stay."""
    config = tmp_path / "f.toml"
    config.write_text('[mqtt]\nurl = "mqtt://file:1883"\ntopic_prefix = "from/file"\n', encoding="utf-8")
    monkeypatch.setenv("FLEETWATCH_MQTT__URL", "mqtts://env:8883")
    monkeypatch.setenv("FLEETWATCH_DETECT__HEARTBEAT_INTERVAL_S", "15")
    settings = load_settings(config)
    assert settings.mqtt.url == "mqtts://env:8883"
    assert settings.mqtt.topic_prefix == "from/file"
    assert settings.detect.heartbeat_interval_s == 15


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[mqtt]\nurl = "http://x"\n', "mqtt.url"),
        ('[store]\nurl = "mysql://x"\n', "store.url"),
        ("[detect]\nheartbeat_interval_s = 0\n", "heartbeat_interval_s"),
        ("[nonsense]\nx = 1\n", "nonsense"),
        ("[mqtt\n", "not valid TOML"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, text: str, fragment: str) -> None:
    """A bad value, an unknown section or broken TOML raises ConfigError naming the problem."""
    config = tmp_path / "bad.toml"
    config.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=fragment):
        load_settings(config)


def test_secrets_are_masked_in_effective_settings() -> None:
    """Passwords in the MQTT URL, the API token and the link key never appear in printed settings."""
    settings = load_settings(None, {"mqtt": {"url": "mqtt://user:hunter2@broker:1883", "password": "pw2"},
                                    "http": {"api_token": "tok3n"}, "notice": {"link_key": "l1nkkey"}})
    text = json.dumps(effective_settings(settings))
    assert "l1nkkey" not in text
    assert "hunter2" not in text
    assert "pw2" not in text
    assert "tok3n" not in text
    assert "user:**********@broker" in text


def test_check_config_command(tmp_path: Path) -> None:
    """`fleetwatch check-config` prints the effective settings (exit 0) or the error (exit 2)."""
    good = tmp_path / "good.toml"
    good.write_text('[http]\nlisten = "0.0.0.0:9999"\napi_token = "s3cret"\n', encoding="utf-8")
    ok = subprocess.run([sys.executable, "-m", "fleetwatch", "check-config", str(good)],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    printed = json.loads(ok.stdout)
    assert printed["http"]["listen"] == "0.0.0.0:9999"
    assert "s3cret" not in ok.stdout
    missing = subprocess.run([sys.executable, "-m", "fleetwatch", "check-config", str(tmp_path / "nope.toml")],
                             capture_output=True, text=True, check=False)
    assert missing.returncode == 2
    assert "not found" in missing.stderr


@pytest.mark.parametrize(("url", "backend"), [
    ("sqlite:///relative.db", "sqlite"), ("sqlite:////var/lib/fleetwatch/fw.db", "sqlite"),
    ("postgresql://fw:pw@db:5432/fleetwatch", "postgresql"), ("postgres://fw@db/fleetwatch", "postgresql"),
])
def test_store_url_scheme_picks_the_backend(url: str, backend: str) -> None:
    """sqlite:///, postgresql:// and postgres:// are accepted (CONTRACT.md §9) and name their backend."""
    assert load_settings(None, {"store": {"url": url}}).store.backend == backend


def test_every_url_password_is_masked() -> None:
    """The store's and Alertmanager's URL passwords, and a password= query parameter, never print;
    a URL without one prints unchanged (sqlite://// keeps its four slashes)."""
    settings = load_settings(None, {
        "store": {"url": "postgresql://fw:s3cr%40t@db:5432/fleetwatch?sslmode=require&password=q2"},
        "notify": {"alertmanager_url": "http://am:hunter3@alertmanager:9093"},
    })
    text = json.dumps(effective_settings(settings))
    for secret in ("s3cr", "q2", "hunter3"):
        assert secret not in text
    shown = effective_settings(settings)
    assert shown["store"]["url"] == "postgresql://fw:**********@db:5432/fleetwatch?sslmode=require&password=**********"
    assert effective_settings(Settings())["store"]["url"] == "sqlite:////var/lib/fleetwatch/fleetwatch.db"


def test_notice_and_calendar_settings_are_checked() -> None:
    """An unknown zone, a public URL without a scheme, a listen address without a port and an
    unknown language are refused with the setting's name."""
    for section, values, word in [
        ("detect", {"timezone": "Mars/Olympus"}, "timezone"),
        ("detect", {"day_s": 0}, "day_s"),
        ("notice", {"public_url": "notices.example.cn"}, "public_url"),
        ("notice", {"listen": "0.0.0.0"}, "listen"),
        ("notice", {"default_lang": "fr"}, "default_lang"),
    ]:
        with pytest.raises(ConfigError, match=word):
            load_settings(None, {section: values})
    ok = load_settings(None, {"notice": {"public_url": "https://n.example.cn/", "listen": "[::]:9465"}})
    assert ok.notice.public_url == "https://n.example.cn"
    assert ok.notice.host_port == ("::", 9465)


def test_ha_lease_must_be_shorter_than_the_takeover_it_is_part_of() -> None:
    """A standby takes over only once the lease has expired: a lease as long as the takeover
    budget can never meet it, and is refused (exit 2) naming both settings."""
    ok = load_settings(None, {"ha": {"lease_s": 2, "takeover_s": 10}})
    assert (ok.ha.lease_s, ok.ha.takeover_s) == (2, 10)
    assert (load_settings().ha.lease_s, load_settings().ha.takeover_s) == (5, 15)
    with pytest.raises(ConfigError, match=r"ha.lease_s \(20.0\) must be shorter than ha.takeover_s \(15.0\)"):
        load_settings(None, {"ha": {"lease_s": 20}})
    with pytest.raises(ConfigError, match=r"ha\.lease_s"):
        load_settings(None, {"ha": {"lease_s": 0.5}})


WEBHOOK = '''
[notify]
timezone = "Asia/Shanghai"
[[notify.merchant_webhooks]]
name = "sms"
url = "https://gw:pa55word@sms.example/hook"
secret = "webhook-secret-0123456789"
quiet_hours = "22:00-08:00"
kinds = ["printer"]
'''


def test_merchant_webhooks_load_and_their_secrets_are_masked(tmp_path: Path) -> None:
    config = tmp_path / "fw.toml"
    config.write_text(WEBHOOK, encoding="utf-8")
    settings = load_settings(config)
    [hook] = settings.notify.merchant_webhooks
    assert (hook.name, hook.kinds, hook.quiet_hours, hook.min_severity) == ("sms", ["printer"], "22:00-08:00", "major")
    text = json.dumps(effective_settings(settings))
    assert "webhook-secret" not in text
    assert "pa55word" not in text
    assert "sms.example/hook" in text


@pytest.mark.parametrize(("change", "fragment"), [
    (('quiet_hours = "22:00-08:00"', 'quiet_hours = "late"'), "quiet_hours"),
    (('kinds = ["printer"]', 'kinds = ["toaster"]'), "toaster"),
    (('secret = "webhook-secret-0123456789"', 'secret = "short"'), "16 characters"),
    (('name = "sms"', 'name = "SMS gateway"'), "metric label"),
    (('url = "https://gw:pa55word@sms.example/hook"', 'url = "ftp://sms.example"'), "http"),
    (('timezone = "Asia/Shanghai"', 'timezone = "Mars/Olympus"'), "time zone"),
])
def test_a_bad_webhook_setting_is_one_clear_error(tmp_path: Path, change: tuple[str, str], fragment: str) -> None:
    config = tmp_path / "fw.toml"
    config.write_text(WEBHOOK.replace(*change), encoding="utf-8")
    with pytest.raises(ConfigError, match=fragment):
        load_settings(config)
