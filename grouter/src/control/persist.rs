//! What this node keeps on disk under `state_dir`: its own config writes (`config.jsonl`)
//! and its audit trail (`audit.jsonl`), one JSON object per line, appended and flushed to
//! disk before a write is acknowledged.
//!
//! Owns: the file formats, their modes (0600 files in a 0700 directory: uploaded keys are in
//! `config.jsonl`) and compaction at start-up. Must never: log a value (a certificate's key
//! is one), or stop the node over one bad line (it is skipped, counted and named by line
//! number).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead as _, BufReader, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::table::{ConfigValue, Hlc};

const CONFIG_FILE: &str = "config.jsonl";
const AUDIT_FILE: &str = "audit.jsonl";

/// One persisted config write.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Line {
    key: String,
    hlc_ms: u64,
    hlc_counter: u32,
    hlc_node: String,
    /// The value as UTF-8 JSON text; `None` for a deletion.
    value: Option<String>,
}

/// One audited write (what `/v1/audit` lists).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Unix milliseconds of the write.
    pub at_ms: u64,
    /// The write's clock, `<ms>.<counter>@<node>`.
    pub hlc: String,
    /// The node that took the write.
    pub node_id: String,
    /// Which token wrote it (`write`).
    pub token: String,
    /// `put` or `delete`.
    pub action: String,
    /// The config key.
    pub key: String,
    /// A short description of the value (never a key or a certificate).
    pub summary: String,
}

/// The open state directory.
#[derive(Debug)]
pub struct StateDir {
    dir: PathBuf,
    config: Mutex<File>,
    audit: Mutex<File>,
}

/// What was read back at start-up.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The latest write of every key, by clock.
    pub writes: Vec<(String, ConfigValue)>,
    /// The audit trail, oldest first.
    pub audit: Vec<AuditEntry>,
    /// Lines that could not be read (counted, never fatal).
    pub bad_lines: usize,
}

impl StateDir {
    /// Open (creating) `dir`, read back what it holds, and compact the config file to one
    /// line per key.
    pub fn open(dir: &Path, audit_keep: usize) -> io::Result<(StateDir, Loaded)> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let mut loaded = Loaded::default();
        let config_path = dir.join(CONFIG_FILE);
        let mut latest: HashMap<String, ConfigValue> = HashMap::new();
        for (n, line) in read_lines(&config_path)?.into_iter().enumerate() {
            match serde_json::from_str::<Line>(&line) {
                Ok(l) => {
                    let value = ConfigValue {
                        hlc: Hlc {
                            ms: l.hlc_ms,
                            counter: l.hlc_counter,
                            node: Arc::from(l.hlc_node),
                        },
                        value: l.value.map(|v| Arc::from(v.into_bytes())),
                    };
                    match latest.get(&l.key) {
                        Some(cur) if cur.hlc >= value.hlc => {}
                        _ => {
                            latest.insert(l.key, value);
                        }
                    }
                }
                Err(_) => {
                    loaded.bad_lines += 1;
                    warn!(file = %config_path.display(), line = n + 1, "state: unreadable line skipped");
                }
            }
        }
        let mut writes: Vec<(String, ConfigValue)> = latest.into_iter().collect();
        writes.sort_by(|a, b| a.1.hlc.cmp(&b.1.hlc));
        // Compact: write the survivors to a new file and rename it over the old one.
        let tmp = dir.join(format!("{CONFIG_FILE}.tmp"));
        {
            let mut f = create_private(&tmp, true)?;
            for (key, value) in &writes {
                f.write_all(&line_of(key, value))?;
            }
            f.sync_all()?;
        }
        fs::rename(&tmp, &config_path)?;
        loaded.writes = writes;

        let audit_path = dir.join(AUDIT_FILE);
        let mut audit: Vec<AuditEntry> = Vec::new();
        for line in read_lines(&audit_path)? {
            match serde_json::from_str(&line) {
                Ok(e) => audit.push(e),
                Err(_) => loaded.bad_lines += 1,
            }
        }
        let skip = audit.len().saturating_sub(audit_keep);
        loaded.audit = audit.split_off(skip);
        let state = StateDir {
            config: Mutex::new(create_private(&config_path, false)?),
            audit: Mutex::new(create_private(&audit_path, false)?),
            dir: dir.to_path_buf(),
        };
        Ok((state, loaded))
    }

    /// Append one config write and flush it to disk.
    pub fn append_write(&self, key: &str, value: &ConfigValue) -> io::Result<()> {
        let mut f = self.config.lock();
        f.write_all(&line_of(key, value))?;
        f.sync_data()
    }

    /// Append one audit entry (flushed, not synced: the config line is the write).
    pub fn append_audit(&self, entry: &AuditEntry) -> io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(io::Error::other)?;
        line.push(b'\n');
        self.audit.lock().write_all(&line)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

fn line_of(key: &str, value: &ConfigValue) -> Vec<u8> {
    let line = Line {
        key: key.to_string(),
        hlc_ms: value.hlc.ms,
        hlc_counter: value.hlc.counter,
        hlc_node: value.hlc.node.to_string(),
        value: value
            .value
            .as_deref()
            .map(|v| String::from_utf8_lossy(v).into_owned()),
    };
    let mut out = serde_json::to_vec(&line).unwrap_or_default();
    out.push(b'\n');
    out
}

/// A file only this user can read, appended to (or truncated when `truncate`).
fn create_private(path: &Path, truncate: bool) -> io::Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .append(!truncate)
        .write(true)
        .truncate(truncate)
        .mode(0o600)
        .open(path)?;
    // A file made earlier by someone else's umask is tightened too.
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

fn read_lines(path: &Path) -> io::Result<Vec<String>> {
    match File::open(path) {
        Ok(f) => {
            let mut out = Vec::new();
            for line in BufReader::new(f).lines() {
                let line = line?;
                if !line.trim().is_empty() {
                    out.push(line);
                }
            }
            Ok(out)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cv(ms: u64, v: Option<&str>) -> ConfigValue {
        ConfigValue {
            hlc: Hlc {
                ms,
                counter: 0,
                node: "lon-1".into(),
            },
            value: v.map(|v| Arc::from(v.as_bytes())),
        }
    }

    #[test]
    fn writes_survive_a_reopen_latest_per_key_in_private_files() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        {
            let (s, loaded) = StateDir::open(&state_dir, 10).unwrap();
            assert!(loaded.writes.is_empty());
            s.append_write("policy/site/lon", &cv(1, Some(r#"{"drained":true}"#)))
                .unwrap();
            s.append_write("policy/site/lon", &cv(3, None)).unwrap();
            s.append_write("cert/a.com", &cv(2, Some("{}"))).unwrap();
        }
        // A torn last line (a crash mid-append) is skipped, not fatal.
        let mut f = OpenOptions::new()
            .append(true)
            .open(state_dir.join(CONFIG_FILE))
            .unwrap();
        f.write_all(b"{\"key\":\"x\",").unwrap();
        drop(f);
        let (_, loaded) = StateDir::open(&state_dir, 10).unwrap();
        assert_eq!(loaded.bad_lines, 1);
        let keys: Vec<_> = loaded
            .writes
            .iter()
            .map(|(k, v)| (k.as_str(), v.hlc.ms, v.is_deleted()))
            .collect();
        assert_eq!(
            keys,
            [("cert/a.com", 2, false), ("policy/site/lon", 3, true)]
        );
        for name in [CONFIG_FILE, AUDIT_FILE] {
            let mode = fs::metadata(state_dir.join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        let mode = fs::metadata(&state_dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
