"""Cluster identity: the cluster CA, node and client certificates, TLS contexts.

Rules:

- A cluster is a directory made once by ``init_cluster``: a CA (EC P-256,
  self-signed), a client certificate, a client token, a gossip key and
  ``cluster.json``. ``cluster.json`` is written last, so its presence marks a
  complete cluster; a directory holding any cluster file is never overwritten.
- Private material (``ca.key``, ``client.key``, ``token``, ``gossip.key``,
  node keys) is created with mode 0600, and ``load_cluster`` refuses files
  that others can read, as ssh does with private keys.
- Every certificate names its role in the subject's OU (``ca``, ``node``,
  ``client``) and its name in the CN. Node ids are not host names and nodes
  are often reached at 127.0.0.1, so TLS host-name checking is off; instead
  the transport reads ``peer_identity`` from the verified certificate after
  the handshake and matches it against what the peer claims in ``Hello``.
- TLS contexts trust the cluster CA and nothing else (design property 6: a
  node talks only to peers with a certificate of the same cluster CA), and
  require a certificate both ways (mutual TLS), TLS 1.2 at least.
- ``seal``/``unseal`` are AES-256-GCM with a random 96-bit nonce and a version
  byte, for sealed UDP gossip.

Operating errors (missing or corrupt files, loose permissions) raise
``ClusterError`` with a message that says what to do.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import secrets
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from moot.core import wire

CLUSTER_FORMAT_VERSION: Final = 1

# File names inside a cluster directory and a node's data directory.
CLUSTER_JSON: Final = "cluster.json"
CA_CERTIFICATE: Final = "ca.crt"
CA_KEY: Final = "ca.key"
CLIENT_CERTIFICATE: Final = "client.crt"
CLIENT_KEY: Final = "client.key"
TOKEN: Final = "token"
GOSSIP_KEY: Final = "gossip.key"
NODE_CERTIFICATE: Final = "node.crt"
NODE_KEY: Final = "node.key"

# A CA outlives the machines it was made on; ten years is what kubeadm gives
# its cluster CA. Node certificates are renewed on start when fewer than
# NODE_RENEW_BEFORE_DAYS remain, so a short-ish life costs nothing.
CA_VALIDITY_DAYS: Final = 3650
CLIENT_VALIDITY_DAYS: Final = 3650
NODE_VALIDITY_DAYS: Final = 5 * 365
NODE_RENEW_BEFORE_DAYS: Final = 180
# Certificates are back-dated this much so that a peer whose clock is a
# little behind ours does not reject a certificate made a second ago.
CLOCK_SKEW_ALLOWANCE: Final = datetime.timedelta(hours=1)

GOSSIP_KEY_BYTES: Final = 32  # AES-256
TOKEN_BYTES: Final = 32  # 256 bits of entropy, url-safe base64 text
SEAL_VERSION: Final = 1
SEAL_NONCE_BYTES: Final = 12  # the GCM standard nonce size (NIST SP 800-38D)
SEAL_TAG_BYTES: Final = 16

ROLE_CA: Final = "ca"
ROLE_NODE: Final = "node"
ROLE_CLIENT: Final = "client"

Role = Literal["node", "client"]

# Node ids end up in file paths, log lines and certificate subjects: keep
# them to a conservative alphabet.
_NODE_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

_SECRET_FILE_MODE: Final = 0o600
_DIRECTORY_MODE: Final = 0o700
_CLUSTER_FILES: Final = (
    CLUSTER_JSON,
    CA_CERTIFICATE,
    CA_KEY,
    CLIENT_CERTIFICATE,
    CLIENT_KEY,
    TOKEN,
    GOSSIP_KEY,
)


class ClusterError(Exception):
    """A cluster or node directory is missing, incomplete, corrupt or unsafe.

    The message says what to do about it.
    """


class PeerIdentityError(Exception):
    """A peer's verified certificate does not name a valid node or client."""


class SealError(Exception):
    """A sealed datagram is truncated, of an unknown version, or was tampered with."""


@dataclass(frozen=True, slots=True)
class ClusterPaths:
    """Where the files of a cluster live."""

    directory: Path
    cluster_json: Path
    ca_certificate: Path
    ca_key: Path
    client_certificate: Path
    client_key: Path
    token: Path
    gossip_key: Path

    @classmethod
    def of(cls, directory: Path) -> ClusterPaths:
        """The standard file layout of the cluster directory ``directory``."""
        return cls(
            directory=directory,
            cluster_json=directory / CLUSTER_JSON,
            ca_certificate=directory / CA_CERTIFICATE,
            ca_key=directory / CA_KEY,
            client_certificate=directory / CLIENT_CERTIFICATE,
            client_key=directory / CLIENT_KEY,
            token=directory / TOKEN,
            gossip_key=directory / GOSSIP_KEY,
        )


