//! Meridian's write-ahead log: the source of durability on the write path
//! (HTTP → mode → **WAL** → replication → apply). A write is acknowledged only
//! after its record is fdatasync'ed here; redb may lag, because recovery replays
//! the WAL from the last index redb durably applied. In `raft` mode this crate is
//! openraft's log storage. It knows nothing about replication.
//!
//! # Modules
//!
//! | module | one concept |
//! |---|---|
//! | `wal` | [`Wal`], the handle: validates and orders requests, serves reads |
//! | `writer` | the writer thread: group commit, segment rotation |
//! | `truncate` | `truncate_after`, `purge_before`, `reset_to`: crash-safe shrinking |
//! | `recovery` | open-time scan: torn tail versus corruption; [`verify`] |
//! | `record` | the record frame, encoded and decoded in one place |
//! | `segment` | segment file names, header, creation |
//! | `spare` | the next segment, zero-filled ahead of time so fdatasyncs write no metadata |
//! | `state` | `wal.state`: identity, [`HardState`], purge point, pending operations, newest segment |
//! | `identity` | [`WalId`], created with the directory, checked on every open |
//! | `retry` | EMFILE and friends: short bounded retries, never a storage failure |
//! | `reader` | the segment table and `pread`-based reads |
//! | `ticket` | [`AppendTicket`], the future an append returns |
//! | `dump` | [`dump`], a line per record for operators |
//! | `options`, `error` | [`WalOptions`] / [`SyncInfo`], [`WalError`] |
//!
//! # Life cycle
//!
//! ```no_run
//! use meridian_wal::{HardState, Record, Wal, WalOptions};
//!
//! # async fn demo() -> Result<(), meridian_wal::WalError> {
//! // Open: recovery runs here and reports a torn tail it cut. A caller whose data was
//! // built from this WAL passes its identity, so a deleted or swapped WAL is refused
//! // instead of silently replaced by a new, empty one.
//! let mut opts = WalOptions::new("/var/lib/meridian/wal");
//! opts.expected_id = None; // or Some(id) remembered from an earlier wal.id()
//! let (wal, report) = Wal::open(opts)?;
//! let (id, next) = (wal.id(), report.last_index + 1);
//!
//! // Append: returns at once (enqueue order = log order); the ticket resolves
//! // when the records are on disk. Concurrent appends share one fdatasync.
//! let durable = wal
//!     .append(vec![Record { index: next, epoch: 3, payload: b"put a=1".to_vec() }])
//!     .await?;
//!
//! // Read (blocking pread; fine next to appends). Use spawn_blocking in async code.
//! let records = wal.read_from(next, 1000, 1 << 20)?;
//!
//! // Raft conflict or HA divergence: drop the tail, keep what was removed.
//! let divergent = wal.truncate_after(durable - 1)?;
//!
//! // Compaction after a snapshot, and the vote/epoch header.
//! wal.purge_before(durable)?;
//! wal.save_hard_state(&HardState { epoch: 3, vote: b"node-1".to_vec() })?;
//!
//! wal.close()?;
//! # let _ = (records, divergent, id); Ok(()) }
//! ```
//!
//! Blocking calls (`open`, `read_from`, `truncate_after`, `purge_before`,
//! `reset_to`, `save_hard_state`, `close`, [`AppendTicket::wait`]) must not run on
//! an async worker thread; the writer does its I/O on its own `std::thread`.
//!
//! # Indexes
//!
//! Records carry contiguous indexes (each is the previous + 1). The first append
//! ever may start at any index (openraft starts at 0). After that an append must
//! continue at `last_index() + 1`, else its ticket fails with
//! [`WalError::IndexGap`]. `truncate_after(t)` makes the next index `t + 1`;
//! `reset_to(n)` makes it `n`; `purge_before(b)` past the end makes it `b`.
//! When the log is empty, `first_index()` is that next index (normally
//! `last_index() + 1`; 1 for a WAL never written, whose `last_index()` is 0).
//!
//! # Directory
//!
//! ```text
//! 0000000000000001-0000000000000000.wal   segment: {seq:016x}-{first_index:016x}.wal
//! 0000000000000002-00000000000004d2.wal   next segment, starting at index 0x4d2
//! wal.state                               identity + hard state + purge point + pending operation
//!                                         + newest segment (written first, when the directory is created)
//! LOCK                                    flock: one Wal per directory
//! 0000000000000002-00000000000004d2.wal.broken   bytes cut off a torn tail (kept for post-mortems)
//! spare-3f2a9c0d1e4b5a67.tmp              the next segment, zero-filled ahead (see `spare`; deleted on open)
//! ```
//!
//! A segment is started once the current one has reached
//! [`WalOptions::segment_bytes`] (64 MiB by default), before the next group
//! commit: header to `<name>.tmp`, fsync, rename, fsync the directory. Or, once
//! a busy WAL has a zero-filled spare ready (see [`WalOptions::preallocate`]),
//! in the spare: header over its first bytes, fsync, rename, fsync the
//! directory; it starts as soon as a batch would grow the current file, so
//! appends overwrite zeros and fdatasync writes data only.
//!
//! # On-disk format
//!
//! All integers little-endian. Checksums are CRC-32/ISO-HDLC (the "IEEE" CRC of
//! zlib and Ethernet: reflected polynomial 0xEDB88320, init and xorout
//! 0xFFFFFFFF), computed with `crc32fast`; never CRC-32C.
//!
//! Segment header (64 bytes):
//!
//! ```text
//!  0  8  magic        "MERIDWAL"
//!  8  2  version      1
//! 10  2  flags        bit 0 PREALLOCATED (made from a zero-filled spare); others 0
//! 12  4  header_len   64
//! 16  8  seq
//! 24  8  first_index
//! 32  8  created_ms   unix milliseconds
//! 40 16  wal_id       the WAL's identity (0: written before identities existed)
//! 56  4  reserved     0
//! 60  4  header_crc   crc over bytes [0, 60)
//! ```
//!
//! Then records, each starting on an 8-byte boundary:
//!
//! ```text
//!  0  4  crc          crc over bytes [4, 32 + len + pad): length, header and padding too
//!  4  4  len          payload bytes; more than 64 MiB is a torn or corrupt length
//!  8  1  type         1 = Entry
//!  9  7  flags, reserved   0
//! 16  8  index
//! 24  8  epoch        HA epoch or Raft term of the writer
//! 32  len payload
//!     pad             zeros to the next multiple of 8
//! ```
//!
//! Only `Entry` records exist. Truncation is not a marker record: it cuts files,
//! made crash-safe by an intent in `wal.state` (see `truncate`). The checksum of
//! 28 zero bytes is not zero, so a zeroed header never validates; zeros mean "no
//! data here".
//!
//! # Recovery
//!
//! [`Wal::open`] reads every segment in order and checks headers, checksums and
//! index continuity (within and across segments, and against the purge point).
//!
//! * A bad frame at the end of the **last** segment, with no valid frame at any
//!   later 8-byte boundary, is a torn tail: a crash cut the last write short,
//!   and it was never acknowledged. The file is cut there (`set_len` + fsync),
//!   the dropped bytes are copied to `<segment>.broken` first, a `WARN` names the
//!   file and offset, and [`RecoveryReport::truncated_tail`] says the same. A
//!   zero-filled tail counts as torn, with nothing to copy — except in a
//!   `PREALLOCATED` segment, where zeros after the last record are its unused
//!   space: the segment ends there cleanly (last or not) and nothing is cut.
//! * Any other bad frame (in an earlier segment, or followed by a valid one) may
//!   be acknowledged data: [`WalError::Corrupt`] names the file and byte offset,
//!   and the node must refuse to start. The WAL never silently drops such data.
//! * Interrupted `truncate_after`, `purge_before` and `reset_to` are finished.
//!
//! [`verify`] runs the same checks without changing anything; [`dump`] prints
//! every frame.
//!
//! # Identity: a missing WAL is not an empty one
//!
//! A directory with no WAL in it gets one on open: `wal.state` is written first,
//! holding a random 128-bit [`WalId`], and every segment header repeats that id.
//! From then on the directory can tell lost files from a log that was never
//! longer, and [`Wal::open`] refuses (never creating or changing anything) when:
//!
//! | found | error |
//! |---|---|
//! | no `wal.state` and no segment, but [`WalOptions::expected_id`] is set | [`WalError::Missing`] |
//! | a WAL with another id than `expected_id` | [`WalError::Foreign`] |
//! | segments but no `wal.state` (the hard state is gone with it) | [`WalError::Corrupt`] naming `wal.state` |
//! | a segment whose header carries another WAL's id | [`WalError::Corrupt`] naming the segment |
//! | the newest segment `wal.state` recorded, and no later one, is gone, though no reset or truncate removed it | [`WalError::Corrupt`] naming the missing segment |
//!
//! The last rule is what catches a deleted segment (often the only one): the
//! writer records each new segment in `wal.state` once the file is durable, and a
//! purge that empties the log clears the record in the same write. Records
//! deleted from the *front* of the log are caught by the purge point when there
//! is one, and otherwise by the caller, who knows what it has applied. The id is
//! what a caller remembers ([`Wal::id`]) to pass back as `expected_id`: Meridian
//! stores it in its state database beside the applied index. A WAL written before
//! identities existed (a version-1 `wal.state`, zero ids in headers) is given one
//! on its first open.
//!
//! # Group commit
//!
//! One thread owns the active segment. It blocks for the first request, drains
//! whatever else is queued (up to [`WalOptions::max_batch_bytes`], optionally
//! lingering [`WalOptions::max_batch_wait`]), writes the batch with one
//! `pwrite`, calls `fdatasync` once, publishes the records to readers, resolves
//! the tickets, updates [`Wal::subscribe_durable`] and calls
//! [`WalOptions::on_sync`]. A failed write or fsync poisons the WAL
//! ([`WalError::Poisoned`]): after a failed fsync the page cache cannot be
//! trusted, so only a reopen, which reads what is really on disk, may continue.
//!
//! # Running short of descriptors
//!
//! EMFILE, ENFILE, ENOMEM, EAGAIN and EINTR when opening a file say nothing about
//! the disk, so they never poison the WAL. Opening is retried for about a quarter
//! of a second; then an append that needs a new segment keeps waiting (logging a
//! `WARN` every 10 s) until a descriptor is free, and resumes — failing it would
//! leave its indexes unwritten under later, already-numbered batches. A
//! [`Wal::purge_before`] or [`Wal::save_hard_state`] answers
//! [`WalError::Transient`] instead, having changed nothing: call it again later.
//! The directory is synced through a descriptor held open for the WAL's life,
//! so only the new file itself ever needs one.

mod dump;
mod error;
mod identity;
mod options;
mod reader;
mod record;
mod recovery;
mod retry;
mod segment;
mod spare;
mod state;
mod ticket;
mod truncate;
mod wal;
mod writer;

pub use dump::dump;
pub use error::WalError;
pub use identity::WalId;
pub use options::{SyncInfo, WalOptions};
pub use record::{Record, MAX_RECORD_BYTES, RECORD_HEADER_BYTES};
pub use recovery::{verify, RecoveryReport, TailTruncation};
pub use state::{read_state_file, HardState, StateFile, MAX_VOTE_BYTES};
pub use ticket::AppendTicket;
pub use wal::{Position, Wal};

#[cfg(test)]
mod test_util;
