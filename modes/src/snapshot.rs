//! The snapshot stream: one format for backups (`GET /admin/backup`, `meridian restore`),
//! standby re-seeding and Raft snapshots.
//!
//! ```text
//! header   "MERIDSNP" | version u32 = 3 | applied_index u64 | epoch u64
//!          | meta_len u32 (u32::MAX = no metadata) | meta (meta_len bytes)
//! entry*   key_len u32 (!= u32::MAX) | key | create_revision u64 | mod_revision u64
//!          | flags u8 (bit 0: stamped, bit 1: tombstone, bit 2: has a parent)
//!          | [stamped: hlc u64 | region_len u8 | region]
//!          | [parent: hlc u64 | region_len u8 | region] | value_len u32 | value
//! trailer  u32::MAX | entry_count u64 | crc32 u32 (crc32fast/IEEE over every byte before it)
//! ```
//! All integers little-endian. A stream that ends early or fails the checksum is rejected
//! as a whole, so a half-received snapshot is never installed. The checksum covers the
//! header and its metadata too, so metadata read from the header is trusted only once the
//! stream verified (installing stores it in the transaction that aborts otherwise).
//!
//! `meta` is the replication metadata current at `applied_index` (Raft: the membership
//! config), opaque here. Version 2 is version 3 without the entry flags and stamp (no
//! multi-region versions); version 1 is version 2 without `meta_len`/`meta`. Both are still
//! read.

use std::io::{self, Read, Write};

use crate::command::{KeyValue, Stamp};

const MAGIC: &[u8; 8] = b"MERIDSNP";
/// The version written; [`VERSION_2`] and [`VERSION_1`] are still read.
const VERSION: u32 = 3;
const VERSION_2: u32 = 2;
const VERSION_1: u32 = 1;
const STAMPED: u8 = 1;
const TOMBSTONE: u8 = 2;
const PARENT: u8 = 4;
/// `meta_len` of a snapshot without metadata (an empty blob is `Some(vec![])`, length 0).
const NO_META: u32 = u32::MAX;
const END: u32 = u32::MAX;
/// Keys are at most 1 KiB and values are bounded by configuration; anything larger than this
/// in a snapshot is damage, not data.
const MAX_FIELD: u32 = 256 << 20;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotMeta {
    pub applied_index: u64,
    pub epoch: u64,
    pub keys: u64,
    /// The replication metadata current at `applied_index`; `None` in a version 1 snapshot.
    pub meta: Option<Vec<u8>>,
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
    meta: Option<Vec<u8>>,
}

impl<W: Write> SnapshotWriter<W> {
    /// Starts a snapshot of the state at (`applied_index`, `epoch`) with replication metadata `meta`.
    pub fn new(out: W, applied_index: u64, epoch: u64, meta: Option<Vec<u8>>) -> io::Result<Self> {
        let mut w = SnapshotWriter { out, crc: crc32fast::Hasher::new(), count: 0, applied_index, epoch, meta: None };
        w.put(MAGIC)?;
        w.put(&VERSION.to_le_bytes())?;
        w.put(&applied_index.to_le_bytes())?;
        w.put(&epoch.to_le_bytes())?;
        match &meta {
            Some(m) => {
                let len = u32::try_from(m.len()).ok().filter(|&l| l <= MAX_FIELD).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("snapshot metadata of {} bytes is over the limit", m.len()))
                })?;
                w.put(&len.to_le_bytes())?;
                w.put(m)?;
            }
            None => w.put(&NO_META.to_le_bytes())?,
        }
        w.meta = meta;
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
        let flags = if kv.stamp.is_some() { STAMPED } else { 0 } | if kv.tombstone { TOMBSTONE } else { 0 } | if kv.parent.is_some() { PARENT } else { 0 };
        self.put(&[flags])?;
        for st in kv.stamp.iter().chain(&kv.parent) {
            let len = u8::try_from(st.region.len())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("region name of {} bytes is over 255", st.region.len())))?;
            self.put(&st.hlc.to_le_bytes())?;
            self.put(&[len])?;
            self.put(st.region.as_bytes())?;
        }
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
        Ok((self.out, SnapshotMeta { applied_index: self.applied_index, epoch: self.epoch, keys: count, meta: self.meta }))
    }
}

