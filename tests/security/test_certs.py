"""The network CA and its certificates (``qnet certs``), and the topology's [security] table."""

from __future__ import annotations

import datetime
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from qnet import errors
from qnet.cli import main
from qnet.security.certs import Authority, identity_of_cert, verify_issued, write_network_certs
from qnet.security.files import APP_TOKEN, CA_CERT, CA_KEY, cert_path, key_path
from qnet.security.identity import APP, CHANNEL, Identity, Role
from qnet.security.tls import daemon_credentials, load_app_client, load_credentials
from qnet.topology import TopologyError, parse_topology, topology_to_toml

TOPOLOGY = """
[network]
name = "sec"
[channel]
host = "10.1.2.3"
[[node]]
name = "alice"
host = "alice.example.org"
[[node]]
name = "Bob_2"
[[link]]
between = ["alice", "Bob_2"]
"""
IDENTITIES = [CHANNEL, APP, Identity.node("alice"), Identity.node("Bob_2")]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs") / "sec"
    write_network_certs(parse_topology(TOPOLOGY), out, days=30)
    return out


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _sans(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def test_every_leaf_chains_to_the_ca_and_names_its_identity(certs: Path) -> None:
    ca = _cert(certs / CA_CERT)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    root = (certs / CA_CERT).read_bytes()
    for identity in IDENTITIES:
        pem = cert_path(certs, identity).read_bytes()
        verify_issued(root, pem)
        assert identity_of_cert(pem) == identity
        leaf = x509.load_pem_x509_certificate(pem)
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        assert datetime.timedelta(days=30) <= lifetime <= datetime.timedelta(days=31)
        # The key file holds the certificate's key, and loads as the daemon's credential.
        key = serialization.load_pem_private_key(key_path(certs, identity).read_bytes(), None)
        assert key.public_key() == leaf.public_key()
        creds = load_credentials(certs, identity)
        assert creds.identity == identity
    # A certificate of another CA, or one out of its validity, is refused.
    for other, problem in [("other", "not issued by the CA"), ("sec", "does not verify")]:
        _, foreign = Authority.create(other).issue(Identity.node("alice"))
        with pytest.raises(errors.FailedPrecondition, match=problem):
            verify_issued(root, foreign.public_bytes(serialization.Encoding.PEM))
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=40)
    with pytest.raises(errors.FailedPrecondition, match="not now"):
        verify_issued(root, cert_path(certs, APP).read_bytes(), at=later)


def test_subject_alternative_names(certs: Path) -> None:
    alice = _sans(_cert(cert_path(certs, Identity.node("alice"))))
    assert alice.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:qnet:node:alice"]
    assert set(alice.get_values_for_type(x509.DNSName)) == {
        "node.alice.qnet",
        "localhost",
        "alice.example.org",
    }
    assert set(alice.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    channel = _sans(_cert(cert_path(certs, CHANNEL)))
    assert "channeld.qnet" in channel.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("10.1.2.3") in channel.get_values_for_type(x509.IPAddress)
    # The application credential is a client certificate only: no host names to serve as.
    app = _cert(cert_path(certs, APP))
    assert _sans(app).get_values_for_type(x509.DNSName) == []
    usages = app.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]


def test_keys_and_token_are_private(certs: Path) -> None:
    assert stat.S_IMODE(certs.stat().st_mode) == 0o700
    secrets = [certs / CA_KEY, certs / APP_TOKEN, *(key_path(certs, i) for i in IDENTITIES)]
    for path in secrets:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((certs / CA_CERT).stat().st_mode) == 0o644
    token = (certs / APP_TOKEN).read_text().strip()
    assert len(token) >= 40
    assert load_app_client(certs).token == token
    assert load_credentials(certs, Identity.node("alice")).app_token == token


