//! The cluster handshake: the first frames on every connection, after TLS if enabled.
//!
//! ```text
//! client → server  Handshake           "MRDN" | version u16 | cluster id | node id | flags u8 | client nonce [32]
//! server → client  HandshakeAck        "MRDN" | version u16 | server node id
//!               or HandshakeReject     reason u8 | message (UTF-8), then close
//! With a cluster secret (flags bit 0 set by the client, required by the server):
//! server → client  HandshakeChallenge  "MRDN" | version u16 | server node id | server nonce [32] | server proof [32]
//! client → server  HandshakeProof      client proof [32]
//! server → client  HandshakeAck / HandshakeReject, as above
//! ```
//! Strings are a u16 BE length and UTF-8 bytes. Handshake frames are limited to
//! [`HANDSHAKE_MAX_BYTES`], so an unauthenticated peer cannot make the node buffer more.
//! Proofs are HMAC-SHA256 over both nonces, the cluster id and the prover's node id, with a
//! label per direction (see `secret`); the server proves first, so a client never proves
//! anything to an impostor.
//!
//! The server refuses ([`RejectReason`]) a frame that is not a handshake, a wrong magic, a
//! different protocol version, a different cluster id, — when it verifies client
//! certificates — a node id that is not a DNS name in the client's certificate, and a client
//! that is not one of the peers its [`Admission`](super::Admission) lists or that fails the
//! secret (`NotAPeer`). The client checks that the server is the node it meant to reach: the
//! acknowledged node id must be the peer id it dialled and, with TLS, a name in the server's
//! certificate; and with a secret, that the server proved it. Either way a node holding a
//! valid certificate cannot pose as another node.

use std::fmt;
use std::net::IpAddr;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rustls_pki_types::CertificateDer;

use super::admission::Gate;
use super::connection::{ReadError, StreamReader, StreamWriter};
use super::frame::{Frame, FrameError, FrameKind};
use super::secret::{self, Nonce, Side, Transcript, NONCE_BYTES, PROOF_BYTES};
use super::tls::certificate_names;
use super::{NodeId, TransportConfig};

pub const MAGIC: [u8; 4] = *b"MRDN";
/// Bumped on any incompatible change to frames or handshake; peers must match exactly.
/// 2: client nonce and flags in the handshake, the secret's challenge and proof.
pub const PROTOCOL_VERSION: u16 = 2;
/// Handshake flag: the client holds a cluster secret and expects a challenge.
const FLAG_SECRET: u8 = 1;
/// Limit on frames before the handshake completes.
pub const HANDSHAKE_MAX_BYTES: usize = 4096;

/// Why a handshake failed; also the `reason` label of the handshake-failure metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The TLS handshake failed: untrusted or expired certificate, none given, version refused,
    /// plaintext on a TLS port.
    Tls,
    /// Not a handshake frame, wrong magic, malformed fields, or a frame that does not parse.
    BadFrame,
    BadVersion,
    WrongCluster,
    /// The claimed node id is not in the peer's certificate, or the server is another node.
    IdentityMismatch,
    /// The handshake did not complete within the connect timeout.
    Timeout,
    /// The connection failed or closed during the handshake.
    Io,
    /// Not a configured peer: source address, certificate or cluster secret (the message says
    /// which).
    NotAPeer,
    /// Refused at accept, before any handshake: too many handshakes pending from that source
    /// or in all. Never sent; the connection is just closed.
    Busy,
}