@dataclass(frozen=True, slots=True, repr=False)
class Cluster:
    """A loaded cluster: its id, CA certificate and shared secrets.

    The CA private key stays on disk; it is read only to issue certificates.
    ``repr`` hides the secrets so a logged ``Cluster`` leaks nothing.
    """

    paths: ClusterPaths
    cluster_id: str
    format_version: int
    ca_certificate: x509.Certificate
    token: str
    gossip_key: bytes

    def __repr__(self) -> str:
        return f"Cluster(cluster_id={self.cluster_id!r}, directory={str(self.paths.directory)!r})"


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """A node's certificate and key files, issued by the cluster CA."""

    node_id: str
    certificate: Path
    key: Path


@dataclass(frozen=True, slots=True)
class TlsContexts:
    """The two TLS contexts a node needs: accepting and connecting."""

    server: ssl.SSLContext
    client: ssl.SSLContext


class _HasPeerCertificate(Protocol):
    def getpeercert(self, binary_form: Literal[True]) -> bytes | None: ...


# -- creating and loading a cluster ---------------------------------------------


def init_cluster(directory: Path) -> ClusterPaths:
    """Create a new cluster in ``directory`` (made if missing) and return its paths.

    Raises ``ClusterError`` if the directory already holds any cluster file:
    a CA key is never overwritten.
    """
    paths = ClusterPaths.of(directory)
    existing = sorted(name for name in _CLUSTER_FILES if (directory / name).exists())
    if existing:
        raise ClusterError(
            f"{directory} already holds a cluster ({', '.join(existing)}): "
            f"use it with `--dir {directory}`, or remove those files to start a new cluster"
        )
    directory.mkdir(mode=_DIRECTORY_MODE, parents=True, exist_ok=True)

    cluster_id = secrets.token_hex(8)
    now = _now()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(common_name=f"moot cluster CA {cluster_id}", role=ROLE_CA)
    ca_certificate = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW_ALLOWANCE)
        .not_valid_after(now + datetime.timedelta(days=CA_VALIDITY_DAYS))
        # path_length=0: the CA signs leaves only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
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
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_certificate = _issue_leaf(
        ca_certificate,
        ca_key,
        client_key,
        common_name=ROLE_CLIENT,
        role=ROLE_CLIENT,
        hosts=[],
        validity_days=CLIENT_VALIDITY_DAYS,
    )

    _write_new(paths.ca_key, _private_key_pem(ca_key), secret=True)
    _write_new(
        paths.ca_certificate, ca_certificate.public_bytes(serialization.Encoding.PEM), secret=False
    )
    _write_new(paths.client_key, _private_key_pem(client_key), secret=True)
    _write_new(
        paths.client_certificate,
        client_certificate.public_bytes(serialization.Encoding.PEM),
        secret=False,
    )
    _write_new(paths.token, secrets.token_urlsafe(TOKEN_BYTES).encode("ascii"), secret=True)
    _write_new(paths.gossip_key, secrets.token_bytes(GOSSIP_KEY_BYTES), secret=True)
    # Written last: its presence means every other file is complete.
    manifest = {
        "format_version": CLUSTER_FORMAT_VERSION,
        "cluster_id": cluster_id,
        "created_at": now.isoformat(),
    }
    _write_new(
        paths.cluster_json, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"), secret=False
    )
    return paths


