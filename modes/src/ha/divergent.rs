//! Divergent tails: WAL records a former primary wrote that the new primary never had.
//!
//! They are never silently discarded: before the log is truncated they are written to
//! `DATA_DIR/divergent/<unix ms>-after-<index>.jsonl`, one JSON object per record
//! (`index`, `epoch`, `command`), reported in `/health` and logged, for an operator to
//! inspect or re-apply.

use std::io::Write;
use std::path::{Path, PathBuf};

use meridian_wal::Record;
use serde::Serialize;

use crate::payload::LogPayload;

#[derive(Clone, Debug, Serialize)]
pub struct DivergentTail {
    pub file: String,
    pub after_index: u64,
    pub records: usize,
}

pub fn save(dir: &Path, after: u64, records: &[Record]) -> std::io::Result<DivergentTail> {
    std::fs::create_dir_all(dir)?;
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let path: PathBuf = dir.join(format!("{ms}-after-{after}.jsonl"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
    for r in records {
        let command = LogPayload::decode(&r.payload).map_or_else(
            |e| serde_json::json!({"undecodable": e.to_string(), "payload_len": r.payload.len()}),
            |p| serde_json::to_value(p.command()).unwrap_or(serde_json::Value::Null),
        );
        serde_json::to_writer(&mut f, &serde_json::json!({"index": r.index, "epoch": r.epoch, "command": command}))?;
        f.write_all(b"\n")?;
    }
    let f = f.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(DivergentTail { file: path.display().to_string(), after_index: after, records: records.len() })
}

/// Tails saved by earlier runs, so `/health` keeps reporting them after a restart.
pub fn list(dir: &Path) -> Vec<DivergentTail> {
    let Ok(rd) = std::fs::read_dir(dir) else { return vec![] };
    let mut out: Vec<DivergentTail> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
        .map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let after_index = name.split("-after-").nth(1).and_then(|s| s.trim_end_matches(".jsonl").parse().ok()).unwrap_or(0);
            let records = std::fs::read_to_string(e.path()).map_or(0, |s| s.lines().count());
            DivergentTail { file: e.path().display().to_string(), after_index, records }
        })
        .collect();
    out.sort_by(|a, b| a.file.cmp(&b.file));
    out
}