impl RejectReason {
    pub fn label(self) -> &'static str {
        match self {
            RejectReason::Tls => "tls",
            RejectReason::BadFrame => "bad_frame",
            RejectReason::BadVersion => "bad_version",
            RejectReason::WrongCluster => "wrong_cluster",
            RejectReason::IdentityMismatch => "identity_mismatch",
            RejectReason::Timeout => "timeout",
            RejectReason::Io => "io",
            RejectReason::NotAPeer => "not_a_peer",
            RejectReason::Busy => "busy",
        }
    }

    fn code(self) -> u8 {
        match self {
            RejectReason::Tls => 1,
            RejectReason::BadFrame => 2,
            RejectReason::BadVersion => 3,
            RejectReason::WrongCluster => 4,
            RejectReason::IdentityMismatch => 5,
            RejectReason::Timeout => 6,
            RejectReason::Io => 7,
            RejectReason::NotAPeer => 8,
            RejectReason::Busy => 9,
        }
    }

    fn from_code(c: u8) -> RejectReason {
        match c {
            1 => RejectReason::Tls,
            3 => RejectReason::BadVersion,
            4 => RejectReason::WrongCluster,
            5 => RejectReason::IdentityMismatch,
            6 => RejectReason::Timeout,
            7 => RejectReason::Io,
            8 => RejectReason::NotAPeer,
            9 => RejectReason::Busy,
            _ => RejectReason::BadFrame,
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A failed handshake, as seen by the side that dialled.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("refused by the peer ({reason}): {message}")]
    Rejected { reason: RejectReason, message: String },
    #[error("dialled node {expected} but the peer says it is {actual}")]
    WrongNode { expected: NodeId, actual: NodeId },
    #[error("the peer's certificate does not name node {node}")]
    CertificateMismatch { node: NodeId },
    /// The server did not prove the cluster secret (or wants one this node does not have).
    #[error("cluster secret: {0}")]
    Secret(String),
    #[error("malformed handshake: {0}")]
    Malformed(String),
    #[error("connection failed during the handshake: {0}")]
    Io(String),
}

impl HandshakeError {
    pub fn reason(&self) -> RejectReason {
        match self {
            HandshakeError::Rejected { reason, .. } => *reason,
            HandshakeError::WrongNode { .. } | HandshakeError::CertificateMismatch { .. } => {
                RejectReason::IdentityMismatch
            }
            HandshakeError::Secret(_) => RejectReason::NotAPeer,
            HandshakeError::Malformed(_) => RejectReason::BadFrame,
            HandshakeError::Io(_) => RejectReason::Io,
        }
    }
}

/// The client's opening message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub cluster_id: String,
    pub node_id: NodeId,
    /// The client holds a cluster secret: the server must prove it first, then the client.
    pub secret: bool,
    /// Fresh per connection; both proofs cover it.
    pub nonce: Nonce,
}

impl Hello {
    /// A hello without a secret, with a fresh nonce.
    pub fn new(cluster_id: impl Into<String>, node_id: impl Into<NodeId>) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            cluster_id: cluster_id.into(),
            node_id: node_id.into(),
            secret: false,
            nonce: secret::nonce(),
        }
    }

    pub fn to_frame(&self) -> Frame {
        let mut b = BytesMut::new();
        b.put_slice(&MAGIC);
        b.put_u16(self.version);
        put_str(&mut b, &self.cluster_id);
        put_str(&mut b, &self.node_id);
        b.put_u8(if self.secret { FLAG_SECRET } else { 0 });
        b.put_slice(&self.nonce);
        Frame::new(FrameKind::Handshake, 0, 0, b.freeze())
    }

    /// Decodes the payload of a `Handshake` frame. The version is returned as sent so the
    /// caller can refuse it with the right reason.
    pub(crate) fn decode(mut b: Bytes) -> Result<Hello, (RejectReason, String)> {
        check_magic(&mut b)?;
        let version = get_u16(&mut b)?;
        if version != PROTOCOL_VERSION {
            let (cluster_id, node_id) = (String::new(), String::new());
            return Ok(Hello { version, cluster_id, node_id, secret: false, nonce: [0; NONCE_BYTES] });
        }
        let cluster_id = get_str(&mut b)?;
        let node_id = get_str(&mut b)?;
        let flags = get_u8(&mut b)?;
        let nonce = get_array(&mut b)?;
        Ok(Hello { version, cluster_id, node_id, secret: flags & FLAG_SECRET != 0, nonce })
    }
}

/// The server's half of the secret exchange: who it is, its nonce, its proof.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub node_id: NodeId,
    pub nonce: Nonce,
    pub proof: [u8; PROOF_BYTES],
}

