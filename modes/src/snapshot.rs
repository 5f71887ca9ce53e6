//! The snapshot stream: one format for backups (`GET /admin/backup`, `meridian restore`),
//! standby re-seeding and Raft snapshots.
//!
//! ```text
//! header   "MERIDSNP" | version u32 = 1 | applied_index u64 | epoch u64
//! entry*   key_len u32 (!= u32::MAX) | key | create_revision u64 | mod_revision u64 | value_len u32 | value
//! trailer  u32::MAX | entry_count u64 | crc32 u32 (crc32fast/IEEE over every byte before it)
//! ```
//! All integers little-endian. A stream that ends early or fails the checksum is rejected
//! as a whole, so a half-received snapshot is never installed.

use std::io::{self, Read, Write};

use crate::command::KeyValue;

const MAGIC: &[u8; 8] = b"MERIDSNP";
const VERSION: u32 = 1;
const END: u32 = u32::MAX;
/// Keys are at most 1 KiB and values are bounded by configuration; anything larger than this
/// in a snapshot is damage, not data.
const MAX_FIELD: u32 = 256 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotMeta {
    pub applied_index: u64,
    pub epoch: u64,
    pub keys: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot I/O: {0}")]
    Io(#[from] io::Error),
    #[error("not a Meridian snapshot (bad magic)")]
    BadMagic,
    #[error("unsupported snapshot version {0}")]
    BadVersion(u32),
    #[error("damaged snapshot: {0}")]
    Damaged(String),
}

/// Writes a snapshot; call [`SnapshotWriter::finish`] or the stream is incomplete.
pub struct SnapshotWriter<W: Write> {
    out: W,
    crc: crc32fast::Hasher,
    count: u64,
    applied_index: u64,
    epoch: u64,
}

impl<W: Write> SnapshotWriter<W> {
    pub fn new(out: W, applied_index: u64, epoch: u64) -> io::Result<Self> {
        let mut w = SnapshotWriter { out, crc: crc32fast::Hasher::new(), count: 0, applied_index, epoch };
        w.put(MAGIC)?;
        w.put(&VERSION.to_le_bytes())?;
        w.put(&applied_index.to_le_bytes())?;
        w.put(&epoch.to_le_bytes())?;
        Ok(w)
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.crc.update(b);
        self.out.write_all(b)
    }

    pub fn write(&mut self, kv: &KeyValue) -> io::Result<()> {
        self.put(&(kv.key.len() as u32).to_le_bytes())?;
        self.put(kv.key.as_bytes())?;
        self.put(&kv.create_revision.to_le_bytes())?;
        self.put(&kv.mod_revision.to_le_bytes())?;
        self.put(&(kv.value.len() as u32).to_le_bytes())?;
        self.put(&kv.value)?;
        self.count += 1;
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<(W, SnapshotMeta)> {
        self.put(&END.to_le_bytes())?;
        let count = self.count;
        self.put(&count.to_le_bytes())?;
        let crc = self.crc.clone().finalize();
        self.out.write_all(&crc.to_le_bytes())?;
        self.out.flush()?;
        Ok((self.out, SnapshotMeta { applied_index: self.applied_index, epoch: self.epoch, keys: count }))
    }
}

/// Reads a snapshot entry by entry; the last `next()` verifies count and checksum.
pub struct SnapshotReader<R: Read> {
    input: R,
    crc: crc32fast::Hasher,
    count: u64,
    done: bool,
    pub applied_index: u64,
    pub epoch: u64,
}

impl<R: Read> SnapshotReader<R> {
    pub fn new(input: R) -> Result<Self, SnapshotError> {
        let mut r = SnapshotReader { input, crc: crc32fast::Hasher::new(), count: 0, done: false, applied_index: 0, epoch: 0 };
        let mut magic = [0u8; 8];
        r.take(&mut magic)?;
        if &magic != MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let v = r.u32()?;
        if v != VERSION {
            return Err(SnapshotError::BadVersion(v));
        }
        r.applied_index = r.u64()?;
        r.epoch = r.u64()?;
        Ok(r)
    }

    fn take(&mut self, buf: &mut [u8]) -> Result<(), SnapshotError> {
        self.input.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => SnapshotError::Damaged("stream ends early".into()),
            _ => SnapshotError::Io(e),
        })?;
        self.crc.update(buf);
        Ok(())
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        let mut b = [0u8; 4];
        self.take(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        let mut b = [0u8; 8];
        self.take(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn bytes(&mut self, len: u32) -> Result<Vec<u8>, SnapshotError> {
        if len > MAX_FIELD {
            return Err(SnapshotError::Damaged(format!("field length {len} is implausible")));
        }
        let mut v = vec![0u8; len as usize];
        self.take(&mut v)?;
        Ok(v)
    }

    /// The next entry, `Ok(None)` at a verified end.
    pub fn next_entry(&mut self) -> Result<Option<KeyValue>, SnapshotError> {
        if self.done {
            return Ok(None);
        }
        let key_len = self.u32()?;
        if key_len == END {
            let count = self.u64()?;
            let expect = self.crc.clone().finalize();
            let mut b = [0u8; 4];
            self.input.read_exact(&mut b).map_err(|_| SnapshotError::Damaged("missing checksum".into()))?;
            if u32::from_le_bytes(b) != expect {
                return Err(SnapshotError::Damaged("checksum mismatch".into()));
            }
            if count != self.count {
                return Err(SnapshotError::Damaged(format!("trailer says {count} entries, read {}", self.count)));
            }
            self.done = true;
            return Ok(None);
        }
        let key = String::from_utf8(self.bytes(key_len)?).map_err(|_| SnapshotError::Damaged("key is not UTF-8".into()))?;
        let create_revision = self.u64()?;
        let mod_revision = self.u64()?;
        let vlen = self.u32()?;
        let value = self.bytes(vlen)?;
        self.count += 1;
        Ok(Some(KeyValue { key, value, create_revision, mod_revision }))
    }

    pub fn meta(&self) -> SnapshotMeta {
        SnapshotMeta { applied_index: self.applied_index, epoch: self.epoch, keys: self.count }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = SnapshotWriter::new(Vec::new(), 42, 3).unwrap();
        for i in 0..10u64 {
            w.write(&KeyValue { key: format!("k{i}"), value: vec![i as u8; i as usize], create_revision: i, mod_revision: i + 1 }).unwrap();
        }
        w.finish().unwrap().0
    }

    #[test]
    fn snapshot_round_trips() {
        let buf = sample();
        let mut r = SnapshotReader::new(&buf[..]).unwrap();
        let mut n = 0;
        while let Some(kv) = r.next_entry().unwrap() {
            assert_eq!(kv.key, format!("k{n}"));
            n += 1;
        }
        assert_eq!(n, 10);
        assert_eq!(r.meta(), SnapshotMeta { applied_index: 42, epoch: 3, keys: 10 });
    }

    #[test]
    fn truncated_or_flipped_snapshot_is_rejected() {
        let buf = sample();
        let read_all = |b: &[u8]| -> Result<(), SnapshotError> {
            let mut r = SnapshotReader::new(b)?;
            while r.next_entry()?.is_some() {}
            Ok(())
        };
        for cut in [10, buf.len() / 2, buf.len() - 1] {
            assert!(read_all(&buf[..cut]).is_err(), "cut at {cut} accepted");
        }
        for pos in [30, buf.len() / 2, buf.len() - 6] {
            let mut b = buf.clone();
            b[pos] ^= 0x10;
            assert!(read_all(&b).is_err(), "flip at {pos} accepted");
        }
    }
}
