"""mqtts:// with a private CA and a client certificate, and username/password, against a real Mosquitto."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fleetwatch.ports import CONNECT_FAILURE_REASONS
from tests.pki import make_pki
from tests.publish import heartbeat
from tests.services import Daemon, free_port, mosquitto_binary, wait_port, wait_until

pytestmark = pytest.mark.broker


@dataclass
class SecureBroker:
    url: str
    port: int
    pki: Path
    passwords: Path
    proc: subprocess.Popen[bytes]

    def tls_files(self) -> dict[str, str]:
        return {"ca_file": str(self.pki / "ca.crt"), "cert_file": str(self.pki / "client.crt"),
                "key_file": str(self.pki / "client.key")}


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[SecureBroker]:
    """Mosquitto with a TLS listener that demands a client certificate and a password."""
    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki)
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), "fleetwatch", "s3cret pass"], check=True)
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        f"cafile {pki / 'ca.crt'}\ncertfile {pki / 'server.crt'}\nkeyfile {pki / 'server.key'}\n"
        "require_certificate true\n"
        f"allow_anonymous false\npassword_file {passwords}\nlog_dest none\n"
        "user root\n",  # the test keys are root-only files; do not drop to the mosquitto user
        encoding="utf-8",
    )
    proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_port(port)
    try:
        yield SecureBroker(f"mqtts://fleetwatch:s3cret%20pass@127.0.0.1:{port}", port, pki, passwords, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def publish_tls(port: int, pki: Path, topic: str, payload: str) -> None:
    subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "--cafile", str(pki / "ca.crt"),
         "--cert", str(pki / "client.crt"), "--key", str(pki / "client.key"),
         "-u", "fleetwatch", "-P", "s3cret pass", "-q", "1", "-t", topic, "-m", payload],
        check=True, capture_output=True, timeout=10,
    )


def readyz(daemon: Daemon) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{daemon.api}/readyz", timeout=5) as r:
            return int(r.status), json.loads(r.read())
    except urllib.error.HTTPError as exc:
        try:
            return int(exc.code), json.loads(exc.read())
        finally:
            exc.close()


def log_events(daemon: Daemon, event: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in daemon.logs().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == event]


def test_mqtts_with_client_certificate_and_password(tmp_path: Path, secure_broker: SecureBroker) -> None:
    """The daemon verifies the broker against the configured CA, presents its client certificate and
    logs in with the URL's (percent-encoded) password; messages then flow as over plain MQTT."""
    daemon = Daemon(tmp_path, secure_broker.url, prefix="tls/fleet/v1", client_id="fw-tls",
                    overrides={"mqtt": secure_broker.tls_files()})
    try:
        daemon.start()
        publish_tls(secure_broker.port, secure_broker.pki, "tls/fleet/v1/term/TLS1/heartbeat",
                    json.dumps(heartbeat("TLS1", "MT")))
        found = wait_until(lambda: daemon.metric("fleetwatch_messages_received_total", type="heartbeat") >= 1,
                           what="heartbeat over TLS")
        assert found
        assert "s3cret" not in daemon.logs()
    finally:
        if daemon.proc is not None:
            daemon.stop()


def test_refused_login_is_retried_counted_reported_and_recovers(tmp_path: Path,
                                                                secure_broker: SecureBroker) -> None:
    """A login the broker refuses is not an exit: the daemon retries with backoff, counts every
    attempt in fleetwatch_mqtt_connect_failures_total under the broker's CONNACK reason (every reason
    present from the start, fleetwatch_mqtt_connected without labels), logs the reason once, and
    /readyz says why it is not ready. Once the broker's password file is fixed (and reloaded with
    SIGHUP), the same process connects and becomes ready; the password never reaches the log."""
    daemon = Daemon(tmp_path, secure_broker.url.replace("s3cret%20pass", "Zq9notit"), prefix="tls/fleet/v1",
                    client_id="fw-bad", overrides={"mqtt": secure_broker.tls_files()})
    try:
        daemon.start(wait_ready=False)
        wait_until(lambda: daemon.ready_status() is not None, what="the HTTP API answering")
        refused = 'reason="not_authorized"'
        wait_until(lambda: daemon.metric("fleetwatch_mqtt_connect_failures_total", reason="not_authorized") >= 2,
                   what="the refused login retried")
        assert daemon.proc is not None
        assert daemon.proc.poll() is None
        status, body = readyz(daemon)
        assert status == 503
        assert body["status"] == "not ready"
        assert body["role"] == "active"
        assert body["reason"].startswith("mqtt: not_authorized: broker refused the connection")
        text = daemon.get("/metrics", auth=False)
        for reason in CONNECT_FAILURE_REASONS:
            assert f'fleetwatch_mqtt_connect_failures_total{{reason="{reason}"}}' in text, reason
        others = [line for line in text.splitlines()
                  if line.startswith("fleetwatch_mqtt_connect_failures_total{") and refused not in line]
        assert others
        assert all(line.endswith(" 0.0") for line in others), others
        assert "fleetwatch_mqtt_connected 0.0" in text.splitlines()
        failures = log_events(daemon, "mqtt connect failed, retrying with backoff")
        assert [(f["level"], f["reason"]) for f in failures] == [("warning", "not_authorized")]  # once, not per retry

        subprocess.run(["mosquitto_passwd", "-b", str(secure_broker.passwords), "fleetwatch", "Zq9notit"],
                       check=True)
        secure_broker.proc.send_signal(signal.SIGHUP)  # Mosquitto reloads its password file
        daemon.wait_ready()
        assert readyz(daemon) == (200, {"status": "ready", "role": "active", "reason": None})
        assert "fleetwatch_mqtt_connected 1.0" in daemon.get("/metrics", auth=False).splitlines()
        assert len(log_events(daemon, "mqtt connect failed, retrying with backoff")) == 1
        assert log_events(daemon, "mqtt connected after failed attempts")
        assert "Zq9notit" not in daemon.logs()
    finally:
        if daemon.proc is not None:
            daemon.stop()