impl Challenge {
    pub fn to_frame(&self) -> Frame {
        let mut b = BytesMut::new();
        b.put_slice(&MAGIC);
        b.put_u16(PROTOCOL_VERSION);
        put_str(&mut b, &self.node_id);
        b.put_slice(&self.nonce);
        b.put_slice(&self.proof);
        Frame::new(FrameKind::HandshakeChallenge, 0, 0, b.freeze())
    }

    pub fn decode(mut b: Bytes) -> Result<Challenge, String> {
        let mut parse = || -> Result<Challenge, (RejectReason, String)> {
            check_magic(&mut b)?;
            if get_u16(&mut b)? != PROTOCOL_VERSION {
                return Err(malformed("challenge of another protocol version"));
            }
            Ok(Challenge { node_id: get_str(&mut b)?, nonce: get_array(&mut b)?, proof: get_array(&mut b)? })
        };
        parse().map_err(|(_, m)| m)
    }
}

/// The client's proof, the answer to a [`Challenge`].
pub fn proof_frame(proof: &[u8; PROOF_BYTES]) -> Frame {
    Frame::new(FrameKind::HandshakeProof, 0, 0, Bytes::copy_from_slice(proof))
}

fn put_str(b: &mut BytesMut, s: &str) {
    // Ids are validated to 255 bytes at start-up; the cut only guards the encoding.
    let s = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    b.put_u16(s.len() as u16);
    b.put_slice(s);
}

fn malformed(what: &str) -> (RejectReason, String) {
    (RejectReason::BadFrame, format!("malformed handshake: {what}"))
}

fn check_magic(b: &mut Bytes) -> Result<(), (RejectReason, String)> {
    if b.len() < MAGIC.len() || b[..MAGIC.len()] != MAGIC {
        return Err((RejectReason::BadFrame, "not a Meridian cluster handshake (bad magic)".into()));
    }
    b.advance(MAGIC.len());
    Ok(())
}

fn get_u16(b: &mut Bytes) -> Result<u16, (RejectReason, String)> {
    if b.len() < 2 {
        return Err(malformed("truncated"));
    }
    Ok(b.get_u16())
}

fn get_u8(b: &mut Bytes) -> Result<u8, (RejectReason, String)> {
    if b.is_empty() {
        return Err(malformed("truncated"));
    }
    Ok(b.get_u8())
}

fn get_array<const N: usize>(b: &mut Bytes) -> Result<[u8; N], (RejectReason, String)> {
    if b.len() < N {
        return Err(malformed("truncated"));
    }
    let mut out = [0u8; N];
    b.copy_to_slice(&mut out);
    Ok(out)
}

fn get_str(b: &mut Bytes) -> Result<String, (RejectReason, String)> {
    let n = get_u16(b)? as usize;
    if b.len() < n {
        return Err(malformed("truncated string"));
    }
    String::from_utf8(b.split_to(n).to_vec()).map_err(|_| malformed("string is not UTF-8"))
}

fn ack_frame(node_id: &str) -> Frame {
    let mut b = BytesMut::new();
    b.put_slice(&MAGIC);
    b.put_u16(PROTOCOL_VERSION);
    put_str(&mut b, node_id);
    Frame::new(FrameKind::HandshakeAck, 0, 0, b.freeze())
}

pub(crate) fn reject_frame(reason: RejectReason, message: &str) -> Frame {
    let mut b = BytesMut::new();
    b.put_u8(reason.code());
    b.put_slice(message.as_bytes());
    Frame::new(FrameKind::HandshakeReject, 0, 0, b.freeze())
}

/// A refused incoming handshake: why, for the metric and the log.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub reason: RejectReason,
    pub message: String,
    /// The node id the peer claimed, when it got that far.
    pub claimed: Option<NodeId>,
    /// The first bytes were a TLS handshake record (0x16 0x03), read as a frame length.
    pub looks_like_tls: bool,
}

impl Refusal {
    pub fn new(reason: RejectReason, message: impl Into<String>) -> Refusal {
        Refusal { reason, message: message.into(), claimed: None, looks_like_tls: false }
    }

