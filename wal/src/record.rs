//! Record framing: the one place that knows how a [`Record`] is laid out on disk.
//!
//! ```text
//! offset size field
//!      0    4 crc      u32 LE, CRC-32/ISO-HDLC (crc32fast) over bytes [4, frame_len)
//!      4    4 len      u32 LE, payload bytes (not counting padding); > MAX_RECORD_BYTES is invalid
//!      8    1 type     1 = Entry (the only type written today)
//!      9    1 flags    0
//!     10    6 reserved 0
//!     16    8 index    u64 LE, log index; +1 per record, across segments
//!     24    8 epoch    u64 LE, HA epoch or Raft term of the writer
//!     32  len payload
//!  32+len  0-7 padding zeros up to the next multiple of 8
//! ```
//!
//! The checksum covers the length, so a torn length word fails it, and it covers
//! the padding, so no bit of a frame can flip unnoticed. The checksum of 28 zero
//! bytes is not zero, so a zero-filled header never validates: a run of zeros is
//! "end of data" to recovery, never an empty record.

use std::fmt;

/// Bytes before the payload in every frame.
pub const RECORD_HEADER_BYTES: usize = 32;
/// Largest payload one record may carry (64 MiB). A larger length on disk is
/// treated as a torn or corrupt length word.
pub const MAX_RECORD_BYTES: usize = 64 << 20;

const ALIGN: usize = 8;
const TYPE_ENTRY: u8 = 1;

/// One log entry as the caller sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Log index (LSN). Contiguous: each record is the previous one + 1.
    pub index: u64,
    /// HA epoch or Raft term of the node that wrote the record.
    pub epoch: u64,
    /// Opaque to the WAL.
    pub payload: Vec<u8>,
}

/// Bytes a record with `payload_len` bytes occupies on disk.
pub(crate) fn frame_len(payload_len: usize) -> usize {
    RECORD_HEADER_BYTES + payload_len.div_ceil(ALIGN) * ALIGN
}

/// Appends the frame for `record` to `buf`. The caller has checked the size limit.
pub(crate) fn encode(buf: &mut Vec<u8>, record: &Record) {
    debug_assert!(record.payload.len() <= MAX_RECORD_BYTES);
    let start = buf.len();
    let len = record.payload.len();
    buf.extend_from_slice(&[0; 4]); // crc, filled in below
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.push(TYPE_ENTRY);
    buf.extend_from_slice(&[0; 7]); // flags + reserved
    buf.extend_from_slice(&record.index.to_le_bytes());
    buf.extend_from_slice(&record.epoch.to_le_bytes());
    buf.extend_from_slice(&record.payload);
    buf.resize(start + frame_len(len), 0);
    let crc = crc32fast::hash(&buf[start + 4..]);
    buf[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// A frame that passed every check, borrowed from the segment bytes.
#[derive(Debug)]
pub(crate) struct Frame<'a> {
    pub index: u64,
    pub epoch: u64,
    pub payload: &'a [u8],
    /// Bytes the frame occupies, padding included.
    pub len: usize,
}

impl Frame<'_> {
    pub(crate) fn to_record(&self) -> Record {
        Record {
            index: self.index,
            epoch: self.epoch,
            payload: self.payload.to_vec(),
        }
    }
}

/// Why the bytes at some offset are not a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// The header is all zeros: nothing was written here.
    Zero,
    /// The file ends inside the frame.
    Short {
        need: usize,
        have: usize,
    },
    TooLarge {
        len: u64,
    },
    Checksum {
        stored: u32,
        computed: u32,
    },
    /// The checksum holds but the header asks for something this version does not know.
    Unsupported {
        what: &'static str,
        value: u8,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Zero => write!(f, "zero-filled record header"),
            FrameError::Short { need, have } => write!(
                f,
                "incomplete record: frame needs {need} bytes, {have} remain in the file"
            ),
            FrameError::TooLarge { len } => write!(
                f,
                "record length {len} exceeds the {MAX_RECORD_BYTES}-byte limit (torn or corrupt length)"
            ),
            FrameError::Checksum { stored, computed } => write!(
                f,
                "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
            FrameError::Unsupported { what, value } => {
                write!(f, "unsupported record {what} {value}")
            }
        }
    }
}

/// Header fields as stored, before any check: for `dump` and for recovery's
/// cheap "could a frame start here?" filter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawHeader {
    pub len: u64,
    pub rtype: u8,
    pub index: u64,
    pub epoch: u64,
}

