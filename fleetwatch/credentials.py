"""The TLS and credential files the settings name, read with one readable error per file.

A missing CA file used to surface as a 35-line traceback from deep inside the MQTT
library; here each file is opened on its own first, so the error names the setting, the
path and what is wrong with it (:class:`~fleetwatch.errors.CredentialFileError`, exit 4).
``fleetwatch check-config`` runs the same checks as ``fleetwatch run``.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from urllib.parse import urlsplit

from fleetwatch.config import MqttSettings
from fleetwatch.errors import CredentialFileError


def _readable(setting: str, path: str) -> None:
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise CredentialFileError(f"{setting} {path}: {exc.strerror or exc}") from exc


def _no_passphrase() -> bytes:
    """An encrypted key must fail, not prompt on a terminal nobody watches."""
    return b""


def mqtt_tls_context(settings: MqttSettings) -> ssl.SSLContext | None:
    """The client TLS context for ``mqtts://`` (None for ``mqtt://``), from the configured files."""
    if urlsplit(settings.url).scheme != "mqtts":
        return None
    for setting in ("ca_file", "cert_file", "key_file"):
        path = getattr(settings, setting)
        if path:
            _readable(f"mqtt.{setting}", path)
    try:
        context = ssl.create_default_context(cafile=settings.ca_file)
    except (ssl.SSLError, OSError) as exc:
        raise CredentialFileError(f"mqtt.ca_file {settings.ca_file}: not a PEM CA certificate ({exc})") from exc
    if settings.cert_file:
        try:
            context.load_cert_chain(settings.cert_file, settings.key_file, password=_no_passphrase)
        except (ssl.SSLError, OSError) as exc:
            files = settings.cert_file + (f" and mqtt.key_file {settings.key_file}" if settings.key_file else "")
            raise CredentialFileError(
                f"mqtt.cert_file {files}: not a PEM certificate with its unencrypted private key ({exc})"
            ) from exc
    return context


def write_token_file(path: Path, token: str) -> None:
    """Write a generated API token where only the daemon's user can read it (0600)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
    except OSError as exc:
        raise CredentialFileError(f"http.token_file {path}: cannot write the generated API token: "
                                  f"{exc.strerror or exc}") from exc
