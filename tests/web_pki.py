"""Certificates for a test, made for the run (the `cryptography` package) and never committed: a CA, a server
certificate, a client certificate and a rogue client of another CA; and the exporter-toolkit web configuration
(`web_config_file`) that serves mutual TLS and basic auth with them."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, key: ec.EllipticCurvePrivateKey | None, cert: x509.Certificate) -> None:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        path.with_suffix(".key").chmod(0o600)  # a private key its owner's alone, or servers refuse it


def _ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # key_cert_sign, crl_sign
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], name: str, sans: list[x509.GeneralName], server: bool
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    now = datetime.now(UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca[1].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca[0], hashes.SHA256())
    )
    return key, cert


@dataclass
class Pki:
    """ca.crt; server.crt/.key (127.0.0.1, localhost and the extra IPs); client.crt/.key (the scrapers' and the
    reconciler's); rogue.crt/.key (a client certificate of another CA)."""

    dir: Path

    def path(self, name: str) -> str:
        return str(self.dir / name)

    def client_context(self, with_certificate: bool = True, rogue: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.path("ca.crt"))
        if with_certificate:
            name = "rogue" if rogue else "client"
            context.load_cert_chain(self.path(f"{name}.crt"), self.path(f"{name}.key"))
        return context


def make_pki(directory: Path, *server_ips: str, ca_name: str = "trading-ops test CA") -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca(ca_name)
    _write(directory / "ca", None, ca[1])
    ips = ["127.0.0.1", *server_ips]
    server_sans: list[x509.GeneralName] = [x509.DNSName("localhost")]
    server_sans += [x509.IPAddress(ip_address(ip)) for ip in ips]
    _write(directory / "server", *_leaf(ca, "trading-ops server", server_sans, server=True))
    _write(directory / "client", *_leaf(ca, "prometheus", [x509.DNSName("prometheus")], server=False))
    other = _ca("another CA")
    _write(directory / "rogue", *_leaf(other, "rogue", [x509.DNSName("prometheus")], server=False))
    return Pki(directory)


def web_config(pki: Pki, *, users: dict[str, str] | None = None, **tls: Any) -> dict[str, Any]:
    """A web configuration: mutual TLS with the test CA (overridable key by key), basic-auth users (plain passwords,
    hashed here)."""
    server: dict[str, Any] = {
        "cert_file": pki.path("server.crt"),
        "key_file": pki.path("server.key"),
        "client_auth_type": "RequireAndVerifyClientCert",
        "client_ca_file": pki.path("ca.crt"),
        "min_version": "TLS12",
    }
    server.update(tls)
    data: dict[str, Any] = {"tls_server_config": {k: v for k, v in server.items() if v is not None}}
    if users:
        data["basic_auth_users"] = {u: bcrypt.hashpw(p.encode(), bcrypt.gensalt(4)).decode() for u, p in users.items()}
    return data
