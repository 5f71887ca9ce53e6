//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

use meridian_wal::{dump, Record, Wal, WalError, WalOptions};

/// Deterministic, incompressible-looking payload for `index`.
pub fn payload(index: u64, len: usize) -> Vec<u8> {
    let mut x = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn rec(index: u64, len: usize) -> Record {
    Record {
        index,
        epoch: 1 + index / 8,
        payload: payload(index, len),
    }
}

pub fn opts(dir: &Path, segment_bytes: u64) -> WalOptions {
    let mut o = WalOptions::new(dir);
    o.segment_bytes = segment_bytes;
    // These tests cut and flip every byte of a layout they compute frame by frame;
    // when a zero-filled spare is ready depends on timing, so they keep segments that
    // grow as written. Preallocated segments have their own tests (`spare` module).
    o.preallocate = false;
    o
}

/// Appends batches of records with the given payload sizes, starting at `first`,
/// waiting for each batch so each one is its own group commit.
pub fn write_batches(wal: &Wal, first: u64, batches: &[Vec<usize>]) -> Vec<Record> {
    let mut all = Vec::new();
    let mut next = first;
    for sizes in batches {
        let batch: Vec<Record> = sizes
            .iter()
            .map(|&len| {
                next += 1;
                rec(next - 1, len)
            })
            .collect();
        let last = batch.last().unwrap().index;
        assert_eq!(wal.append(batch.clone()).wait().unwrap(), last);
        all.extend(batch);
    }
    all
}

pub fn read_all(wal: &Wal) -> Vec<Record> {
    wal.read_from(wal.first_index(), usize::MAX, usize::MAX)
        .unwrap()
}

/// Opens `dir` and returns every record in it.
pub fn reopen(dir: &Path, segment_bytes: u64) -> Result<(Wal, Vec<Record>), WalError> {
    let (wal, _) = Wal::open(opts(dir, segment_bytes))?;
    let records = read_all(&wal);
    Ok((wal, records))
}

/// One line of `dump` output for a valid record.
#[derive(Debug, Clone)]
pub struct Frame {
    pub file: PathBuf,
    pub offset: u64,
    pub index: u64,
    pub len: u64,
}

impl Frame {
    /// Bytes on disk: 32-byte header, payload padded to 8.
    pub fn frame_len(&self) -> u64 {
        32 + self.len.div_ceil(8) * 8
    }
    pub fn end(&self) -> u64 {
        self.offset + self.frame_len()
    }
}

/// The record layout of `dir`, taken from `dump` (which the tests thereby check too).
pub fn layout(dir: &Path) -> Vec<Frame> {
    let mut out = Vec::new();
    dump(dir, &mut out).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|line| {
            let mut parts = line.split(' ');
            let file = dir.join(parts.next().unwrap());
            let field = |name: &str| -> u64 {
                line.split(' ')
                    .find_map(|p| p.strip_prefix(name))
                    .unwrap_or_else(|| panic!("no {name} in {line:?}"))
                    .parse()
                    .unwrap()
            };
            assert!(line.ends_with("crc=ok"), "{line}");
            Frame {
                file,
                offset: field("offset="),
                index: field("index="),
                len: field("len="),
            }
        })
        .collect()
}

pub fn flip_bit(path: &Path, byte: u64, bit: u8) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[byte as usize] ^= 1 << bit;
    std::fs::write(path, bytes).unwrap();
}

pub fn cut_file(path: &Path, len: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(len).unwrap();
}
