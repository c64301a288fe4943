"""xmppspy's CA: files and modes, reloading, leaves proven by real TLS handshakes in memory."""

from __future__ import annotations

import datetime
import ssl
import stat
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from xmppspy.certs import (
    CertificateAuthority,
    CertificateError,
    default_home,
    load_user_certificate,
    normalize_domain,
)
from xmppspy.cli import app


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home" / "xmppspy"


@pytest.fixture
def authority(home: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(home)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def trust_only(ca: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(ca)
    return context


def tls(server: ssl.SSLContext, ca: Path, hostname: str | None) -> x509.Certificate:
    """A full TLS handshake through memory BIOs with a client that trusts only ``ca``; returns
    the certificate the server presented. ``hostname=None`` sends no SNI (and checks none)."""
    client = trust_only(ca)
    if hostname is None:
        client.check_hostname = False
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    tls_client = client.wrap_bio(c_in, c_out, server_hostname=hostname)
    tls_server = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for side, obj, outgoing, incoming in (
            ("client", tls_client, c_out, s_in),
            ("server", tls_server, s_out, c_in),
        ):
            if not done[side]:
                try:
                    obj.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
            incoming.write(outgoing.read())
        if all(done.values()):
            break
    assert all(done.values())
    der = tls_client.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def sans(certificate: x509.Certificate) -> list[str]:
    extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return [str(name) for name in extension.value.get_values_for_type(x509.DNSName)]


# --- the CA --------------------------------------------------------------------------------


def test_creation_writes_both_files_with_private_modes(home: Path) -> None:
    authority = CertificateAuthority.load_or_create(home)
    assert authority.created
    assert authority.notes == []
    assert authority.cert_path == home / "ca-cert.pem"
    assert authority.key_path == home / "ca-key.pem"
    assert mode(home) == 0o700
    assert mode(authority.key_path) == 0o600
    assert b"PRIVATE KEY" not in authority.cert_path.read_bytes()
    assert sorted(p.name for p in home.iterdir()) == ["ca-cert.pem", "ca-key.pem"]


def test_the_ca_is_a_p256_ca_for_ten_years(authority: CertificateAuthority) -> None:
    cert = x509.load_pem_x509_certificate(authority.cert_path.read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "xmppspy CA"
    assert cert.issuer == cert.subject
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert 3640 <= days <= 3660
    cert.verify_directly_issued_by(cert)


def test_reloading_gives_the_same_ca(home: Path, authority: CertificateAuthority) -> None:
    again = CertificateAuthority.load_or_create(home)
    assert not again.created
    assert again.fingerprint() == authority.fingerprint()
    assert again.certificate_pem() == authority.cert_path.read_bytes()


def test_fingerprint_is_the_sha256_of_the_der(authority: CertificateAuthority) -> None:
    import hashlib

    der = authority.certificate.public_bytes(serialization.Encoding.DER)
    expected = hashlib.sha256(der).hexdigest().upper()
    assert authority.fingerprint().replace(":", "") == expected
    assert len(authority.fingerprint().split(":")) == 32


def test_a_key_others_can_read_gives_a_note(home: Path, authority: CertificateAuthority) -> None:
    authority.key_path.chmod(0o644)
    again = CertificateAuthority.load_or_create(home)
    assert len(again.notes) == 1
    assert str(authority.key_path) in again.notes[0] and "chmod 600" in again.notes[0]


def test_a_missing_half_is_refused_not_replaced(
    home: Path, authority: CertificateAuthority
) -> None:
    authority.cert_path.unlink()
    with pytest.raises(CertificateError, match=r"ca-key\.pem exists but .*ca-cert\.pem does not"):
        CertificateAuthority.load_or_create(home)
    assert authority.key_path.exists()


def test_a_key_of_another_ca_is_refused(
    tmp_path: Path, home: Path, authority: CertificateAuthority
) -> None:
    other = CertificateAuthority.load_or_create(tmp_path / "other")
    authority.key_path.write_bytes(other.key_path.read_bytes())
    with pytest.raises(
        CertificateError, match=r"ca-key\.pem is not the private key of .*ca-cert\.pem"
    ):
        CertificateAuthority.load_or_create(home)


@pytest.mark.parametrize("name", ["ca-cert.pem", "ca-key.pem"])
def test_garbage_is_refused_naming_the_file(
    home: Path, authority: CertificateAuthority, name: str
) -> None:
    (home / name).write_bytes(b"not pem\n")
    with pytest.raises(CertificateError, match=rf"{name} does not hold a PEM"):
        CertificateAuthority.load_or_create(home)


def test_default_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("XMPPSPY_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_home() == tmp_path / "data" / "xmppspy"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_home() == tmp_path / ".local" / "share" / "xmppspy"
    monkeypatch.setenv("XMPPSPY_HOME", str(tmp_path / "spy"))
    assert default_home() == tmp_path / "spy"


# --- leaves --------------------------------------------------------------------------------


def test_leaf_has_the_san_the_eku_and_a_year(authority: CertificateAuthority) -> None:
    cert_path, key_path = authority.leaf("Example.ORG.")
    assert cert_path.parent == authority.directory / "leaves"
    assert mode(key_path) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert sans(cert) == ["example.org"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert 360 <= days <= 398
    assert cert.not_valid_after_utc > datetime.datetime.now(datetime.UTC) + datetime.timedelta(
        days=360
    )
    cert.verify_directly_issued_by(authority.certificate)


def test_leaf_for_an_ip_address(authority: CertificateAuthority) -> None:
    cert_path, _ = authority.leaf("::1")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["::1"]


def test_handshake_succeeds_for_the_domain(authority: CertificateAuthority) -> None:
    presented = tls(authority.server_context("example.org"), authority.cert_path, "example.org")
    assert sans(presented) == ["example.org"]


def test_handshake_fails_for_another_hostname(authority: CertificateAuthority) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match=r"[Hh]ostname mismatch"):
        tls(authority.server_context("example.org"), authority.cert_path, "example.net")


def test_handshake_fails_with_another_ca(tmp_path: Path, authority: CertificateAuthority) -> None:
    other = CertificateAuthority.load_or_create(tmp_path / "other")
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        tls(authority.server_context("example.org"), other.cert_path, "example.org")


def test_server_context_refuses_tls_1_1(authority: CertificateAuthority) -> None:
    assert authority.server_context("example.org").minimum_version == ssl.TLSVersion.TLSv1_2


def test_leaves_are_cached_per_domain(home: Path, authority: CertificateAuthority) -> None:
    first = authority.leaf("example.org")
    content = first[0].read_bytes()
    assert authority.leaf("EXAMPLE.org") == first
    assert authority.leaf("example.net") != first
    # A fresh CA object (another run of the proxy) reuses the leaf on disk.
    again = CertificateAuthority.load_or_create(home)
    assert again.leaf("example.org") == first
    assert first[0].read_bytes() == content


def test_missing_or_foreign_leaves_are_reissued(
    tmp_path: Path, home: Path, authority: CertificateAuthority
) -> None:
    cert_path, key_path = authority.leaf("example.org")
    old = cert_path.read_bytes()
    cert_path.unlink()
    again = CertificateAuthority.load_or_create(home)
    assert again.leaf("example.org") == (cert_path, key_path)
    assert cert_path.read_bytes() != old
    # A leaf issued by another CA (the CA was replaced, the leaves kept) is not served.
    other = CertificateAuthority.load_or_create(tmp_path / "other")
    foreign_cert, foreign_key = other.leaf("example.org")
    cert_path.write_bytes(foreign_cert.read_bytes())
    key_path.write_bytes(foreign_key.read_bytes())
    fresh = CertificateAuthority.load_or_create(home)
    tls(fresh.server_context("example.org"), home / "ca-cert.pem", "example.org")


def test_an_expiring_leaf_is_reissued(
    monkeypatch: pytest.MonkeyPatch, authority: CertificateAuthority
) -> None:
    import xmppspy.certs

    cert_path, _ = authority.leaf("example.org")
    old = cert_path.read_bytes()
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=365)
    monkeypatch.setattr(xmppspy.certs, "_now", lambda: later)
    authority.leaf("example.org")
    assert cert_path.read_bytes() != old


@pytest.mark.parametrize("bad", ["", "..", "a..b", "../etc", "a/b", "-x.org", "x y"])
def test_names_that_are_no_domain_are_refused(authority: CertificateAuthority, bad: str) -> None:
    with pytest.raises(CertificateError, match="is not a domain name"):
        authority.leaf(bad)


def test_international_domains_go_in_as_idna() -> None:
    assert normalize_domain("Exämple.org") == "xn--exmple-cua.org"
    assert normalize_domain("[::1]") == "::1"


def test_sni_context_picks_the_leaf_per_server_name(authority: CertificateAuthority) -> None:
    server = authority.sni_context()
    for domain in ("example.org", "chat.example.net", "localhost"):
        assert sans(tls(server, authority.cert_path, domain)) == [domain]


def test_sni_context_without_sni_uses_the_default(authority: CertificateAuthority) -> None:
    presented = tls(authority.sni_context("example.org"), authority.cert_path, None)
    assert sans(presented) == ["example.org"]


def test_sni_context_refuses_a_name_it_cannot_certify(authority: CertificateAuthority) -> None:
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = trust_only(authority.cert_path).wrap_bio(c_in, c_out, server_hostname="bad-.example")
    server = authority.sni_context().wrap_bio(s_in, s_out, server_side=True)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    s_in.write(c_out.read())
    with pytest.raises(ssl.SSLError, match="CALLBACK_FAILED"):
        server.do_handshake()
    c_in.write(s_out.read())
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        client.do_handshake()
    assert not (authority.directory / "leaves").exists()


# --- a person's own certificate -------------------------------------------------------------


@pytest.fixture
def trusted(tmp_path: Path) -> tuple[trustme.CA, Path, Path, Path]:
    ca = trustme.CA()
    leaf = ca.issue_cert("example.org")
    cert, key, ca_pem = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_pem))
    return ca, cert, key, ca_pem


def test_user_certificate_serves_tls(trusted: tuple[trustme.CA, Path, Path, Path]) -> None:
    _, cert, key, ca_pem = trusted
    assert sans(tls(load_user_certificate(cert, key), ca_pem, "example.org")) == ["example.org"]


def test_user_certificate_with_the_key_in_the_same_file(
    tmp_path: Path, trusted: tuple[trustme.CA, Path, Path, Path]
) -> None:
    _, cert, key, ca_pem = trusted
    both = tmp_path / "both.pem"
    both.write_bytes(cert.read_bytes() + key.read_bytes())
    tls(load_user_certificate(both), ca_pem, "example.org")


def test_user_certificate_errors(
    tmp_path: Path, trusted: tuple[trustme.CA, Path, Path, Path]
) -> None:
    ca, cert, key, _ = trusted
    with pytest.raises(CertificateError, match=r"nope\.pem does not exist"):
        load_user_certificate(tmp_path / "nope.pem", key)
    with pytest.raises(CertificateError, match=r"nope\.pem does not exist"):
        load_user_certificate(cert, tmp_path / "nope.pem")
    other_key = tmp_path / "other-key.pem"
    ca.issue_cert("example.org").private_key_pem.write_to_path(str(other_key))
    with pytest.raises(CertificateError, match=r"private key in .*other-key\.pem does not match"):
        load_user_certificate(cert, other_key)
    with pytest.raises(CertificateError, match=r"key\.pem does not hold a PEM certificate"):
        load_user_certificate(key, key)
    with pytest.raises(CertificateError, match=r"cert\.pem does not hold a PEM private key"):
        load_user_certificate(cert, cert)


def test_user_certificate_with_an_encrypted_key(
    tmp_path: Path, trusted: tuple[trustme.CA, Path, Path, Path]
) -> None:
    _, cert, key, _ = trusted
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    locked = tmp_path / "locked.pem"
    locked.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(CertificateError, match="encrypted private key"):
        load_user_certificate(cert, locked)


# --- xmppspy ca ------------------------------------------------------------------------------

runner = CliRunner()


def ca_command(home: Path, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(
        app, ["ca", *args], env={"XMPPSPY_HOME": str(home), "NO_COLOR": "1", "COLUMNS": "200"}
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def test_ca_command_creates_and_describes_the_ca(home: Path) -> None:
    code, out, err = ca_command(home)
    assert code == 0, err
    authority = CertificateAuthority.load_or_create(home)
    assert str(home / "ca-cert.pem") in out
    assert "created" in out
    assert authority.fingerprint() in out
    assert "load_verify_locations" in out and "trust store" in out
    code, again, _ = ca_command(home)
    assert code == 0
    assert "created" not in again
    assert authority.fingerprint() in again


def test_ca_command_exports_the_certificate_only(tmp_path: Path, home: Path) -> None:
    target = tmp_path / "exported.pem"
    code, out, err = ca_command(home, "--export", str(target))
    assert code == 0, err
    assert str(target) in out
    exported = target.read_bytes()
    assert b"PRIVATE" not in exported
    assert exported == (home / "ca-cert.pem").read_bytes()
    x509.load_pem_x509_certificate(exported)


def test_ca_command_exports_to_stdout(home: Path) -> None:
    code, out, _ = ca_command(home, "--export", "-")
    assert code == 0
    assert out.encode() == (home / "ca-cert.pem").read_bytes()


def test_ca_command_errors_in_one_line(tmp_path: Path, home: Path) -> None:
    code, _, err = ca_command(home, "--export", str(tmp_path / "missing" / "ca.pem"))
    assert code == 1
    assert err.startswith("xmppspy: cannot write") and err.count("\n") == 1
    (home / "ca-cert.pem").unlink()
    code, _, err = ca_command(home)
    assert code == 1
    assert "ca-key.pem exists but" in err and "Traceback" not in err