def load_cluster(directory: Path) -> Cluster:
    """Load the cluster in ``directory``; ``ClusterError`` says what to fix if it can't."""
    paths = ClusterPaths.of(directory)
    if not paths.cluster_json.exists():
        present = [name for name in _CLUSTER_FILES if (directory / name).exists()]
        if present:
            raise ClusterError(
                f"incomplete cluster at {directory} (no {CLUSTER_JSON}; `moot init` was interrupted?): "
                f"remove {', '.join(sorted(present))} and run `moot init --dir {directory}` again"
            )
        raise ClusterError(f"no cluster at {directory}: run `moot init --dir {directory}` first")
    manifest = _read_manifest(paths.cluster_json)
    for path in (
        paths.ca_certificate,
        paths.client_certificate,
        paths.client_key,
        paths.token,
        paths.gossip_key,
    ):
        if not path.exists():
            raise ClusterError(
                f"cluster at {directory} is missing {path.name}: copy it from the machine where "
                f"`moot init` made the cluster"
            )
    for path in (paths.client_key, paths.token, paths.gossip_key):
        _check_private(path)
    ca_certificate = _load_certificate(paths.ca_certificate)
    token = paths.token.read_text(encoding="ascii", errors="replace").strip()
    if not token:
        raise ClusterError(
            f"{paths.token} is empty: copy the cluster's token file from the machine that made it"
        )
    gossip_key = paths.gossip_key.read_bytes()
    if len(gossip_key) != GOSSIP_KEY_BYTES:
        raise ClusterError(
            f"{paths.gossip_key} holds {len(gossip_key)} bytes, expected {GOSSIP_KEY_BYTES}: "
            f"copy the cluster's gossip.key from the machine that made it"
        )
    cluster = Cluster(
        paths=paths,
        cluster_id=manifest[0],
        format_version=manifest[1],
        ca_certificate=ca_certificate,
        token=token,
        gossip_key=gossip_key,
    )
    client_certificate = _load_certificate(paths.client_certificate)
    if not _issued_by(client_certificate, ca_certificate):
        raise ClusterError(
            f"{paths.client_certificate} was not issued by {paths.ca_certificate}: the files come from "
            f"different clusters; copy the whole cluster directory again"
        )
    return cluster


def issue_node_certificate(
    cluster: Cluster, node_id: str, hosts: list[str], out_dir: Path
) -> NodeIdentity:
    """Issue (or reuse) the certificate of node ``node_id``, stored in ``out_dir``.

    An existing ``node.crt``/``node.key`` pair is reused when it was issued by
    this cluster's CA for this node id, is valid for at least
    ``NODE_RENEW_BEFORE_DAYS`` more days and names every host in ``hosts``;
    otherwise a new key and certificate replace it. Issuing needs the CA key.
    """
    validate_node_id(node_id)
    sans = [_parse_host(host) for host in hosts]
    identity = NodeIdentity(
        node_id=node_id, certificate=out_dir / NODE_CERTIFICATE, key=out_dir / NODE_KEY
    )
    if _node_certificate_reusable(cluster, identity, sans):
        return identity
    if not cluster.paths.ca_key.exists():
        raise ClusterError(
            f"cannot issue a certificate for node {node_id}: {cluster.paths.ca_key} is missing; "
            f"copy ca.key into the cluster directory or issue the certificate where it is"
        )
    _check_private(cluster.paths.ca_key)
    ca_key = _load_private_key(cluster.paths.ca_key)
    if (
        ca_key.public_key().public_numbers()
        != _ec_public_key(cluster.ca_certificate).public_numbers()
    ):
        raise ClusterError(f"{cluster.paths.ca_key} does not match {cluster.paths.ca_certificate}")
    node_key = ec.generate_private_key(ec.SECP256R1())
    certificate = _issue_leaf(
        cluster.ca_certificate,
        ca_key,
        node_key,
        common_name=node_id,
        role=ROLE_NODE,
        hosts=sans,
        validity_days=NODE_VALIDITY_DAYS,
    )
    out_dir.mkdir(mode=_DIRECTORY_MODE, parents=True, exist_ok=True)
    # Key first: a crash between the two leaves a certificate that does not
    # match its key, which _node_certificate_reusable rejects next time.
    _replace(identity.key, _private_key_pem(node_key), secret=True)
    _replace(
        identity.certificate, certificate.public_bytes(serialization.Encoding.PEM), secret=False
    )
    assert _node_certificate_reusable(cluster, identity, sans)
    return identity


def validate_node_id(node_id: str) -> None:
    """Raise ``ValueError`` unless ``node_id`` is a usable node id."""
    if not 1 <= len(node_id) <= wire.NODE_ID_CHARS_MAX or not _NODE_ID_PATTERN.fullmatch(node_id):
        raise ValueError(
            f"invalid node id {node_id!r}: use 1 to {wire.NODE_ID_CHARS_MAX} characters from "
            f"A-Z a-z 0-9 . _ - starting with a letter or digit"
        )


# -- TLS -------------------------------------------------------------------------

# TLS 1.2 suites for peers without 1.3: forward secret (ECDHE) AEAD only.
# TLS 1.3 suites are not affected by set_ciphers and are all AEAD.
_TLS12_CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20"