def test_a_ca_is_never_replaced_silently_and_a_wrong_credential_is_named(
    certs: Path, tmp_path: Path
) -> None:
    with pytest.raises(errors.AlreadyExists, match="already holds a network CA"):
        write_network_certs(parse_topology(TOPOLOGY), certs)
    with pytest.raises(errors.InvalidArgument, match="validity"):
        write_network_certs(parse_topology(TOPOLOGY), tmp_path / "x", days=0)
    with pytest.raises(errors.FailedPrecondition, match="qnet certs"):
        load_credentials(certs, Identity.node("carol"))
    # alice's files under bob's name: the certificate names someone else.
    mixed = tmp_path / "mixed"
    write_network_certs(parse_topology(TOPOLOGY), mixed)
    bob = Identity.node("Bob_2")
    cert_path(mixed, bob).write_bytes(cert_path(mixed, Identity.node("alice")).read_bytes())
    with pytest.raises(errors.FailedPrecondition, match="names node alice, not node Bob_2"):
        load_credentials(mixed, bob)


def test_qnet_certs_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    topology = tmp_path / "t.toml"
    topology.write_text(TOPOLOGY)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as done:
        main(["certs", str(topology), "--out", str(out), "--days", "10"])
    assert done.value.code == 0
    assert "wrote 11 files" in capsys.readouterr().out
    assert identity_of_cert(cert_path(out, Identity.node("Bob_2")).read_bytes()) == (
        Identity(Role.NODE, "Bob_2")
    )
    with pytest.raises(SystemExit) as again:
        main(["certs", str(topology), "--out", str(out)])
    assert again.value.code == 1
    assert "--force" in capsys.readouterr().err


def test_identity_uris_round_trip() -> None:
    for identity in IDENTITIES:
        assert Identity.from_uri(identity.uri) == identity
    for uri in ("urn:qnet:node:", "urn:qnet:node:a b", "urn:qnet:root", "https://x", ""):
        assert Identity.from_uri(uri) is None


# -- [security] in the topology ---------------------------------------------------------------

BASE = """
[[node]]
name = "a"
[[node]]
name = "b"
host = "HOST"
"""


def test_tls_auto_is_on_off_loopback_only() -> None:
    for host, tls in [("127.0.0.1", False), ("127.0.0.2", False), ("localhost", False)]:
        assert parse_topology(BASE.replace("HOST", host)).tls is tls, host
    for host in ("10.0.0.2", "::", "0.0.0.0", "b.example.org"):
        assert parse_topology(BASE.replace("HOST", host)).tls, host
    local = BASE.replace("HOST", "::1")
    assert not parse_topology(local).tls
    assert parse_topology(local + '[security]\ntls = "on"\n').tls
    remote = BASE.replace("HOST", "10.0.0.2")
    assert not parse_topology(remote + '[security]\ntls = "off"\n').tls


def test_security_table_is_checked_and_round_trips(tmp_path: Path) -> None:
    base = BASE.replace("HOST", "127.0.0.1")
    path = tmp_path / "net.toml"
    path.write_text(base + '[security]\ntls = "on"\ncerts_dir = "creds"\n')
    from qnet.topology import load_topology

    top = load_topology(path)
    assert top.certs_path() == tmp_path / "creds"
    assert parse_topology(topology_to_toml(top)) == top
    for bad, message in [
        ('tls = "yes"', "tls must be one of 'auto', 'on', 'off', got 'yes'"),
        ("tls = true", "tls must be a string"),
        ('certs_dir = ""', "certs_dir must be a directory path"),
        ('cert_dir = "x"', "did you mean 'certs_dir'"),
    ]:
        with pytest.raises(TopologyError, match=message) as info:
            parse_topology(base + f"[security]\n{bad}\n", "net.toml")
        assert info.value.line == base.count("\n") + 2


def test_a_daemon_never_serves_plaintext_when_tls_is_on(tmp_path: Path) -> None:
    on = parse_topology(BASE.replace("HOST", "10.0.0.2"))
    with pytest.raises(errors.FailedPrecondition, match="--certs DIR"):
        daemon_credentials(on, None, Identity.node("a"))
    off = parse_topology(BASE.replace("HOST", "127.0.0.1"))
    assert daemon_credentials(off, None, Identity.node("a")) is None
