//! Is there room on the disk again? After a storage error (a full disk) a node probes before
//! it opens its storage again: [`probe_room`] writes and syncs [`PROBE_BYTES`] where the WAL
//! lives, then removes them. Used by standalone (which reopens in place) and by the node
//! restarting a cluster mode.

/// Room the disk must have before the node takes writes again after a storage error.
pub const PROBE_BYTES: usize = 8 << 20;

/// Writes and syncs [`PROBE_BYTES`] in `dir`, then removes them: is there room to go on?
pub fn probe_room(dir: &std::path::Path) -> Result<(), String> {
    use std::io::Write as _;
    let path = dir.join(".room-probe");
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&path)?;
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..PROBE_BYTES / chunk.len() {
            f.write_all(&chunk)?;
        }
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    result.map_err(|e| format!("no room yet in {}: {e}", dir.display()))
}

