//! The frame codec: how a frame looks on the wire, and the parser that turns bytes into one.
//!
//! ```text
//! +---------------+---------+--------------+-----------------+--------------------+
//! | length        | kind    | msg_type     | request_id      | payload            |
//! | u32 BE        | u8      | u16 BE       | u64 BE          | length - 11 bytes  |
//! +---------------+---------+--------------+-----------------+--------------------+
//!  `length` counts everything after itself: the 11-byte header plus the payload.
//! ```
//!
//! - `kind` says what the frame is for ([`FrameKind`]); an unknown value is a protocol error.
//! - `msg_type` is the application's message type (Raft vote, WAL batch, …); the transport
//!   never interprets it. Zero for transport-internal frames (handshake, ping).
//! - `request_id` pairs a `Response`/`ErrorResponse` with its `Request`; a `Pong` echoes
//!   the `Ping`'s id (the sender puts a timestamp there to measure round trips).
//!
//! [`Frame::parse`] checks the length against the limit before it waits for or buffers the
//! body, so a peer announcing a 4 GiB frame costs four bytes of memory, not four gigabytes.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes of the length prefix.
pub const LENGTH_BYTES: usize = 4;
/// Bytes of the header after the length prefix: kind, msg_type, request_id.
pub const HEADER_BYTES: usize = 1 + 2 + 8;

/// What a frame is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// Client → server, first frame on a connection: magic, version, cluster id, node id.
    Handshake = 1,
    /// Server → client: handshake accepted; carries the server's node id.
    HandshakeAck = 2,
    /// Server → client: handshake refused; carries a reason code and a message. The server
    /// closes the connection after it.
    HandshakeReject = 3,
    /// Expects exactly one `Response` or `ErrorResponse` with the same `request_id`.
    Request = 4,
    Response = 5,
    /// The handler failed; the payload is an encoded [`RemoteError`](super::RemoteError).
    ErrorResponse = 6,
    /// No reply; delivered to the handler in the order sent on this connection.
    OneWay = 7,
    /// Keep-alive; answered by a `Pong` with the same `request_id`.
    Ping = 8,
    Pong = 9,
    /// Server → client, with a cluster secret: the server's nonce and its proof.
    HandshakeChallenge = 10,
    /// Client → server, after a challenge: the client's proof.
    HandshakeProof = 11,
}

impl FrameKind {
    pub fn from_u8(v: u8) -> Option<FrameKind> {
        Some(match v {
            1 => FrameKind::Handshake,
            2 => FrameKind::HandshakeAck,
            3 => FrameKind::HandshakeReject,
            4 => FrameKind::Request,
            5 => FrameKind::Response,
            6 => FrameKind::ErrorResponse,
            7 => FrameKind::OneWay,
            8 => FrameKind::Ping,
            9 => FrameKind::Pong,
            10 => FrameKind::HandshakeChallenge,
            11 => FrameKind::HandshakeProof,
            _ => return None,
        })
    }
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub msg_type: u16,
    pub request_id: u64,
    pub payload: Bytes,
}

/// Why bytes could not be decoded into a frame. Each one ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame length {length} exceeds the limit of {max} bytes")]
    TooLarge { length: u64, max: usize },
    #[error("frame length {length} is shorter than the {HEADER_BYTES}-byte header")]
    TooShort { length: u32 },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
}

impl Frame {
    pub fn new(kind: FrameKind, msg_type: u16, request_id: u64, payload: Bytes) -> Frame {
        Frame { kind, msg_type, request_id, payload }
    }

    /// The value of the length prefix for this frame (header plus payload).
    pub fn body_len(&self) -> usize {
        HEADER_BYTES + self.payload.len()
    }

    /// Bytes this frame takes on the wire, length prefix included.
    pub fn wire_len(&self) -> usize {
        LENGTH_BYTES + self.body_len()
    }

    /// The length prefix and header; the payload follows them on the wire. Kept apart so a
    /// large payload is written from its own buffer rather than copied.
    ///
    /// The caller checks the size against the limit first ([`check_size`]); a body over
    /// `u32::MAX` cannot be framed at all.
    pub fn encode_header(&self) -> [u8; LENGTH_BYTES + HEADER_BYTES] {
        let mut out = [0u8; LENGTH_BYTES + HEADER_BYTES];
        let len = u32::try_from(self.body_len()).expect("frame size checked against the limit before encoding");
        out[0..4].copy_from_slice(&len.to_be_bytes());
        out[4] = self.kind as u8;
        out[5..7].copy_from_slice(&self.msg_type.to_be_bytes());
        out[7..15].copy_from_slice(&self.request_id.to_be_bytes());
        out
    }

