//! The handshake: protocol version check and, with a shared secret, mutual HMAC
//! challenge-response authentication.
//!
//! ```text
//! connecting engine (client)                       accepting engine (server)
//!   Hello{version, engine_id, role}        ──►
//!                                           ◄──    Refused{reason, version}   version differs
//!                                           ◄──    Challenge{nonce_s}         server has a secret
//!   Proof{hmac(nonce_s, client)}           ──►
//!   Challenge{nonce_c}                     ──►
//!                                           ◄──    Refused{…}                 wrong proof
//!                                           ◄──    Proof{hmac(nonce_c, server)}
//!                                           ◄──    Welcome{version, engine_id}
//! ```
//!
//! Each side proves itself over a nonce the *other* side chose, so a recorded exchange cannot
//! be replayed; the proof also covers the prover's role and engine id, so a proof cannot be
//! reflected back to the side that asked for it. A client configured with a secret refuses a
//! server that does not challenge it (it might be an impostor that skips authentication).
//! The secret authenticates the peers; it does not encrypt the stream (TLS does that).
//!
//! Both functions expect the caller to bound them with a timeout.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};

use super::PROTOCOL_VERSION;
use super::frame::Compression;
use super::io::{read_message, write_message};
use super::message::{Message, Role};
use crate::error::WireError;

/// Nonce length in bytes.
pub const NONCE_BYTES: usize = 32;

/// A shared secret. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps the secret's bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// What one side brings to a handshake.
#[derive(Clone, Debug)]
pub struct HandshakeConfig {
    /// This engine's id.
    pub engine_id: String,
    /// This engine's role on the connection (the connecting side's is sent in `Hello`).
    pub role: Role,
    /// The shared secret, if authentication is configured.
    pub secret: Option<Secret>,
}

/// Who is on the other end, once the handshake succeeded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The peer's engine id.
    pub engine_id: String,
    /// The peer's protocol version.
    pub protocol_version: u32,
    /// The peer's role (as it announced it in `Hello`; for the client, the opposite of its own).
    pub role: Role,
    /// Whether the peer proved knowledge of the shared secret.
    pub authenticated: bool,
}

/// 32 bytes from the kernel's random source.
pub fn new_nonce() -> std::io::Result<[u8; NONCE_BYTES]> {
    let mut nonce = [0_u8; NONCE_BYTES];
    let mut filled = 0;
    while filled < nonce.len() {
        let got =
            rustix::rand::getrandom(&mut nonce[filled..], rustix::rand::GetRandomFlags::empty())?;
        filled += got;
    }
    Ok(nonce)
}

fn mac(secret: &Secret, nonce: &[u8], role: Role, engine_id: &str) -> Hmac<Sha256> {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(&secret.0).expect("HMAC takes keys of any length");
    // Domain separation and unambiguous framing of every field.
    mac.update(b"understudy-auth-v1\0");
    mac.update(match role {
        Role::Source => b"S",
        Role::Target => b"T",
    });
    mac.update(&(engine_id.len() as u64).to_be_bytes());
    mac.update(engine_id.as_bytes());
    mac.update(&(nonce.len() as u64).to_be_bytes());
    mac.update(nonce);
    mac
}

/// The proof that the engine `engine_id`, acting as `role`, knows `secret`, over `nonce`.
pub fn proof(secret: &Secret, nonce: &[u8], role: Role, engine_id: &str) -> Vec<u8> {
    mac(secret, nonce, role, engine_id).finalize().into_bytes().to_vec()
}

/// Checks a proof in constant time.
pub fn verify(secret: &Secret, nonce: &[u8], role: Role, engine_id: &str, hmac: &[u8]) -> bool {
    mac(secret, nonce, role, engine_id).verify_slice(hmac).is_ok()
}

fn opposite(role: Role) -> Role {
    match role {
        Role::Source => Role::Target,
        Role::Target => Role::Source,
    }
}

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, message: &Message) -> Result<(), WireError> {
    write_message(stream, message, Compression::None).await.map(|_| ())
}

/// Refuses the peer: tells it why, and returns the local error.
async fn refuse<S: AsyncWrite + Unpin>(
    stream: &mut S,
    reason: String,
    error: WireError,
) -> WireError {
    // The peer may already be gone; the local error is what matters.
    let _ = send(stream, &Message::Refused { reason, protocol_version: PROTOCOL_VERSION }).await;
    error
}

/// A `Refused` from the peer, worded from this side: a version mismatch as such.
fn refused(reason: String, peer_version: u32) -> WireError {
    if peer_version != 0 && peer_version != PROTOCOL_VERSION {
        WireError::VersionMismatch { ours: PROTOCOL_VERSION, peer: peer_version }
    } else {
        WireError::Refused { reason }
    }
}

