//! This node's name when `MERIDIAN_CLUSTER_NODE_ID` is unset: generated once and kept in
//! `DATA_DIR/node_id`, as the seed guide's "auto-generated" default says.
//!
//! A data directory that already holds data but no id file ran under the former default,
//! `node1`, and keeps that name. The id must never change under a data directory: HA epochs carry a tag derived from it,
//! and peers recognise a node by it. So the file is written atomically (temporary file,
//! fsync, rename, fsync of the directory) and a file that does not hold a valid id stops the
//! node instead of being replaced by a new name.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The file, inside the data directory.
pub const FILE: &str = "node_id";

/// The default before ids were generated: a data directory that already holds data but no
/// id file ran under it, and keeps it (an upgrade must not rename a node).
pub const FORMER_DEFAULT: &str = "node1";

#[derive(Debug, thiserror::Error)]
pub enum NodeIdError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} holds {found:?}, not a node id (letters, digits, '-', '_', '.'; at most 64): put the node's id back in it, or set MERIDIAN_CLUSTER_NODE_ID")]
    Damaged { path: PathBuf, found: String },
    #[error("cannot store the generated node id in {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Whether `id` is a usable node name.
pub fn valid(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// The configured id when there is one; otherwise the one kept in `data_dir`, generated and
/// stored on the first start. Returns the id and whether it was generated just now.
pub fn resolve(data_dir: &Path, configured: &str) -> Result<(String, bool), NodeIdError> {
    if !configured.is_empty() {
        return Ok((configured.to_owned(), false));
    }
    let path = data_dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if valid(id) {
                Ok((id.to_owned(), false))
            } else {
                Err(NodeIdError::Damaged { path, found: text.chars().take(80).collect() })
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let had_data = data_dir.join("state.redb").exists() || data_dir.join("wal").exists();
            let id = if had_data { FORMER_DEFAULT.to_owned() } else { format!("node-{:016x}", rand::random::<u64>()) };
            store(data_dir, &id).map_err(|source| NodeIdError::Write { path, source })?;
            Ok((id, true))
        }
        Err(source) => Err(NodeIdError::Read { path, source }),
    }
}

fn store(data_dir: &Path, id: &str) -> std::io::Result<()> {
    let tmp = data_dir.join(format!("{FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(format!("{id}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, data_dir.join(FILE))?;
    std::fs::File::open(data_dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_id_is_kept_and_a_configured_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let (first, generated) = resolve(dir.path(), "").unwrap();
        assert!(generated && valid(&first) && first.starts_with("node-"), "{first}");
        let (again, generated) = resolve(dir.path(), "").unwrap();
        assert_eq!((again.as_str(), generated), (first.as_str(), false));
        assert_eq!(resolve(dir.path(), "n7").unwrap().0, "n7");
        let other = tempfile::tempdir().unwrap();
        assert_ne!(resolve(other.path(), "").unwrap().0, first, "two data directories got one id");
    }

    #[test]
    fn data_from_before_generated_ids_keeps_the_former_default() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("wal")).unwrap();
        assert_eq!(resolve(dir.path(), "").unwrap(), (FORMER_DEFAULT.to_owned(), true));
        assert_eq!(std::fs::read_to_string(dir.path().join(FILE)).unwrap().trim(), FORMER_DEFAULT);
    }

    #[test]
    fn a_damaged_id_file_stops_the_node() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "not an id!\n").unwrap();
        assert!(matches!(resolve(dir.path(), ""), Err(NodeIdError::Damaged { .. })));
        std::fs::write(dir.path().join(FILE), "").unwrap();
        assert!(matches!(resolve(dir.path(), ""), Err(NodeIdError::Damaged { .. })));
    }
}
