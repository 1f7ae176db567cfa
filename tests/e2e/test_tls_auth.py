"""mqtts:// with a private CA and a client certificate, and username/password, against a real Mosquitto."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.publish import heartbeat
from tests.services import Daemon, free_port, mosquitto_binary, wait_port, wait_until

pytestmark = pytest.mark.broker


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=fleetwatch-test-ca",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n", encoding="utf-8")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                "-out", f"{name}.csr", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", "san.ext", "-out", f"{name}.crt", cwd=d)


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[tuple[str, int, Path]]:
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
        yield f"mqtts://fleetwatch:s3cret%20pass@127.0.0.1:{port}", port, pki
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


def test_mqtts_with_client_certificate_and_password(tmp_path: Path, secure_broker: tuple[str, int, Path]) -> None:
    """The daemon verifies the broker against the configured CA, presents its client certificate and
    logs in with the URL's (percent-encoded) password; messages then flow as over plain MQTT."""
    url, port, pki = secure_broker
    daemon = Daemon(tmp_path, url, prefix="tls/fleet/v1", client_id="fw-tls", overrides={
        "mqtt": {"ca_file": str(pki / "ca.crt"), "cert_file": str(pki / "client.crt"),
                 "key_file": str(pki / "client.key")},
    })
    try:
        daemon.start()
        publish_tls(port, pki, "tls/fleet/v1/term/TLS1/heartbeat", json.dumps(heartbeat("TLS1", "MT")))
        found = wait_until(lambda: daemon.metric("fleetwatch_messages_received_total", type="heartbeat") >= 1,
                           what="heartbeat over TLS")
        assert found
        assert "s3cret" not in daemon.logs()
    finally:
        if daemon.proc is not None:
            daemon.stop()


def test_wrong_password_never_becomes_ready_and_says_why(tmp_path: Path,
                                                         secure_broker: tuple[str, int, Path]) -> None:
    """With a refused login the daemon keeps retrying (not ready, no crash) and logs the failure once."""
    url, _port, pki = secure_broker
    daemon = Daemon(tmp_path, url.replace("s3cret%20pass", "Zq9notit"), prefix="tls/fleet/v1", client_id="fw-bad",
                    overrides={"mqtt": {"ca_file": str(pki / "ca.crt"), "cert_file": str(pki / "client.crt"),
                                        "key_file": str(pki / "client.key")}})
    try:
        daemon.start(wait_ready=False)
        wait_until(lambda: "mqtt connect failed" in daemon.logs(), what="connect failure logged")
        assert daemon.proc is not None
        assert daemon.proc.poll() is None
        assert daemon.ready_status() == 503
        assert daemon.logs().count("mqtt connect failed") == 1  # logged once, not per retry
        assert "Zq9notit" not in daemon.logs()
    finally:
        if daemon.proc is not None:
            daemon.stop()