def _harden(context: ssl.SSLContext, cluster: Cluster) -> None:
    """Settings both sides share: mutual TLS against the cluster CA only."""
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(_TLS12_CIPHERS)
    context.verify_mode = ssl.CERT_REQUIRED
    # Only the cluster CA: never the system store (design property 6).
    context.load_verify_locations(cafile=cluster.paths.ca_certificate)
    assert context.verify_mode == ssl.CERT_REQUIRED


def server_ssl_context(cluster: Cluster, node: NodeIdentity) -> ssl.SSLContext:
    """A context that accepts connections as ``node`` and requires a cluster certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context, cluster)
    context.load_cert_chain(certfile=node.certificate, keyfile=node.key)
    return context


def client_ssl_context(
    cluster: Cluster, certificate: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A context that connects with a certificate and trusts only the cluster CA.

    Defaults to the cluster's client certificate; a node passes its own
    (``node_tls_contexts``). Host names are not checked: the caller must check
    ``peer_identity`` after the handshake.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # node ids are not host names; see module doc
    _harden(context, cluster)
    context.load_cert_chain(
        certfile=certificate or cluster.paths.client_certificate,
        keyfile=key or cluster.paths.client_key,
    )
    return context


def node_tls_contexts(cluster: Cluster, node: NodeIdentity) -> TlsContexts:
    """Both contexts of a node, each presenting the node's certificate."""
    return TlsContexts(
        server=server_ssl_context(cluster, node),
        client=client_ssl_context(cluster, node.certificate, node.key),
    )


