//! `dump`: print every frame of every segment, for a human or a script.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{io_at, WalError};
use crate::record::{self, FrameError, MAX_RECORD_BYTES};
use crate::segment::{self, SegmentHeader, SEGMENT_HEADER_BYTES};

/// Offline, read-only listing of a WAL directory (`meridian wal dump`), one line
/// per record in segment order:
///
/// ```text
/// 0000000000000001-0000000000000001.wal offset=64 index=1 epoch=2 len=120 crc=ok
/// 0000000000000001-0000000000000001.wal offset=216 index=2 epoch=2 len=9 crc=bad (checksum mismatch (...))
/// 0000000000000001-0000000000000001.wal offset=264 unreadable to end (40 bytes): incomplete record: ...
/// ```
///
/// Unlike recovery it does not stop at damage: a bad frame whose length is
/// plausible is printed (with its header fields as stored) and skipped. It reads
/// every segment file on disk, including ones recovery would discard.
pub fn dump(dir: &Path, out: &mut dyn Write) -> Result<(), WalError> {
    let out_err = || io_at(Path::new("<dump output>"));
    for seg in segment::list(dir)? {
        let bytes = fs::read(&seg.path).map_err(io_at(&seg.path))?;
        let name = seg.path.file_name().map(PathBuf::from).unwrap_or_default();
        let name = name.display();
        if let Err(reason) = SegmentHeader::decode(&bytes) {
            writeln!(out, "{name} offset=0 header=bad ({reason})").map_err(out_err())?;
            continue;
        }
        let mut off = SEGMENT_HEADER_BYTES as usize;
        while off < bytes.len() {
            let rest = &bytes[off..];
            match record::decode(rest) {
                Ok(f) => {
                    writeln!(
                        out,
                        "{name} offset={off} index={} epoch={} len={} crc=ok",
                        f.index,
                        f.epoch,
                        f.payload.len()
                    )
                    .map_err(out_err())?;
                    off += f.len;
                }
                Err(FrameError::Zero) if rest.iter().all(|b| *b == 0) => {
                    writeln!(
                        out,
                        "{name} offset={off} zero-filled to end ({} bytes)",
                        rest.len()
                    )
                    .map_err(out_err())?;
                    break;
                }
                Err(e) => match record::raw_header(rest) {
                    Some(h)
                        if h.len <= MAX_RECORD_BYTES as u64
                            && record::frame_len(h.len as usize) <= rest.len() =>
                    {
                        writeln!(
                            out,
                            "{name} offset={off} index={} epoch={} len={} crc=bad ({e})",
                            h.index, h.epoch, h.len
                        )
                        .map_err(out_err())?;
                        off += record::frame_len(h.len as usize);
                    }
                    _ => {
                        writeln!(
                            out,
                            "{name} offset={off} unreadable to end ({} bytes): {e}",
                            rest.len()
                        )
                        .map_err(out_err())?;
                        break;
                    }
                },
            }
        }
    }
    Ok(())
}