    pub fn from_read(e: ReadError) -> Refusal {
        match e {
            ReadError::Frame(FrameError::TooLarge { length, max }) => Refusal {
                looks_like_tls: length >> 16 == 0x1603,
                ..Refusal::new(RejectReason::BadFrame, FrameError::TooLarge { length, max }.to_string())
            },
            ReadError::Frame(f) => Refusal::new(RejectReason::BadFrame, f.to_string()),
            ReadError::Idle(_) => Refusal::new(RejectReason::Timeout, e.to_string()),
            ReadError::Truncated(_) => Refusal::new(RejectReason::BadFrame, e.to_string()),
            ReadError::Io(_) => match e.tls_cause() {
                Some(t) => Refusal::new(RejectReason::Tls, t),
                None => Refusal::new(RejectReason::Io, e.to_string()),
            },
        }
    }
}

/// An admitted connection: the name its traffic carries (see [`Gate::admit`]) and the node
/// id the client claimed (for logs).
#[derive(Debug)]
pub(crate) struct Admitted {
    pub label: String,
    pub claimed: NodeId,
}

/// Server side: reads the client's handshake, checks it and the admission policy, runs the
/// secret exchange when configured, and answers. `client_cert` is the client's end-entity
/// certificate when the server verified one; with it, the claimed id must be named by the
/// certificate. On refusal a `HandshakeReject` is sent (best effort) before returning.
pub(crate) async fn accept(
    reader: &mut StreamReader,
    writer: &mut StreamWriter,
    cfg: &TransportConfig,
    gate: &Gate,
    remote: IpAddr,
    client_cert: Option<&CertificateDer<'static>>,
) -> Result<Admitted, Refusal> {
    let result = check_client(reader, writer, cfg, gate, remote, client_cert).await;
    let reply = match &result {
        Ok(_) => ack_frame(&cfg.node_id),
        // Nothing can reach the peer when the connection itself failed.
        Err(r) if matches!(r.reason, RejectReason::Io | RejectReason::Tls) => return result,
        Err(r) => reject_frame(r.reason, &r.message),
    };
    let sent = async {
        writer.write_frame(&reply).await?;
        writer.flush().await
    }
    .await;
    match (result, sent) {
        (Ok(admitted), Ok(())) => Ok(admitted),
        (Ok(admitted), Err(e)) => Err(Refusal {
            claimed: Some(admitted.claimed),
            ..Refusal::new(RejectReason::Io, format!("sending the handshake reply: {e}"))
        }),
        (Err(r), _) => {
            let _ = writer.shutdown().await;
            Err(r)
        }
    }
}

/// The frame the server waits for next, within the connect timeout.
async fn next_frame(reader: &mut StreamReader, cfg: &TransportConfig, what: &str) -> Result<Frame, Refusal> {
    match reader.read_frame(cfg.connect_timeout).await {
        Ok(Some(f)) => Ok(f),
        Ok(None) => Err(Refusal::new(RejectReason::Io, format!("connection closed before the {what}"))),
        Err(e) => Err(Refusal::from_read(e)),
    }
}

