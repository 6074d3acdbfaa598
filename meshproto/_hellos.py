"""The hellos a client opens each transport with (docs/protocol.md §3.1, §3.2).

A member ``hello`` is signed by the member key over
``meshId|memberId|pubkey|timestamp``. A ``session_hello`` carries a parent
attestation minted afresh for every transport (valid
``ClientConfig.attestation_ttl_ms``) and signed by the member key, and is
itself signed by the session key. The wall-clock time comes from the
caller, as every input of the core does.
"""

from __future__ import annotations

from ._config import ClientConfig
from ._frames import Hello, ParentAttestation, SessionHello
from ._seams import (
    Signer,
    attestation_signing_payload,
    hello_signing_payload,
    session_hello_signing_payload,
)

__all__ = ["hello_frame"]


def hello_frame(config: ClientConfig, wall_time_ms: int) -> Hello | SessionHello:
    """The hello that opens every transport of ``config`` (signed at ``wall_time_ms``)."""
    if config.session_signer is not None:
        return _session_hello(config, wall_time_ms, config.session_signer)
    pubkey = config.signer.public_key
    payload = hello_signing_payload(config.mesh_id, config.member_id, pubkey, wall_time_ms)
    return Hello(
        mesh_id=config.mesh_id,
        member_id=config.member_id,
        pubkey=pubkey,
        session_id=config.session_id,
        pid=config.pid,
        cwd=config.cwd,
        timestamp=wall_time_ms,
        signature=config.signer.sign(payload).hex(),
        session_pubkey=config.session_pubkey,
        display_name=config.display_name,
        hostname=config.hostname,
        peer_type=config.peer_type,
        groups=config.groups,
    )


def _session_hello(config: ClientConfig, wall_time_ms: int, session: Signer) -> SessionHello:
    member_pubkey = config.signer.public_key
    session_pubkey = session.public_key
    expires_at = wall_time_ms + config.attestation_ttl_ms
    attestation = ParentAttestation(
        session_pubkey=session_pubkey,
        parent_member_pubkey=member_pubkey,
        expires_at=expires_at,
        signature=config.signer.sign(
            attestation_signing_payload(member_pubkey, session_pubkey, expires_at)
        ).hex(),
    )
    payload = session_hello_signing_payload(
        config.mesh_id, member_pubkey, session_pubkey, wall_time_ms
    )
    return SessionHello(
        mesh_id=config.mesh_id,
        parent_member_id=config.member_id,
        parent_member_pubkey=member_pubkey,
        session_pubkey=session_pubkey,
        parent_attestation=attestation,
        session_id=config.session_id,
        pid=config.pid,
        cwd=config.cwd,
        timestamp=wall_time_ms,
        signature=session.sign(payload).hex(),
        display_name=config.display_name,
        hostname=config.hostname,
        peer_type=config.peer_type,
        groups=config.groups,
        role=config.role,
    )