/// The connecting side of the handshake.
pub async fn connect_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    config: &HandshakeConfig,
) -> Result<Peer, WireError> {
    let hello = Message::Hello {
        protocol_version: PROTOCOL_VERSION,
        engine_id: config.engine_id.clone(),
        role: config.role,
    };
    send(stream, &hello).await?;
    match read_message(stream).await? {
        Message::Refused { reason, protocol_version } => Err(refused(reason, protocol_version)),
        Message::Welcome { protocol_version, engine_id } => {
            if config.secret.is_some() {
                let e = WireError::AuthFailed {
                    reason: format!(
                        "engine {engine_id} accepted the connection without authenticating, but a \
                         shared secret is configured here: check the peer's configuration"
                    ),
                };
                return Err(refuse(stream, "authentication required".into(), e).await);
            }
            welcomed(stream, protocol_version, engine_id, config, false).await
        }
        Message::Challenge { nonce } => {
            let Some(secret) = &config.secret else {
                let e = WireError::AuthFailed {
                    reason: "the peer requires a shared secret and none is configured here".into(),
                };
                return Err(refuse(stream, e.to_string(), e).await);
            };
            if nonce.len() != NONCE_BYTES {
                let e = WireError::AuthFailed {
                    reason: "the peer's challenge has the wrong length".into(),
                };
                return Err(refuse(stream, e.to_string(), e).await);
            }
            let ours = new_nonce()?;
            let hmac = proof(secret, &nonce, config.role, &config.engine_id);
            send(stream, &Message::Proof { hmac }).await?;
            send(stream, &Message::Challenge { nonce: ours.to_vec() }).await?;
            let hmac = match read_message(stream).await? {
                Message::Proof { hmac } => hmac,
                Message::Refused { reason, protocol_version } => {
                    return Err(refused(reason, protocol_version));
                }
                other => {
                    return Err(WireError::Unexpected { expected: "Proof", got: other.kind() });
                }
            };
            // The proof covers the server's engine id, which arrives in Welcome.
            let (protocol_version, engine_id) = match read_message(stream).await? {
                Message::Welcome { protocol_version, engine_id } => (protocol_version, engine_id),
                Message::Refused { reason, protocol_version } => {
                    return Err(refused(reason, protocol_version));
                }
                other => {
                    return Err(WireError::Unexpected { expected: "Welcome", got: other.kind() });
                }
            };
            if !verify(secret, &ours, opposite(config.role), &engine_id, &hmac) {
                let e = WireError::AuthFailed {
                    reason: format!(
                        "engine {engine_id} did not prove knowledge of the shared secret"
                    ),
                };
                return Err(refuse(stream, "authentication failed: wrong proof".into(), e).await);
            }
            welcomed(stream, protocol_version, engine_id, config, true).await
        }
        other => Err(WireError::Unexpected {
            expected: "Welcome, Challenge or Refused",
            got: other.kind(),
        }),
    }
}

async fn welcomed<S: AsyncWrite + Unpin>(
    stream: &mut S,
    protocol_version: u32,
    engine_id: String,
    config: &HandshakeConfig,
    authenticated: bool,
) -> Result<Peer, WireError> {
    if protocol_version != PROTOCOL_VERSION {
        let e = WireError::VersionMismatch { ours: PROTOCOL_VERSION, peer: protocol_version };
        return Err(refuse(stream, e.to_string(), e).await);
    }
    Ok(Peer { engine_id, protocol_version, role: opposite(config.role), authenticated })
}

/// The accepting side of the handshake.
pub async fn accept_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    config: &HandshakeConfig,
) -> Result<Peer, WireError> {
    let (protocol_version, engine_id, role) = match read_message(stream).await? {
        Message::Hello { protocol_version, engine_id, role } => (protocol_version, engine_id, role),
        other => {
            let e = WireError::Unexpected { expected: "Hello", got: other.kind() };
            return Err(refuse(stream, e.to_string(), e).await);
        }
    };
    if protocol_version != PROTOCOL_VERSION {
        let e = WireError::VersionMismatch { ours: PROTOCOL_VERSION, peer: protocol_version };
        return Err(refuse(stream, e.to_string(), e).await);
    }
    let mut authenticated = false;
    if let Some(secret) = &config.secret {
        let nonce = new_nonce()?;
        send(stream, &Message::Challenge { nonce: nonce.to_vec() }).await?;
        let hmac = match read_message(stream).await? {
            Message::Proof { hmac } => hmac,
            Message::Refused { reason, protocol_version } => {
                return Err(refused(reason, protocol_version));
            }
            other => return Err(WireError::Unexpected { expected: "Proof", got: other.kind() }),
        };
        if !verify(secret, &nonce, role, &engine_id, &hmac) {
            let e = WireError::AuthFailed {
                reason: format!("engine {engine_id} did not prove knowledge of the shared secret"),
            };
            return Err(refuse(
                stream,
                "authentication failed: wrong proof; check the shared secret".into(),
                e,
            )
            .await);
        }
        let their_nonce = match read_message(stream).await? {
            Message::Challenge { nonce } if nonce.len() == NONCE_BYTES => nonce,
            Message::Challenge { .. } => {
                let e = WireError::AuthFailed {
                    reason: "the peer's challenge has the wrong length".into(),
                };
                return Err(refuse(stream, e.to_string(), e).await);
            }
            other => {
                return Err(WireError::Unexpected { expected: "Challenge", got: other.kind() });
            }
        };
        send(
            stream,
            &Message::Proof { hmac: proof(secret, &their_nonce, config.role, &config.engine_id) },
        )
        .await?;
        authenticated = true;
    }
    send(
        stream,
        &Message::Welcome {
            protocol_version: PROTOCOL_VERSION,
            engine_id: config.engine_id.clone(),
        },
    )
    .await?;
    Ok(Peer { engine_id, protocol_version, role, authenticated })
}
