//! # meridian-modes — replication modes and the cluster transport
//!
//! Module map:
//! - [`command`]: the commands a client can submit (put, delete, txn) and their results.
//! - [`payload`]: [`payload::LogPayload`], what a WAL record's payload holds (a command, a
//!   blank entry or a membership change), versioned; the only way to payload bytes and back.
//! - [`state_machine`]: the [`StateMachine`] trait — apply committed entries, take and install
//!   snapshots. Defined here where it is consumed, implemented on redb in the `meridian`
//!   package; [`state_machine::MemStateMachine`] serves this crate's tests.
//! - `state_machine_error`: [`state_machine::StateMachineError`], what a state machine
//!   operation fails with (public as `state_machine::StateMachineError`).
//! - [`replicator`]: the [`Replicator`] trait the HTTP layer talks to, its errors and status types.
//! - [`bookmark`]: the opaque causal-consistency token handed to clients.
//! - [`applied_wait`]: waiting until this node has applied a position (a bookmark's, a read
//!   index), for at most the read's wait.
//! - [`standalone`]: one node, durable: WAL group commit then apply.
//! - [`room`]: after a storage error, the probe that says the disk has room again.
//! - [`transport`]: framed, optionally mutually-authenticated TLS connections between nodes;
//!   message families (HA, Raft, …) share one port, each with its own handler.
//! - [`raft`]: the `raft` mode on openraft — log storage on the WAL, state machine on the
//!   [`StateMachine`], network on the [`transport`].
//! - [`wire`]: the payload encoding of cluster messages (postcard).
//! - [`forward`]: a write relayed to the node that can take it, and its answer relayed back.
//! - [`read_round`]: linearizable reads — concurrent reads sharing one confirmation round,
//!   then waiting for the read index to be applied here.
//! - [`snapshot_stream`]: a state-machine snapshot sent between nodes as a file, in chunks.
//! - [`progress`]: progress lines (amount, rate, time left) for long copies: snapshot
//!   install, restore, catch-up.
//! - [`ha`]: the `ha_standby` mode (primary, standby, witness).
//! - [`region`]: the `multi_region` mode: a [`raft`] group per region, last-write-wins
//!   replication between regions.
//! - [`apply`]: the one definition of what a command does to key-value state (and the
//!   multi-region invariants on stamps, received clocks and collected tombstones).
//! - [`batch_kv`]: the access one apply batch goes through: reserved keys read once and
//!   written once per batch, a key's repeated read served from memory.
//! - [`conflicts`]: `CLUSTER_CONFLICT_STRATEGY=manual`: which versions conflict, and their record.
//!
//! Dependencies point one way: this crate knows the WAL, never HTTP.
//!
//! ## Positions: 0 is "nothing"
//!
//! A WAL index, a state machine's applied index, a bookmark and a revision are *positions*,
//! and position 0 means "nothing yet" everywhere (`applied_index() == 0` is an empty store;
//! [`state_machine::should_apply`] starts at 1). openraft numbers its log from 0, so the Raft
//! adapter maps openraft index `i` to position `i + 1` in one place
//! ([`raft::types::position`]) and openraft never sees a position. Epoch (HA) and term
//! (Raft) are stored unchanged in each record, so (epoch, position) identifies a write.
//!
//! ## The seams every mode plugs into
//!
//! - **Writes.** The HTTP layer builds a [`Command`] and calls [`Replicator::submit`]. A mode
//!   owns everything between that call and the answer: assigning the log index, the WAL
//!   append (group commit), replication and its acknowledgement rule (`async`, `sync`, Raft
//!   majority, …), commit, and applying to the [`StateMachine`]. Preconditions are evaluated
//!   at apply time ([`apply::apply_command`]) so every replica reaches the same verdict.
//! - **Forwarding.** A node that cannot take a write (HA standby, Raft follower, replica)
//!   forwards the command over the [`transport`] to the node that can and relays its
//!   [`replicator::Committed`] answer; with `MERIDIAN_FORWARD_WRITES=false` it answers
//!   [`replicator::SubmitError::NotLeader`] carrying a [`replicator::LeaderHint`], which the HTTP
//!   layer turns into `421` with `Location`. The HTTP layer never learns who the leader is.
//! - **Reads.** The HTTP layer calls [`Replicator::read_fence`] with the requested
//!   [`replicator::Consistency`] (or the mode's default) and an optional [`Bookmark`], then
//!   reads the local [`StateMachine`]. `standalone` only waits for bookmarks; `ha_standby`
//!   waits for the bookmark on the standby; `raft` obtains a read index from the leader and
//!   waits until it is applied locally.
//! - **State.** [`StateMachine`] is applied in index order, checkpoints durably now and then,
//!   and exports/installs [`snapshot`]s from one consistent view — for backups, standby
//!   re-seeding and Raft snapshots alike. [`recovery::replay`] rebuilds it from the WAL on
//!   start, for every mode.
//! - **Status.** [`replicator::ReplicationStatus`] is the one source for `/health`, `/metrics`
//!   and admin views; mode-specific operations go through [`Replicator::admin`].

pub mod applied_wait;
pub mod apply;
pub mod batch_kv;
pub mod conflicts;
pub mod bookmark;
pub mod command;
pub mod forward;
pub mod ha;
pub mod raft;
pub mod recovery;
pub mod region;
pub mod replicator;
pub mod snapshot;
pub mod payload;
pub mod snapshot_stream;
pub mod pipeline;
pub mod progress;
pub mod read_round;
pub mod room;
pub mod standalone;
pub mod state_machine;
mod state_machine_error;
pub mod transport;
pub mod wire;

pub use bookmark::Bookmark;
pub use command::{Command, CommandResult, KeyValue};
pub use replicator::Replicator;
pub use state_machine::StateMachine;