    /// Appends the whole frame to `dst` (tests and tools; connections write header and
    /// payload separately).
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(self.wire_len());
        dst.put_slice(&self.encode_header());
        dst.put_slice(&self.payload);
    }

    /// Decodes one frame from the front of `src`, removing its bytes.
    ///
    /// `Ok(None)`: not yet a whole frame; nothing is consumed.
    /// `Err`: the stream is not a valid frame sequence; the connection must be closed.
    pub fn parse(src: &mut BytesMut, max_frame_bytes: usize) -> Result<Option<Frame>, FrameError> {
        if src.len() < LENGTH_BYTES {
            return Ok(None);
        }
        let length = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
        // Size checks come before anything waits for or reserves the body.
        if length as u64 > max_frame_bytes as u64 {
            return Err(FrameError::TooLarge { length: length as u64, max: max_frame_bytes });
        }
        if (length as usize) < HEADER_BYTES {
            return Err(FrameError::TooShort { length });
        }
        // The kind is checked as soon as it arrives, so a bad frame is refused without
        // waiting for a body that may never come.
        if src.len() > LENGTH_BYTES && FrameKind::from_u8(src[LENGTH_BYTES]).is_none() {
            return Err(FrameError::UnknownKind(src[LENGTH_BYTES]));
        }
        let total = LENGTH_BYTES + length as usize;
        if src.len() < total {
            return Ok(None);
        }
        src.advance(LENGTH_BYTES);
        let mut body = src.split_to(length as usize);
        let kind_byte = body.get_u8();
        let kind = FrameKind::from_u8(kind_byte).ok_or(FrameError::UnknownKind(kind_byte))?;
        let msg_type = body.get_u16();
        let request_id = body.get_u64();
        Ok(Some(Frame { kind, msg_type, request_id, payload: body.freeze() }))
    }
}

/// Refuses a payload that would make a frame larger than `max_frame_bytes` (the same limit
/// the receiver enforces), so the sender fails the call instead of the receiver dropping
/// the connection.
pub fn check_size(payload_len: usize, max_frame_bytes: usize) -> Result<(), FrameError> {
    let body = HEADER_BYTES as u64 + payload_len as u64;
    if body > max_frame_bytes as u64 || body > u32::MAX as u64 {
        return Err(FrameError::TooLarge { length: body, max: max_frame_bytes });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trips() {
        let f = Frame::new(FrameKind::Request, 7, 42, Bytes::from_static(b"hello"));
        let mut buf = BytesMut::new();
        f.encode(&mut buf);
        f.encode(&mut buf);
        assert_eq!(buf.len(), 2 * f.wire_len());
        assert_eq!(Frame::parse(&mut buf, 1024).unwrap(), Some(f.clone()));
        assert_eq!(Frame::parse(&mut buf, 1024).unwrap(), Some(f));
        assert_eq!(Frame::parse(&mut buf, 1024).unwrap(), None);
    }

    #[test]
    fn huge_length_is_refused_before_the_body_arrives() {
        let mut buf = BytesMut::from(&[0xFF, 0xFF, 0xFF, 0xFF][..]);
        let cap = buf.capacity();
        assert_eq!(
            Frame::parse(&mut buf, 64 << 20),
            Err(FrameError::TooLarge { length: u32::MAX as u64, max: 64 << 20 })
        );
        assert_eq!(buf.capacity(), cap);
    }

    #[test]
    fn partial_frame_waits_and_unknown_kind_is_refused_early() {
        let f = Frame::new(FrameKind::OneWay, 1, 0, Bytes::from_static(b"abc"));
        let mut whole = BytesMut::new();
        f.encode(&mut whole);
        let mut part = BytesMut::from(&whole[..whole.len() - 1]);
        assert_eq!(Frame::parse(&mut part, 1024).unwrap(), None);
        assert_eq!(part.len(), whole.len() - 1);

        let mut bad = BytesMut::from(&[0, 0, 0, 20, 200][..]);
        assert_eq!(Frame::parse(&mut bad, 1024), Err(FrameError::UnknownKind(200)));
        let mut short = BytesMut::from(&[0, 0, 0, 3, 1, 0, 0][..]);
        assert_eq!(Frame::parse(&mut short, 1024), Err(FrameError::TooShort { length: 3 }));
    }
}