/// Reads a snapshot entry by entry; the last `next()` verifies count and checksum.
pub struct SnapshotReader<R: Read> {
    input: R,
    version: u32,
    crc: crc32fast::Hasher,
    count: u64,
    done: bool,
    pub applied_index: u64,
    pub epoch: u64,
    /// The header's replication metadata; verified only with the rest, at the stream's end.
    pub replication_meta: Option<Vec<u8>>,
}

impl<R: Read> SnapshotReader<R> {
    pub fn new(input: R) -> Result<Self, SnapshotError> {
        let mut r =
            SnapshotReader { input, version: 0, crc: crc32fast::Hasher::new(), count: 0, done: false, applied_index: 0, epoch: 0, replication_meta: None };
        let mut magic = [0u8; 8];
        r.take(&mut magic)?;
        if &magic != MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let v = r.u32()?;
        if ![VERSION, VERSION_2, VERSION_1].contains(&v) {
            return Err(SnapshotError::BadVersion(v));
        }
        r.version = v;
        r.applied_index = r.u64()?;
        r.epoch = r.u64()?;
        if v >= VERSION_2 {
            r.replication_meta = match r.u32()? {
                NO_META => None,
                len => Some(r.bytes(len).map_err(|e| match e {
                    SnapshotError::Damaged(why) => SnapshotError::Damaged(format!("metadata: {why}")),
                    e => e,
                })?),
            };
        }
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
        let (mut stamp, mut tombstone, mut parent) = (None, false, None);
        if self.version >= VERSION {
            let mut flags = [0u8];
            self.take(&mut flags)?;
            if flags[0] & !(STAMPED | TOMBSTONE | PARENT) != 0 {
                return Err(SnapshotError::Damaged(format!("entry {key:?} has unknown flags {:#04x}", flags[0])));
            }
            tombstone = flags[0] & TOMBSTONE != 0;
            if flags[0] & STAMPED != 0 {
                stamp = Some(self.stamp()?);
                if flags[0] & PARENT != 0 {
                    parent = Some(self.stamp()?);
                }
            }
        }
        let vlen = self.u32()?;
        let value = self.bytes(vlen)?;
        self.count += 1;
        Ok(Some(KeyValue { key, value, create_revision, mod_revision, stamp, tombstone, parent }))
    }

    fn stamp(&mut self) -> Result<Stamp, SnapshotError> {
        let hlc = self.u64()?;
        let mut len = [0u8];
        self.take(&mut len)?;
        let region = String::from_utf8(self.bytes(len[0] as u32)?).map_err(|_| SnapshotError::Damaged("region is not UTF-8".into()))?;
        Ok(Stamp { hlc, region })
    }

    /// The underlying reader (e.g. to report how much was read).
    pub fn inner(&self) -> &R {
        &self.input
    }

