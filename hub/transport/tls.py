"""A private CA and a broker certificate for ``mqtts://`` (cryptography's x509 builder).

``edgefleet broker config --tls`` makes them when the operator brings none: a one-site
broker rarely has a public name, and a private CA that devices pin (``ca_file``) is
stronger than the system trust store anyway (nobody else can issue a certificate they
accept). The CA key never leaves ``tls/``; keys are written 0600 and never overwritten
(run the command again after deleting ``tls/`` to re-issue).

ECDSA P-256 keys, SHA-256 signatures, the broker certificate valid for the names and
addresses given (subjectAltName: host names as DNS names, addresses as IP addresses).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.files import write_atomic
from hub.transport.mosquitto import TlsFiles

CA_DAYS = 3650
CERT_DAYS = 825  # what browsers still accept; brokers do not care, operators' tools might


def issue(tls_dir: Path, names: Sequence[str], *, now: dt.datetime) -> TlsFiles:
    """Write ``ca.pem``, ``ca.key``, ``server.pem`` and ``server.key`` into ``tls_dir``
    unless they exist; the paths either way.

    Args:
        names: host names and IP addresses devices use to reach the broker.
        now: the start of validity (an hour earlier, for clocks that lag).
    """
    files = TlsFiles(tls_dir / "ca.pem", tls_dir / "server.pem", tls_dir / "server.key")
    if files.ca.exists() and files.cert.exists() and files.key.exists():
        return files
    tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    start = now - dt.timedelta(hours=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgefleet broker CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write_atomic(tls_dir / "ca.key", _pem_key(ca_key), mode=0o600)
    write_atomic(files.key, _pem_key(key), mode=0o600)
    write_atomic(files.ca, ca.public_bytes(serialization.Encoding.PEM), mode=0o644)
    write_atomic(files.cert, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return files


_CA_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
