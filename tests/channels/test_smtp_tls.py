"""SMTP over TLS against aiosmtpd with a certificate made in the test: STARTTLS and implicit TLS,
the server verified through the configured CA file, and refused without it."""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient

from channels import settings as channel_settings
from channels.providers import smtp
from tests.channels.conftest import delivery, freeze, make_contact
from tests.channels.fakes import MailHandler, free_port
from tests.channels.test_email import create_template, send_email


class TlsMailHandler(MailHandler):
    """Records whether each message came over an encrypted session."""

    def __init__(self) -> None:
        super().__init__()
        self.encrypted: list[bool] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        # STARTTLS sets session.ssl; implicit TLS shows on the transport.
        transport = server.transport
        on_tls = transport is not None and transport.get_extra_info("ssl_object") is not None
        self.encrypted.append(session.ssl is not None or on_tls)
        return await super().handle_DATA(server, session, envelope)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key): a CA made here signs the server's
    certificate for 127.0.0.1 and localhost."""
    folder = tmp_path_factory.mktemp("tls")
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("Nurture test CA"))
        .issuer_name(_name("Nurture test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = folder / "ca.pem", folder / "server.pem", folder / "key.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_file, cert_file, key_file


def server_context(certificates: tuple[Path, Path, Path]) -> ssl.SSLContext:
    _, cert_file, key_file = certificates
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


def serve(**tls: object) -> Iterator[tuple[int, TlsMailHandler]]:
    handler = TlsMailHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), **tls)
    controller.start()
    yield controller.port, handler
    controller.stop()


@pytest.fixture
def starttls_server(
    certificates: tuple[Path, Path, Path],
) -> Iterator[tuple[int, TlsMailHandler]]:
    context = server_context(certificates)
    yield from serve(tls_context=context, require_starttls=True)


@pytest.fixture
def implicit_tls_server(
    certificates: tuple[Path, Path, Path],
) -> Iterator[tuple[int, TlsMailHandler]]:
    yield from serve(ssl_context=server_context(certificates))


def use_server(monkeypatch: pytest.MonkeyPatch, port: int, tls: str, ca_file: Path | None) -> None:
    monkeypatch.setenv("NURTURE_SMTP_HOST", "localhost")
    monkeypatch.setenv("NURTURE_SMTP_PORT", str(port))
    monkeypatch.setenv("NURTURE_SMTP_TLS", tls)
    if ca_file is None:
        monkeypatch.delenv("NURTURE_SMTP_CA_FILE", raising=False)
    else:
        monkeypatch.setenv("NURTURE_SMTP_CA_FILE", str(ca_file))
    channel_settings.get_channel_settings.cache_clear()
    smtp.reset_pool()


def test_starttls_verified_with_the_configured_ca(
    channels_env: None,
    client: TestClient,
    admin_key: str,
    monkeypatch: pytest.MonkeyPatch,
    certificates: tuple[Path, Path, Path],
    starttls_server: tuple[int, TlsMailHandler],
) -> None:
    freeze("2026-03-02T10:00:00+08:00")
    port, handler = starttls_server
    template_id = create_template(client, admin_key)

    # Without the CA the server's certificate cannot be verified: nothing is sent in clear.
    use_server(monkeypatch, port, "starttls", None)
    refused = send_email(client, admin_key, make_contact(), template_id, "tls:1")
    record = delivery(refused["id"])
    assert (record.status, record.error_code) == ("deferred", "smtp_connect")
    assert "CERTIFICATE_VERIFY_FAILED" in (record.error_reason or "")
    assert handler.messages == []

    use_server(monkeypatch, port, "starttls", certificates[0])
    sent = send_email(client, admin_key, make_contact(email="tls@example.cn"), template_id, "tls:2")
    assert delivery(sent["id"]).status == "sent"
    assert [mail.recipients for mail in handler.messages] == [["tls@example.cn"]]
    assert handler.encrypted == [True]


def test_plain_connection_is_refused_by_a_server_that_requires_starttls(
    channels_env: None,
    client: TestClient,
    admin_key: str,
    monkeypatch: pytest.MonkeyPatch,
    starttls_server: tuple[int, TlsMailHandler],
) -> None:
    freeze("2026-03-02T10:00:00+08:00")
    port, handler = starttls_server
    use_server(monkeypatch, port, "none", None)
    sent = send_email(client, admin_key, make_contact(), create_template(client, admin_key), "p")
    record = delivery(sent["id"])
    assert record.status in ("deferred", "bounced") and record.error_code == "530"
    assert handler.messages == []


def test_implicit_tls_verified_with_the_configured_ca(
    channels_env: None,
    client: TestClient,
    admin_key: str,
    monkeypatch: pytest.MonkeyPatch,
    certificates: tuple[Path, Path, Path],
    implicit_tls_server: tuple[int, TlsMailHandler],
) -> None:
    freeze("2026-03-02T10:00:00+08:00")
    port, handler = implicit_tls_server
    use_server(monkeypatch, port, "ssl", certificates[0])
    sent = send_email(
        client, admin_key, make_contact(), create_template(client, admin_key), "ssl:1"
    )
    record = delivery(sent["id"])
    assert record.status == "sent", record.error_reason
    assert handler.encrypted == [True] and len(handler.messages) == 1