    pub fn meta(&self) -> SnapshotMeta {
        SnapshotMeta { applied_index: self.applied_index, epoch: self.epoch, keys: self.count, meta: self.replication_meta.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::{install_snapshot, AppliedState, MemStateMachine, StateMachine};

    const META: &[u8] = b"membership{1,2,3}";

    fn sample_with(meta: Option<Vec<u8>>) -> Vec<u8> {
        let mut w = SnapshotWriter::new(Vec::new(), 42, 3, meta).unwrap();
        for i in 0..10u64 {
            w.write(&KeyValue::plain(format!("k{i}"), vec![i as u8; i as usize], i, i + 1)).unwrap();
        }
        w.finish().unwrap().0
    }

    fn sample() -> Vec<u8> {
        sample_with(Some(META.to_vec()))
    }

    fn read_all(b: &[u8]) -> Result<SnapshotMeta, SnapshotError> {
        let mut r = SnapshotReader::new(b)?;
        while r.next_entry()?.is_some() {}
        Ok(r.meta())
    }

    /// A version 1 stream as the previous build wrote it, assembled by hand: one key.
    fn version_1() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"MERIDSNP");
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&7u64.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(b"a");
        b.extend_from_slice(&5u64.to_le_bytes());
        b.extend_from_slice(&6u64.to_le_bytes());
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(b"v1");
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn snapshot_round_trips_with_its_metadata() {
        let buf = sample();
        let mut r = SnapshotReader::new(&buf[..]).unwrap();
        let mut n = 0;
        while let Some(kv) = r.next_entry().unwrap() {
            assert_eq!(kv.key, format!("k{n}"));
            n += 1;
        }
        assert_eq!(n, 10);
        assert_eq!(r.meta(), SnapshotMeta { applied_index: 42, epoch: 3, keys: 10, meta: Some(META.to_vec()) });
        for meta in [None, Some(vec![])] {
            assert_eq!(read_all(&sample_with(meta.clone())).unwrap().meta, meta);
        }
    }

    #[test]
    fn stamps_and_tombstones_round_trip_and_a_version_2_stream_still_reads() {
        let stamped = KeyValue { stamp: Some(Stamp { hlc: 77 << 16, region: "eu".into() }), ..KeyValue::plain("a", b"x".to_vec(), 1, 2) };
        let tomb = KeyValue {
            stamp: Some(Stamp { hlc: 78 << 16, region: "us".into() }),
            tombstone: true,
            parent: Some(Stamp { hlc: 60 << 16, region: "ap".into() }),
            ..KeyValue::plain("b", vec![], 3, 3)
        };
        let plain = KeyValue::plain("c", b"y".to_vec(), 4, 4);
        let mut w = SnapshotWriter::new(Vec::new(), 4, 1, None).unwrap();
        for kv in [&stamped, &tomb, &plain] {
            w.write(kv).unwrap();
        }
        let (buf, _) = w.finish().unwrap();
        let mut r = SnapshotReader::new(&buf[..]).unwrap();
        let mut got = Vec::new();
        while let Some(kv) = r.next_entry().unwrap() {
            got.push(kv);
        }
        assert_eq!(got, vec![stamped, tomb, plain.clone()]);

        // Version 2, as the previous build wrote it: no flags byte.
        let mut b = Vec::new();
        b.extend_from_slice(b"MERIDSNP");
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&4u64.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(b"c");
        b.extend_from_slice(&4u64.to_le_bytes());
        b.extend_from_slice(&4u64.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(b"y");
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        let mut r = SnapshotReader::new(&b[..]).unwrap();
        assert_eq!(r.next_entry().unwrap(), Some(plain));
        assert_eq!(r.next_entry().unwrap(), None);
    }

    #[test]
    fn a_version_1_snapshot_still_installs_without_metadata() {
        let sm = MemStateMachine::default();
        let meta = install_snapshot(&sm, &version_1()[..]).unwrap();
        assert_eq!(meta, SnapshotMeta { applied_index: 7, epoch: 2, keys: 1, meta: None });
        assert_eq!(sm.applied_state().unwrap(), AppliedState { index: 7, epoch: 2, meta: None });
        let kv = sm.get("a").unwrap().unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.value.as_slice()), (5, 6, &b"v1"[..]));
        let mut bad = version_1();
        bad[30] ^= 1;
        assert!(read_all(&bad).is_err());
    }

    #[test]
    fn truncated_or_flipped_snapshot_is_rejected() {
        let buf = sample();
        for cut in [10, buf.len() / 2, buf.len() - 1] {
            assert!(read_all(&buf[..cut]).is_err(), "cut at {cut} accepted");
        }
        for pos in [30, buf.len() / 2, buf.len() - 6] {
            let mut b = buf.clone();
            b[pos] ^= 0x10;
            assert!(read_all(&b).is_err(), "flip at {pos} accepted");
        }
    }

    #[test]
    fn damaged_metadata_is_refused_and_installs_nothing() {
        let buf = sample();
        let meta_at = 8 + 4 + 8 + 8;
        // The stream ends inside the metadata.
        assert!(matches!(SnapshotReader::new(&buf[..meta_at + 4 + 3]), Err(SnapshotError::Damaged(_))));
        // An implausible length is refused before anything is allocated.
        let mut huge = buf.clone();
        huge[meta_at..meta_at + 4].copy_from_slice(&(MAX_FIELD + 1).to_le_bytes());
        assert!(matches!(SnapshotReader::new(&huge[..]), Err(SnapshotError::Damaged(_))));
        // A flipped metadata byte reads, but the stream fails its checksum: nothing changes.
        let sm = MemStateMachine::default();
        install_snapshot(&sm, &sample_with(Some(b"old".to_vec()))[..]).unwrap();
        let mut flipped = buf.clone();
        flipped[meta_at + 4] ^= 0x01;
        assert!(install_snapshot(&sm, &flipped[..]).is_err());
        assert_eq!(sm.applied_state().unwrap().meta, Some(b"old".to_vec()));
    }
}