pub(crate) fn raw_header(buf: &[u8]) -> Option<RawHeader> {
    let h = buf.get(..RECORD_HEADER_BYTES)?;
    Some(RawHeader {
        len: u32::from_le_bytes(h[4..8].try_into().unwrap()) as u64,
        rtype: h[8],
        index: u64::from_le_bytes(h[16..24].try_into().unwrap()),
        epoch: u64::from_le_bytes(h[24..32].try_into().unwrap()),
    })
}

/// Decodes the frame at the start of `buf` (`buf` runs to the end of the file).
pub(crate) fn decode(buf: &[u8]) -> Result<Frame<'_>, FrameError> {
    let Some(raw) = raw_header(buf) else {
        if buf.iter().all(|b| *b == 0) {
            return Err(FrameError::Zero);
        }
        return Err(FrameError::Short {
            need: RECORD_HEADER_BYTES,
            have: buf.len(),
        });
    };
    if buf[..RECORD_HEADER_BYTES].iter().all(|b| *b == 0) {
        return Err(FrameError::Zero);
    }
    if raw.len > MAX_RECORD_BYTES as u64 {
        return Err(FrameError::TooLarge { len: raw.len });
    }
    let len = frame_len(raw.len as usize);
    if buf.len() < len {
        return Err(FrameError::Short {
            need: len,
            have: buf.len(),
        });
    }
    let stored = u32::from_le_bytes(buf[0..4].try_into().unwrap());
    let computed = crc32fast::hash(&buf[4..len]);
    if stored != computed {
        return Err(FrameError::Checksum { stored, computed });
    }
    if raw.rtype != TYPE_ENTRY {
        return Err(FrameError::Unsupported {
            what: "type",
            value: raw.rtype,
        });
    }
    if let Some(&b) = buf[9..16].iter().find(|b| **b != 0) {
        return Err(FrameError::Unsupported {
            what: "flags",
            value: b,
        });
    }
    let payload_end = RECORD_HEADER_BYTES + raw.len as usize;
    Ok(Frame {
        index: raw.index,
        epoch: raw.epoch,
        payload: &buf[RECORD_HEADER_BYTES..payload_end],
        len,
    })
}

/// Cheap test whether a valid frame for an index `>= min_index` could start at the
/// beginning of `buf`; only then is the checksum worth computing.
pub(crate) fn plausible_start(buf: &[u8], min_index: u64) -> bool {
    match raw_header(buf) {
        Some(h) => {
            h.rtype == TYPE_ENTRY
                && h.len <= MAX_RECORD_BYTES as u64
                && frame_len(h.len as usize) <= buf.len()
                && h.index >= min_index
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(index: u64, len: usize) -> Record {
        Record {
            index,
            epoch: 7,
            payload: (0..len).map(|i| (i * 31 + 5) as u8).collect(),
        }
    }

    #[test]
    fn frames_round_trip_and_are_aligned() {
        for len in [0, 1, 7, 8, 9, 100, 4096] {
            let mut buf = Vec::new();
            encode(&mut buf, &rec(42, len));
            assert_eq!(buf.len(), frame_len(len));
            assert_eq!(buf.len() % ALIGN, 0);
            let f = decode(&buf).unwrap();
            assert_eq!(f.to_record(), rec(42, len));
            assert_eq!(f.len, buf.len());
        }
    }

    #[test]
    fn every_bit_of_a_frame_is_protected() {
        // 13 bytes of payload leaves 3 bytes of padding, which must be covered too.
        let mut buf = Vec::new();
        encode(&mut buf, &rec(1, 13));
        for bit in 0..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&bad).is_err(), "flip of bit {bit} went unnoticed");
        }
    }

    #[test]
    fn torn_frames_are_short_and_zeros_are_end_of_data() {
        let mut buf = Vec::new();
        encode(&mut buf, &rec(1, 100));
        for cut in 1..buf.len() {
            assert!(matches!(decode(&buf[..cut]), Err(FrameError::Short { .. })));
        }
        assert_eq!(decode(&[0u8; 64]).unwrap_err(), FrameError::Zero);
        assert_eq!(decode(&[0u8; 5]).unwrap_err(), FrameError::Zero);
        assert_eq!(decode(&[]).unwrap_err(), FrameError::Zero);
    }

    #[test]
    fn oversized_length_is_rejected_before_reading_the_payload() {
        let mut buf = Vec::new();
        encode(&mut buf, &rec(1, 8));
        buf[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&buf), Err(FrameError::TooLarge { .. })));
    }
}