async fn check_client(
    reader: &mut StreamReader,
    writer: &mut StreamWriter,
    cfg: &TransportConfig,
    gate: &Gate,
    remote: IpAddr,
    client_cert: Option<&CertificateDer<'static>>,
) -> Result<Admitted, Refusal> {
    let frame = next_frame(reader, cfg, "handshake").await?;
    if frame.kind != FrameKind::Handshake {
        return Err(Refusal::new(
            RejectReason::BadFrame,
            format!("expected a handshake, got a {:?} frame", frame.kind),
        ));
    }
    let hello = Hello::decode(frame.payload).map_err(|(reason, message)| Refusal::new(reason, message))?;
    let refuse =
        |reason, message: String| Refusal { claimed: Some(hello.node_id.clone()), ..Refusal::new(reason, message) };
    if hello.version != PROTOCOL_VERSION {
        return Err(refuse(
            RejectReason::BadVersion,
            format!("protocol version {} is not supported (this node speaks {PROTOCOL_VERSION})", hello.version),
        ));
    }
    if hello.cluster_id != cfg.cluster_id {
        return Err(refuse(RejectReason::WrongCluster, format!("wrong cluster id {:?}", hello.cluster_id)));
    }
    if hello.node_id.is_empty() {
        return Err(refuse(RejectReason::BadFrame, "empty node id".into()));
    }
    if let Some(cert) = client_cert {
        if !certificate_names(cert, &hello.node_id) {
            return Err(refuse(
                RejectReason::IdentityMismatch,
                format!("node id {:?} is not a name in the client certificate", hello.node_id),
            ));
        }
    }
    // Admission before the secret exchange: a non-peer gets no proof from this node.
    let label =
        gate.admit(remote, client_cert, &hello.node_id).map_err(|e| refuse(RejectReason::NotAPeer, e.to_string()))?;
    match (&cfg.secret, hello.secret) {
        (None, false) => {}
        (None, true) => {
            return Err(refuse(
                RejectReason::NotAPeer,
                "the client uses a cluster secret and this node has none: set the same MERIDIAN_CLUSTER_SECRET on every node".into(),
            ))
        }
        (Some(_), false) => {
            return Err(refuse(RejectReason::NotAPeer, "this node requires the cluster secret (MERIDIAN_CLUSTER_SECRET)".into()))
        }
        (Some(key), true) => {
            let server_nonce = secret::nonce();
            let t = Transcript { cluster_id: &cfg.cluster_id, client_nonce: &hello.nonce, server_nonce: &server_nonce };
            let challenge =
                Challenge { node_id: cfg.node_id.clone(), nonce: server_nonce, proof: key.prove(Side::Server, &t, &cfg.node_id) };
            let sent = async {
                writer.write_frame(&challenge.to_frame()).await?;
                writer.flush().await
            };
            sent.await.map_err(|e| refuse(RejectReason::Io, format!("sending the challenge: {e}")))?;
            let frame = next_frame(reader, cfg, "secret proof").await.map_err(|mut r| {
                if r.reason == RejectReason::Io {
                    // A client that cannot verify our proof hangs up: its secret differs.
                    r.reason = RejectReason::NotAPeer;
                    r.message = format!("{}: the client did not prove the cluster secret (a different MERIDIAN_CLUSTER_SECRET?)", r.message);
                }
                Refusal { claimed: Some(hello.node_id.clone()), ..r }
            })?;
            if frame.kind != FrameKind::HandshakeProof {
                return Err(refuse(RejectReason::BadFrame, format!("expected the secret proof, got a {:?} frame", frame.kind)));
            }
            if !key.verify(Side::Client, &t, &hello.node_id, &frame.payload) {
                return Err(refuse(RejectReason::NotAPeer, "wrong cluster secret".into()));
            }
        }
    }
    Ok(Admitted { label, claimed: hello.node_id })
}