def peer_identity(ssl_object: _HasPeerCertificate) -> tuple[Role, str]:
    """``(role, name)`` from the peer's verified certificate: OU and CN.

    Call after a handshake with ``CERT_REQUIRED``, so the certificate has
    already been verified against the cluster CA.
    """
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise PeerIdentityError("peer presented no certificate")
    certificate = x509.load_der_x509_certificate(der)
    role = _single_attribute(certificate.subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
    name = _single_attribute(certificate.subject, NameOID.COMMON_NAME)
    if role == ROLE_NODE:
        try:
            validate_node_id(name)
        except ValueError as error:
            raise PeerIdentityError(f"node certificate has an invalid node id: {error}") from error
        return "node", name
    if role == ROLE_CLIENT:
        return "client", name
    raise PeerIdentityError(
        f"certificate role (OU) is {role!r}, expected {ROLE_NODE!r} or {ROLE_CLIENT!r}"
    )


# -- sealed datagrams ----------------------------------------------------------------


def seal(key: bytes, plaintext: bytes, associated_data: bytes = b"") -> bytes:
    """AES-256-GCM: ``version || nonce || ciphertext+tag``.

    The nonce is random; with 96-bit random nonces NIST SP 800-38D caps a key
    at 2**32 messages, years of gossip for a cluster.
    """
    if len(key) != GOSSIP_KEY_BYTES:
        raise ValueError(f"seal key must be {GOSSIP_KEY_BYTES} bytes, got {len(key)}")
    nonce = secrets.token_bytes(SEAL_NONCE_BYTES)
    header = bytes([SEAL_VERSION]) + nonce
    # The header is authenticated too, so a flipped version byte is caught.
    sealed = header + AESGCM(key).encrypt(nonce, plaintext, header + associated_data)
    assert len(sealed) == 1 + SEAL_NONCE_BYTES + len(plaintext) + SEAL_TAG_BYTES
    return sealed


def unseal(key: bytes, data: bytes, associated_data: bytes = b"") -> bytes:
    """Open what ``seal`` made; ``SealError`` if truncated, unknown or tampered with."""
    if len(key) != GOSSIP_KEY_BYTES:
        raise ValueError(f"seal key must be {GOSSIP_KEY_BYTES} bytes, got {len(key)}")
    if len(data) < 1 + SEAL_NONCE_BYTES + SEAL_TAG_BYTES:
        raise SealError(f"sealed data of {len(data)} bytes is too short")
    if data[0] != SEAL_VERSION:
        raise SealError(f"sealed data has version {data[0]}, expected {SEAL_VERSION}")
    header = data[: 1 + SEAL_NONCE_BYTES]
    nonce = header[1:]
    try:
        return AESGCM(key).decrypt(nonce, data[len(header) :], header + associated_data)
    except InvalidTag as error:
        raise SealError(
            "sealed data failed authentication (tampered with, or another cluster's key)"
        ) from error


# -- helpers ------------------------------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(*, common_name: str, role: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "moot"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _issue_leaf(
    ca_certificate: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    key: ec.EllipticCurvePrivateKey,
    *,
    common_name: str,
    role: str,
    hosts: list[x509.GeneralName],
    validity_days: int,
) -> x509.Certificate:
    now = _now()
    # A node both accepts and opens connections; a client only opens them, so
    # a client certificate cannot be used to pose as a node's server side.
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if role == ROLE_NODE:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name=common_name, role=role))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW_ALLOWANCE)
        .not_valid_after(
            min(now + datetime.timedelta(days=validity_days), ca_certificate.not_valid_after_utc)
        )
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(_ec_public_key(ca_certificate)),
            critical=False,
        )
    )
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName(hosts), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _parse_host(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    if (
        not host
        or len(host) > 253
        or not all(label and len(label) <= 63 for label in host.split("."))
    ):
        raise ValueError(f"invalid host {host!r}: give an IP address or a DNS name")
    return x509.DNSName(host)


def _node_certificate_reusable(
    cluster: Cluster, identity: NodeIdentity, sans: list[x509.GeneralName]
) -> bool:
    if not identity.certificate.exists() or not identity.key.exists():
        return False
    try:
        certificate = _load_certificate(identity.certificate)
        key = _load_private_key(identity.key)
    except ClusterError:
        return False
    if not _issued_by(certificate, cluster.ca_certificate):
        return False
    if key.public_key().public_numbers() != _ec_public_key(certificate).public_numbers():
        return False
    if certificate.not_valid_after_utc - _now() < datetime.timedelta(days=NODE_RENEW_BEFORE_DAYS):
        return False
    try:
        subject = (
            _single_attribute(certificate.subject, NameOID.ORGANIZATIONAL_UNIT_NAME),
            _single_attribute(certificate.subject, NameOID.COMMON_NAME),
        )
    except PeerIdentityError:
        return False
    if subject != (ROLE_NODE, identity.node_id):
        return False
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return not sans
    return all(san in names for san in sans)


def _issued_by(certificate: x509.Certificate, ca_certificate: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(ca_certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _single_attribute(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    attributes = name.get_attributes_for_oid(oid)
    if len(attributes) != 1:
        raise PeerIdentityError(
            f"certificate subject has {len(attributes)} attributes {oid.dotted_string}, expected 1"
        )
    value = attributes[0].value
    return value if isinstance(value, str) else value.decode("utf-8", errors="replace")


def _ec_public_key(certificate: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = certificate.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ClusterError(f"certificate {certificate.subject.rfc4514_string()} has a non-EC key")
    return key


def _private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # Unencrypted: the file mode protects it, as with ssh host keys; a node
    # must start unattended.
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as error:
        raise ClusterError(f"cannot read certificate {path}: {error}") from error


def _load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise ClusterError(f"cannot read private key {path}: {error}") from error
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ClusterError(f"{path} is not an EC private key")
    return key


def _read_manifest(path: Path) -> tuple[str, int]:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ClusterError(
            f"cannot read {path}: {error}; restore it from the machine that made the cluster"
        ) from error
    if not isinstance(manifest, dict):
        raise ClusterError(
            f"{path} is not a JSON object; restore it from the machine that made the cluster"
        )
    cluster_id = manifest.get("cluster_id")
    format_version = manifest.get("format_version")
    if not isinstance(cluster_id, str) or not cluster_id:
        raise ClusterError(
            f"{path} has no cluster_id; restore it from the machine that made the cluster"
        )
    if format_version != CLUSTER_FORMAT_VERSION:
        raise ClusterError(
            f"{path} has format_version {format_version!r}; this moot reads version {CLUSTER_FORMAT_VERSION}: "
            f"use a matching moot release"
        )
    return cluster_id, format_version


def _check_private(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ClusterError(
            f"{path} has mode {mode:04o}, readable by other users: run `chmod 600 {path}`"
        )


def _write_new(path: Path, data: bytes, *, secret: bool) -> None:
    """Create ``path`` (it must not exist) with the right mode from the start."""
    mode = _SECRET_FILE_MODE if secret else 0o644
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    # os.open's mode is filtered by the umask; the secret mode must hold anyway.
    os.chmod(path, mode)


def _replace(path: Path, data: bytes, *, secret: bool) -> None:
    """Atomically replace ``path``: write a temporary file, then rename it."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    _write_new(temporary, data, secret=secret)
    os.replace(temporary, path)
