"""Cluster identity: files and modes, refusal to overwrite, certificate chains, mutual TLS, sealing."""

from __future__ import annotations

import contextlib
import json
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from moot.runtime import identity


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def node(cluster: identity.Cluster, tmp_path: Path, node_id: str = "n1") -> identity.NodeIdentity:
    return identity.issue_node_certificate(
        cluster, node_id, ["127.0.0.1", "localhost"], tmp_path / node_id
    )


def handshake(
    server: ssl.SSLContext, client: ssl.SSLContext
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """A full TLS handshake in memory; raises ssl.SSLError if either side refuses."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    from_server, from_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_side = server.wrap_bio(to_server, from_server, server_side=True)
    client_side = client.wrap_bio(to_client, from_client, server_side=False)
    done = {"server": False, "client": False}
    for _ in range(20):
        for name, side, outgoing, incoming in (
            ("client", client_side, from_client, to_server),
            ("server", server_side, from_server, to_client),
        ):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
            incoming.write(outgoing.read())
        if all(done.values()):
            # TLS 1.3: the server checks the client certificate after the
            # client considers itself done; make the client read the verdict.
            with contextlib.suppress(ssl.SSLWantReadError):
                client_side.read(1)
            return server_side, client_side
    raise AssertionError("handshake did not finish")


# -- files --------------------------------------------------------------------------


def test_init_creates_files_with_safe_modes(tmp_path: Path) -> None:
    paths = identity.init_cluster(tmp_path / "new" / "cluster")
    assert mode(paths.directory) == 0o700
    for secret in (paths.ca_key, paths.client_key, paths.token, paths.gossip_key):
        assert mode(secret) == 0o600, secret
    for public in (paths.ca_certificate, paths.client_certificate, paths.cluster_json):
        assert mode(public) == 0o644, public
    manifest = json.loads(paths.cluster_json.read_text())
    assert manifest["format_version"] == identity.CLUSTER_FORMAT_VERSION
    assert len(manifest["cluster_id"]) == 16
    assert len(paths.gossip_key.read_bytes()) == identity.GOSSIP_KEY_BYTES
    assert len(paths.token.read_text().strip()) >= 40


def test_load_returns_the_cluster(tmp_path: Path) -> None:
    paths = identity.init_cluster(tmp_path / "c")
    cluster = identity.load_cluster(tmp_path / "c")
    assert cluster.cluster_id == json.loads(paths.cluster_json.read_text())["cluster_id"]
    assert cluster.token == paths.token.read_text()
    assert cluster.token not in repr(cluster)


def test_second_init_refuses_and_keeps_the_ca(tmp_path: Path) -> None:
    paths = identity.init_cluster(tmp_path / "c")
    key = paths.ca_key.read_bytes()
    with pytest.raises(identity.ClusterError, match="already holds a cluster"):
        identity.init_cluster(tmp_path / "c")
    assert paths.ca_key.read_bytes() == key


def test_init_refuses_a_directory_with_any_cluster_file(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "ca.key").write_text("precious")
    with pytest.raises(identity.ClusterError, match=r"ca\.key"):
        identity.init_cluster(tmp_path / "c")
    assert (tmp_path / "c" / "ca.key").read_text() == "precious"


def test_load_missing_cluster_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(identity.ClusterError, match=r"no cluster at .*run `moot init --dir"):
        identity.load_cluster(tmp_path / "nothing")


def test_load_incomplete_cluster_says_what_to_remove(tmp_path: Path) -> None:
    paths = identity.init_cluster(tmp_path / "c")
    paths.cluster_json.unlink()
    with pytest.raises(identity.ClusterError, match="incomplete cluster"):
        identity.load_cluster(tmp_path / "c")


def test_load_refuses_a_readable_secret(tmp_path: Path) -> None:
    paths = identity.init_cluster(tmp_path / "c")
    paths.token.chmod(0o644)
    with pytest.raises(identity.ClusterError, match="chmod 600"):
        identity.load_cluster(tmp_path / "c")


def test_load_refuses_a_bad_gossip_key(tmp_path: Path) -> None:
    paths = identity.init_cluster(tmp_path / "c")
    paths.gossip_key.write_bytes(b"short")
    with pytest.raises(identity.ClusterError, match=r"gossip\.key"):
        identity.load_cluster(tmp_path / "c")


def test_load_refuses_files_mixed_from_two_clusters(tmp_path: Path) -> None:
    identity.init_cluster(tmp_path / "a")
    other = identity.init_cluster(tmp_path / "b")
    (tmp_path / "a" / "client.crt").write_bytes(other.client_certificate.read_bytes())
    with pytest.raises(identity.ClusterError, match="different clusters"):
        identity.load_cluster(tmp_path / "a")


# -- certificates -----------------------------------------------------------------------


def subject(certificate: x509.Certificate, oid: x509.ObjectIdentifier) -> str:
    value = certificate.subject.get_attributes_for_oid(oid)[0].value
    assert isinstance(value, str)
    return value


def test_certificates_chain_to_the_cluster_ca(cluster: identity.Cluster, tmp_path: Path) -> None:
    ca = cluster.ca_certificate
    client = x509.load_pem_x509_certificate(cluster.paths.client_certificate.read_bytes())
    issued = node(cluster, tmp_path)
    node_certificate = x509.load_pem_x509_certificate(issued.certificate.read_bytes())
    for certificate in (client, node_certificate):
        certificate.verify_directly_issued_by(ca)
    assert subject(client, NameOID.ORGANIZATIONAL_UNIT_NAME) == "client"
    assert subject(node_certificate, NameOID.ORGANIZATIONAL_UNIT_NAME) == "node"
    assert subject(node_certificate, NameOID.COMMON_NAME) == "n1"
    names = node_certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert mode(issued.key) == 0o600


def test_node_certificate_is_reused_when_valid(cluster: identity.Cluster, tmp_path: Path) -> None:
    first = node(cluster, tmp_path)
    pem = first.certificate.read_bytes()
    again = identity.issue_node_certificate(cluster, "n1", ["127.0.0.1"], tmp_path / "n1")
    assert again.certificate.read_bytes() == pem


def test_node_certificate_is_reissued_for_a_new_id_host_or_ca(
    cluster: identity.Cluster, foreign_cluster: identity.Cluster, tmp_path: Path
) -> None:
    first = node(cluster, tmp_path).certificate.read_bytes()
    renamed = identity.issue_node_certificate(
        cluster, "n2", [], tmp_path / "n1"
    ).certificate.read_bytes()
    assert renamed != first
    new_host = identity.issue_node_certificate(cluster, "n2", ["10.0.0.7"], tmp_path / "n1")
    assert new_host.certificate.read_bytes() != renamed
    # A certificate of another CA in the data dir is replaced, never trusted.
    foreign = identity.issue_node_certificate(foreign_cluster, "n3", [], tmp_path / "n3")
    ours = identity.issue_node_certificate(cluster, "n3", [], tmp_path / "n3")
    x509.load_pem_x509_certificate(ours.certificate.read_bytes()).verify_directly_issued_by(
        cluster.ca_certificate
    )
    assert foreign.certificate == ours.certificate


@pytest.mark.parametrize("bad", ["", "a" * 65, "has space", "../etc", "-lead"])
def test_invalid_node_ids_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid node id"):
        identity.validate_node_id(bad)


# -- TLS ------------------------------------------------------------------------------


def test_mutual_tls_names_both_peers(cluster: identity.Cluster, tmp_path: Path) -> None:
    server_node, client_node = (
        node(cluster, tmp_path, "server-1"),
        node(cluster, tmp_path, "dialer-2"),
    )
    server = identity.server_ssl_context(cluster, server_node)
    client = identity.node_tls_contexts(cluster, client_node).client
    server_side, client_side = handshake(server, client)
    assert identity.peer_identity(server_side) == ("node", "dialer-2")
    assert identity.peer_identity(client_side) == ("node", "server-1")
    assert server_side.version() in ("TLSv1.3", "TLSv1.2")


def test_client_certificate_identifies_as_client(cluster: identity.Cluster, tmp_path: Path) -> None:
    server = identity.server_ssl_context(cluster, node(cluster, tmp_path))
    server_side, _ = handshake(server, identity.client_ssl_context(cluster))
    assert identity.peer_identity(server_side) == ("client", "client")


def test_foreign_ca_client_is_refused(
    cluster: identity.Cluster, foreign_cluster: identity.Cluster, tmp_path: Path
) -> None:
    server = identity.server_ssl_context(cluster, node(cluster, tmp_path))
    foreign = node(foreign_cluster, tmp_path, "intruder")
    # The intruder even trusts our CA: only its own certificate gives it away.
    client = identity.client_ssl_context(cluster, foreign.certificate, foreign.key)
    with pytest.raises(ssl.SSLError):
        handshake(server, client)


def test_foreign_ca_server_is_refused(
    cluster: identity.Cluster, foreign_cluster: identity.Cluster, tmp_path: Path
) -> None:
    impostor = identity.server_ssl_context(
        foreign_cluster, node(foreign_cluster, tmp_path, "impostor")
    )
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(impostor, identity.node_tls_contexts(cluster, node(cluster, tmp_path)).client)


def test_client_certificate_cannot_serve_as_a_node(
    cluster: identity.Cluster, tmp_path: Path
) -> None:
    as_server = identity.NodeIdentity(
        node_id="client", certificate=cluster.paths.client_certificate, key=cluster.paths.client_key
    )
    server = identity.server_ssl_context(cluster, as_server)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server, identity.client_ssl_context(cluster))


def test_peer_identity_needs_a_certificate() -> None:
    class NoCertificate:
        def getpeercert(self, binary_form: bool) -> bytes | None:
            return None

    with pytest.raises(identity.PeerIdentityError, match="no certificate"):
        identity.peer_identity(NoCertificate())


def test_contexts_require_tls12_and_certificates(cluster: identity.Cluster, tmp_path: Path) -> None:
    contexts = identity.node_tls_contexts(cluster, node(cluster, tmp_path))
    for context in (contexts.server, contexts.client):
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


# -- sealing -------------------------------------------------------------------------


def test_seal_round_trip(cluster: identity.Cluster) -> None:
    sealed = identity.seal(cluster.gossip_key, b"gossip", b"context")
    assert sealed[0] == identity.SEAL_VERSION
    assert b"gossip" not in sealed
    assert identity.unseal(cluster.gossip_key, sealed, b"context") == b"gossip"
    # Random nonces: sealing twice never repeats.
    assert identity.seal(cluster.gossip_key, b"gossip") != identity.seal(
        cluster.gossip_key, b"gossip"
    )


def test_unseal_detects_any_flipped_byte(cluster: identity.Cluster) -> None:
    sealed = identity.seal(cluster.gossip_key, b"alive n1 incarnation 3")
    for position in range(len(sealed)):
        tampered = bytearray(sealed)
        tampered[position] ^= 0x01
        with pytest.raises(identity.SealError):
            identity.unseal(cluster.gossip_key, bytes(tampered))


def test_unseal_refuses_wrong_key_context_and_truncation(
    cluster: identity.Cluster, foreign_cluster: identity.Cluster
) -> None:
    sealed = identity.seal(cluster.gossip_key, b"payload", b"ctx")
    with pytest.raises(identity.SealError, match="authentication"):
        identity.unseal(foreign_cluster.gossip_key, sealed, b"ctx")
    with pytest.raises(identity.SealError):
        identity.unseal(cluster.gossip_key, sealed, b"other")
    with pytest.raises(identity.SealError, match="too short"):
        identity.unseal(cluster.gossip_key, sealed[:20])
    with pytest.raises(ValueError, match="32 bytes"):
        identity.seal(b"short", b"x")