/// Client side: sends our handshake and checks the answer. With `expected`, the server must
/// be that node; without it (a peer known only by address), any node of the cluster is
/// accepted. `server_cert` is the server's end-entity certificate under TLS; it must name
/// the node the server claims to be, so an alias never weakens the identity check. With a
/// secret, the server must prove it before this node proves it in turn.
pub(crate) async fn initiate(
    reader: &mut StreamReader,
    writer: &mut StreamWriter,
    cfg: &TransportConfig,
    expected: Option<&NodeId>,
    server_cert: Option<&CertificateDer<'static>>,
) -> Result<(), InitiateError> {
    let io = |e: std::io::Error| match super::connection::tls_cause(&e) {
        Some(t) => InitiateError::Tls(t),
        None => InitiateError::Handshake(HandshakeError::Io(e.to_string())),
    };
    let hello = Hello { secret: cfg.secret.is_some(), ..Hello::new(&cfg.cluster_id, &cfg.node_id) };
    writer.write_frame(&hello.to_frame()).await.map_err(io)?;
    writer.flush().await.map_err(io)?;

    let check_server = |node: &NodeId| -> Result<(), HandshakeError> {
        if let Some(expected) = expected {
            if node != expected {
                return Err(HandshakeError::WrongNode { expected: expected.clone(), actual: node.clone() });
            }
        }
        if let Some(cert) = server_cert {
            if !certificate_names(cert, node) {
                return Err(HandshakeError::CertificateMismatch { node: node.clone() });
            }
        }
        Ok(())
    };
    let mut proven: Option<NodeId> = None;
    loop {
        let frame = read_reply(reader, cfg).await?;
        let mut b = frame.payload;
        match frame.kind {
            FrameKind::HandshakeAck => {
                let parse = |b: &mut Bytes| -> Result<(u16, String), (RejectReason, String)> {
                    check_magic(b)?;
                    let v = get_u16(b)?;
                    Ok((v, get_str(b)?))
                };
                let (version, node) = parse(&mut b).map_err(|(_, m)| HandshakeError::Malformed(m))?;
                if version != PROTOCOL_VERSION {
                    return Err(HandshakeError::Malformed(format!("server acknowledged protocol version {version}")).into());
                }
                check_server(&node)?;
                match (&cfg.secret, proven) {
                    (Some(_), None) => {
                        return Err(HandshakeError::Secret(
                            "the peer accepted without proving the cluster secret (it has no MERIDIAN_CLUSTER_SECRET)".into(),
                        )
                        .into())
                    }
                    (_, Some(p)) if p != node => {
                        return Err(HandshakeError::Malformed(format!("challenged as {p}, acknowledged as {node}")).into())
                    }
                    _ => return Ok(()),
                }
            }
            FrameKind::HandshakeChallenge if proven.is_none() => {
                let Some(key) = &cfg.secret else {
                    return Err(HandshakeError::Secret("the peer requires a cluster secret and this node has none (MERIDIAN_CLUSTER_SECRET)".into()).into());
                };
                let c = Challenge::decode(b).map_err(HandshakeError::Malformed)?;
                check_server(&c.node_id)?;
                let t = Transcript { cluster_id: &cfg.cluster_id, client_nonce: &hello.nonce, server_nonce: &c.nonce };
                if !key.verify(Side::Server, &t, &c.node_id, &c.proof) {
                    return Err(HandshakeError::Secret("the peer does not know the cluster secret (a different MERIDIAN_CLUSTER_SECRET?)".into()).into());
                }
                writer.write_frame(&proof_frame(&key.prove(Side::Client, &t, &cfg.node_id))).await.map_err(io)?;
                writer.flush().await.map_err(io)?;
                proven = Some(c.node_id);
            }
            FrameKind::HandshakeReject if !b.is_empty() => {
                let reason = RejectReason::from_code(b.get_u8());
                return Err(HandshakeError::Rejected { reason, message: String::from_utf8_lossy(&b).into_owned() }.into());
            }
            other => {
                return Err(HandshakeError::Malformed(format!("expected a handshake reply, got a {other:?} frame")).into())
            }
        }
    }
}

async fn read_reply(reader: &mut StreamReader, cfg: &TransportConfig) -> Result<Frame, InitiateError> {
    match reader.read_frame(cfg.connect_timeout).await {
        Ok(Some(f)) => Ok(f),
        Ok(None) => Err(HandshakeError::Io("the peer closed the connection".into()).into()),
        Err(ReadError::Frame(e)) => Err(HandshakeError::Malformed(e.to_string()).into()),
        Err(e) => Err(match e.tls_cause() {
            Some(t) => InitiateError::Tls(t),
            None => HandshakeError::Io(e.to_string()).into(),
        }),
    }
}

/// What can end a client handshake: TLS alerts surface only when the first frames are
/// exchanged (with TLS 1.3 the server checks the client certificate after the client has
/// finished its part), so they are told apart here.
#[derive(Debug)]
pub(crate) enum InitiateError {
    Tls(String),
    Handshake(HandshakeError),
}

impl From<HandshakeError> for InitiateError {
    fn from(e: HandshakeError) -> Self {
        InitiateError::Handshake(e)
    }
}
