"""A network's certificate authority and the credentials it issues (``qnet certs``).

One directory holds a network's credentials (keys mode 0600, certificates 0644)::

    ca.pem                  the network CA (ECDSA P-256, self-signed); every daemon trusts it
    ca.key                  its key: keep it off the node machines (``qnet up`` discards it)
    channeld.pem/.key       qnet-channeld's server certificate
    node-NAME.pem/.key      node NAME's certificate, server and client (peers, channeld)
    app.pem/.key            the application credential: applications and the operator's tools
    app.token               the alternative application credential, sent as call metadata

Each leaf names its identity in a URI SAN (``qnet.security.identity``) and carries DNS SANs for
TLS host name checks: its role name (``node.NAME.qnet``, ``channeld.qnet``), ``localhost``,
127.0.0.1, ::1, and the host the topology gives the daemon.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from qnet.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from qnet.security.files import (
    APP_TOKEN,
    CA_CERT,
    CA_KEY,
    CERT_MODE,
    cert_path,
    key_path,
    write_secret,
)
from qnet.security.identity import APP, CHANNEL, Identity, Role
from qnet.topology import Topology

DEFAULT_VALIDITY_DAYS = 365
MAX_VALIDITY_DAYS = 3650
#: Clocks of the machines of a network may differ a little: certificates start this early.
_BACKDATE = datetime.timedelta(minutes=5)
_LOOPBACK = ("localhost", "127.0.0.1", "::1")
_ANY = {"0.0.0.0", "::"}


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_public(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(CERT_MODE)


def _san_entry(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _hosts(extra: Iterable[str]) -> list[str]:
    out: list[str] = []
    for host in (*_LOOPBACK, *extra):
        if host and host not in _ANY and host not in out:
            out.append(host)
    return out


@dataclass(frozen=True, slots=True)
class Authority:
    """A network CA: issues the leaf certificates of one network."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, network: str, *, days: int = DEFAULT_VALIDITY_DAYS) -> Authority:
        check_days(days)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "qnet"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"qnet network CA {network}"),
            ]
        )
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @classmethod
    def load(cls, directory: Path) -> Authority:
        """The CA ``write_network_certs`` kept in ``directory`` (its key included)."""
        try:
            key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), None)
            cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        except OSError as exc:
            raise FailedPrecondition(
                f"cannot read the network CA in {directory}: {exc.strerror or exc}"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise FailedPrecondition(f"{directory / CA_KEY} is not an EC key")
        return cls(key, cert)

    def issue(
        self,
        identity: Identity,
        *,
        hosts: Iterable[str] = (),
        days: int = DEFAULT_VALIDITY_DAYS,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """A new key and a certificate naming ``identity``; node and backend certificates
        also name ``hosts`` and the loopback addresses, for TLS host name checks."""
        check_days(days)
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if identity.role is not Role.APP:
            sans.append(x509.DNSName(identity.dns_name))
            sans += [_san_entry(h) for h in _hosts(hosts)]
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        now = datetime.datetime.now(datetime.UTC)
        not_after = min(now + datetime.timedelta(days=days), self.cert.not_valid_after_utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "qnet"),
                        x509.NameAttribute(NameOID.COMMON_NAME, identity.dns_name),
                    ]
                )
            )
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
            .sign(self.key, hashes.SHA256())
        )
        return key, cert

    def write_leaf(
        self,
        directory: Path,
        identity: Identity,
        *,
        hosts: Iterable[str] = (),
        days: int = DEFAULT_VALIDITY_DAYS,
    ) -> None:
        key, cert = self.issue(identity, hosts=hosts, days=days)
        write_secret(key_path(directory, identity), key_pem(key))
        _write_public(cert_path(directory, identity), _pem(cert))


def check_days(days: int) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_VALIDITY_DAYS:
        raise InvalidArgument(f"validity must be 1..{MAX_VALIDITY_DAYS} days, got {days!r}")


def write_network_certs(
    topology: Topology,
    out: Path,
    *,
    days: int = DEFAULT_VALIDITY_DAYS,
    keep_ca_key: bool = True,
    replace: bool = False,
) -> list[Path]:
    """Create a CA and every credential of ``topology``'s network in ``out`` (made mode 0700
    if new). Refuses (AlreadyExists) to replace an existing CA unless ``replace``. Returns the
    files written."""
    check_days(days)
    if out.exists() and not out.is_dir():
        raise FailedPrecondition(f"{out} exists and is not a directory")
    if (out / CA_CERT).exists() and not replace:
        raise AlreadyExists(
            f"{out} already holds a network CA ({CA_CERT}); choose another directory or"
            " replace it (qnet certs --force)"
        )
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca = Authority.create(topology.name, days=days)
    written = [out / CA_CERT]
    _write_public(out / CA_CERT, _pem(ca.cert))
    if keep_ca_key:
        write_secret(out / CA_KEY, key_pem(ca.key))
        written.append(out / CA_KEY)
    else:
        (out / CA_KEY).unlink(missing_ok=True)
    leaves: list[tuple[Identity, tuple[str, ...]]] = [
        (CHANNEL, (topology.channel.host,)),
        (APP, ()),
        *((Identity.node(n.name), (n.host,)) for n in topology.nodes),
    ]
    for identity, hosts in leaves:
        ca.write_leaf(out, identity, hosts=hosts, days=days)
        written += [cert_path(out, identity), key_path(out, identity)]
    write_secret(out / APP_TOKEN, (secrets.token_urlsafe(32) + "\n").encode())
    written.append(out / APP_TOKEN)
    return written


def verify_issued(ca_pem: bytes, cert_pem: bytes, *, at: datetime.datetime | None = None) -> None:
    """Refuse (FailedPrecondition) a certificate the CA did not sign or that is not valid
    ``at`` (now by default): what daemons check on start, before any handshake could fail
    with a vaguer message."""
    ca = x509.load_pem_x509_certificate(ca_pem)
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError) as exc:
        raise FailedPrecondition(f"the certificate was not issued by the CA: {exc}") from None
    except InvalidSignature:
        raise FailedPrecondition("the certificate's signature does not verify") from None
    now = at or datetime.datetime.now(datetime.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise FailedPrecondition(
            f"the certificate is valid from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} to"
            f" {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, not now"
        )


def identity_of_cert(cert_pem: bytes) -> Identity | None:
    """The identity a certificate names in its URI SAN, or None."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        identity = Identity.from_uri(uri)
        if identity is not None:
            return identity
    return None
