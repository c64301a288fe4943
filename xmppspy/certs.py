"""xmppspy's own certificate authority, after mitmproxy's: one CA per person, leaves per domain.

The CA lives in a directory (``default_home()``): ``ca-cert.pem`` and ``ca-key.pem`` (mode
0600, the directory 0700). A person trusts ``ca-cert.pem`` once in the client they debug; the
proxy then presents a leaf issued for the XMPP domain the client asked for. Leaves are cached on
disk under ``leaves/`` and in memory, and reissued when missing, expiring, or not issued by the
current CA. Keys are EC P-256: generating one takes microseconds.

No trio and no console here: errors are ``CertificateError`` with a message for a person.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import re
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca-cert.pem"
CA_KEY = "ca-key.pem"
LEAVES = "leaves"
CA_NAME = "xmppspy CA"
CA_VALIDITY = datetime.timedelta(days=3650)
LEAF_VALIDITY = datetime.timedelta(days=365)
"""Not longer: clients refuse leaves valid for over 398 days."""
BACKDATE = datetime.timedelta(days=1)
"""Certificates start a day early, so a client whose clock is a little behind accepts them."""
RENEW_BEFORE = datetime.timedelta(days=1)
"""A cached leaf this close to expiry is reissued rather than served."""

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")

_Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class CertificateError(Exception):
    """A certificate or key could not be created, read or used; the message says which file."""


def default_home() -> Path:
    """Where the CA lives: ``$XMPPSPY_HOME``, else ``$XDG_DATA_HOME/xmppspy``, else
    ``~/.local/share/xmppspy``."""
    if home := os.environ.get("XMPPSPY_HOME"):
        return Path(home).expanduser()
    data = os.environ.get("XDG_DATA_HOME")
    base = Path(data).expanduser() if data else Path.home() / ".local" / "share"
    return base / "xmppspy"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: _Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _public_der(key: object) -> bytes:
    assert isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically, the file created with ``mode`` from the start."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)  # a leftover temporary file kept its old mode
            file.write(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_certificate(path: Path) -> x509.Certificate:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise CertificateError(f"{path} does not hold a PEM certificate") from None


def _read_key(path: Path) -> _Key:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CertificateError(
            f"{path} holds an encrypted private key; xmppspy needs it unencrypted"
        ) from None
    except ValueError:
        raise CertificateError(f"{path} does not hold a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertificateError(f"{path} holds a {type(key).__name__}: use an EC or RSA key")
    return key


def normalize_domain(domain: str) -> str:
    """The domain as it goes into a certificate: lower case, IDNA (``xn--``), no final dot, or
    an IP address in its usual form. Raises ``CertificateError`` for anything else."""
    text = domain.strip().rstrip(".").lower()
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        pass
    try:
        ascii_name = text.encode("idna").decode("ascii")
    except UnicodeError:
        raise CertificateError(f"{domain!r} is not a domain name") from None
    if not ascii_name or len(ascii_name) > 253:
        raise CertificateError(f"{domain!r} is not a domain name")
    if not all(_LABEL.fullmatch(label) for label in ascii_name.split(".")):
        raise CertificateError(f"{domain!r} is not a domain name")
    return ascii_name


def _san(domain: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(domain))
    except ValueError:
        return x509.DNSName(domain)


def _file_stem(domain: str) -> str:
    return domain.replace(":", "-")  # IPv6; everything else is [a-z0-9._-] already


@dataclass
class _Leaf:
    cert: Path
    key: Path
    not_after: datetime.datetime
    context: ssl.SSLContext | None = None


@dataclass
class CertificateAuthority:
    """The CA in ``directory``; make one with ``load_or_create``."""

    directory: Path
    certificate: x509.Certificate
    key: _Key
    created: bool = False
    """True when ``load_or_create`` made a new CA rather than loading one."""
    notes: list[str] = field(default_factory=list)
    """Warnings for the person (a private key others can read), not errors."""
    _leaves: dict[str, _Leaf] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def cert_path(self) -> Path:
        return self.directory / CA_CERT

    @property
    def key_path(self) -> Path:
        return self.directory / CA_KEY

    @classmethod
    def load_or_create(cls, directory: Path | None = None) -> CertificateAuthority:
        """Load the CA in ``directory`` (default: ``default_home()``), creating it if neither
        file exists. Raises ``CertificateError`` naming the file that is missing, unreadable,
        not a CA, expired, or whose key does not match."""
        directory = default_home() if directory is None else directory
        cert_path, key_path = directory / CA_CERT, directory / CA_KEY
        has_cert, has_key = cert_path.exists(), key_path.exists()
        if not has_cert and not has_key:
            return cls._create(directory)
        if not has_cert or not has_key:
            present, missing = (cert_path, key_path) if has_cert else (key_path, cert_path)
            raise CertificateError(
                f"{present} exists but {missing} does not; restore it, or remove {present} "
                "to create a new CA (clients will then need to trust the new one)"
            )
        certificate, key = _read_certificate(cert_path), _read_key(key_path)
        if _public_der(certificate.public_key()) != _public_der(key.public_key()):
            raise CertificateError(f"{key_path} is not the private key of {cert_path}")
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
            is_ca = constraints.value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise CertificateError(f"{cert_path} is not a CA certificate")
        if certificate.not_valid_after_utc <= _now():
            raise CertificateError(
                f"{cert_path} expired on {certificate.not_valid_after_utc:%Y-%m-%d}; remove "
                f"it and {key_path} to create a new CA"
            )
        notes = []
        if key_path.stat().st_mode & 0o077:
            notes.append(f"{key_path} can be read by other users: run chmod 600 {key_path}")
        return cls(directory, certificate, key, notes=notes)

    @classmethod
    def _create(cls, directory: Path) -> CertificateAuthority:
        try:
            existed = directory.is_dir()
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not existed:
                directory.chmod(0o700)
        except OSError as exc:
            raise CertificateError(f"cannot create {directory}: {exc.strerror or exc}") from None
        key = _new_key()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "xmppspy"),
            ]
        )
        now = _now()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + CA_VALIDITY)
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
        try:
            # The key first: a cert without its key is refused on the next load, never reused.
            _write(directory / CA_KEY, _key_pem(key), 0o600)
            _write(directory / CA_CERT, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
        except OSError as exc:
            raise CertificateError(
                f"cannot write the CA to {directory}: {exc.strerror or exc}"
            ) from None
        return cls(directory, certificate, key, created=True)

    def certificate_pem(self) -> bytes:
        """The CA certificate in PEM: what clients import. Never the key."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def fingerprint(self) -> str:
        """SHA-256 of the CA certificate, upper-case hex pairs joined by colons (as openssl)."""
        digest = hashlib.sha256(self.certificate.public_bytes(serialization.Encoding.DER))
        return ":".join(f"{byte:02X}" for byte in digest.digest())

    def leaf(self, domain: str) -> tuple[Path, Path]:
        """(certificate PEM path, key PEM path) of a leaf for ``domain`` issued by this CA:
        subjectAltName the domain, extendedKeyUsage serverAuth, valid for a year. Reused from
        memory or ``leaves/`` while valid for another day; otherwise issued anew."""
        leaf = self._leaf(normalize_domain(domain))
        return leaf.cert, leaf.key

    def server_context(self, domain: str) -> ssl.SSLContext:
        """A TLS 1.2+ server context presenting the leaf for ``domain`` (cached per domain)."""
        leaf = self._leaf(normalize_domain(domain), context=True)
        assert leaf.context is not None
        return leaf.context

    def sni_context(self, default_domain: str | None = None) -> ssl.SSLContext:
        """A TLS 1.2+ server context that switches to the leaf for the server name the client
        sends (SNI). Without SNI the handshake uses ``default_domain``'s leaf, or fails if none
        is given. A server name no certificate can be issued for ends the handshake with an
        ``unrecognized_name`` alert."""
        context = _server_context()
        if default_domain is not None:
            _load_chain(context, *self.leaf(default_domain))

        def choose(
            ssl_object: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext
        ) -> int | None:
            if server_name is None:
                return None
            try:
                ssl_object.context = self.server_context(server_name)
            except (CertificateError, OSError, ssl.SSLError):
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            return None

        context.sni_callback = choose
        return context

    def _leaf(self, domain: str, *, context: bool = False) -> _Leaf:
        with self._lock:
            cached = self._leaves.get(domain)
            if cached is None or cached.not_after - RENEW_BEFORE <= _now():
                cached = self._load_leaf(domain) or self._issue_leaf(domain)
                self._leaves[domain] = cached
            if context and cached.context is None:
                cached.context = _server_context()
                _load_chain(cached.context, cached.cert, cached.key)
            return cached

    def _leaf_paths(self, domain: str) -> tuple[Path, Path]:
        stem = _file_stem(domain)
        leaves = self.directory / LEAVES
        return leaves / f"{stem}-cert.pem", leaves / f"{stem}-key.pem"

    def _load_leaf(self, domain: str) -> _Leaf | None:
        """The leaf on disk, if it is still good: readable, ours, for this domain, not expiring."""
        cert_path, key_path = self._leaf_paths(domain)
        try:
            certificate, key = _read_certificate(cert_path), _read_key(key_path)
            certificate.verify_directly_issued_by(self.certificate)
            names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except (CertificateError, InvalidSignature, ValueError, TypeError, x509.ExtensionNotFound):
            return None  # unreadable, or not issued by this CA: issue a new one
        if _public_der(certificate.public_key()) != _public_der(key.public_key()):
            return None
        if _san(domain) not in names.value:
            return None
        now = _now()
        not_after = certificate.not_valid_after_utc
        if not_after - RENEW_BEFORE <= now or certificate.not_valid_before_utc > now:
            return None
        return _Leaf(cert_path, key_path, not_after)

    def _issue_leaf(self, domain: str) -> _Leaf:
        key = _new_key()
        now = _now()
        not_after = min(now + LEAF_VALIDITY, self.certificate.not_valid_after_utc)
        subject = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "xmppspy")]
        if len(domain) <= 64:  # the upper bound of a commonName
            subject.insert(0, x509.NameAttribute(NameOID.COMMON_NAME, domain))
        ca_ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(subject))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
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
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(x509.SubjectAlternativeName([_san(domain)]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_path, key_path = self._leaf_paths(domain)
        try:
            cert_path.parent.mkdir(mode=0o700, exist_ok=True)
            _write(key_path, _key_pem(key), 0o600)
            _write(cert_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
        except OSError as exc:
            raise CertificateError(
                f"cannot write a certificate for {domain} to {cert_path.parent}: "
                f"{exc.strerror or exc}"
            ) from None
        return _Leaf(cert_path, key_path, not_after)


def _server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _no_password() -> bytes:
    """Given as the password callback, so an encrypted key fails instead of prompting."""
    return b""


def _load_chain(context: ssl.SSLContext, cert: Path, key: Path | None) -> None:
    context.load_cert_chain(cert, key, password=_no_password)


def load_user_certificate(cert: Path, key: Path | None = None) -> ssl.SSLContext:
    """A TLS 1.2+ server context from a person's own ``--cert``/``--key`` PEM files (the key
    may be in ``cert``'s file; the chain may follow the certificate). Raises
    ``CertificateError`` for a missing file, something that is not PEM, an encrypted key, or a
    key that does not belong to the certificate."""
    key_file = cert if key is None else key
    for path in {cert, key_file}:
        if not path.is_file():
            raise CertificateError(f"{path} does not exist or is not a file")
    certificate = _read_certificate(cert)
    private_key = _read_key(key_file)
    if _public_der(certificate.public_key()) != _public_der(private_key.public_key()):
        raise CertificateError(
            f"the private key in {key_file} does not match the certificate in {cert}"
        )
    context = _server_context()
    try:
        _load_chain(context, cert, key_file)
    except ssl.SSLError as exc:
        raise CertificateError(f"cannot use {cert} and {key_file}: {exc.reason or exc}") from None
    return context


__all__ = [
    "CA_CERT",
    "CA_KEY",
    "CertificateAuthority",
    "CertificateError",
    "default_home",
    "load_user_certificate",
    "normalize_domain",
]
