//! The attachment audit log: an append-only JSON Lines file with one line
//! per decryption attempt.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// One line of the audit log. It contains no plaintext or key material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// UTC time of the attempt, ISO 8601 with milliseconds.
    pub time: String,
    /// Principal named with `--principal` or `BLAMELESS_PRINCIPAL`.
    pub principal: String,
    /// Operating-system account that ran the command, from `USER` or
    /// `LOGNAME`, when set.
    pub os_user: Option<String>,
    /// Always `decrypt` so far.
    pub action: String,
    pub incident_id: String,
    pub attachment: String,
    /// `granted`, `refused: <reason>` or `failed: <reason>`.
    pub outcome: String,
}

impl AuditEntry {
    /// Builds an entry stamped with the current time and account.
    pub fn now(principal: &str, action: &str, incident_id: &str, attachment: &str, outcome: String) -> AuditEntry {
        let os_user = ["USER", "LOGNAME"]
            .iter()
            .find_map(|name| std::env::var(name).ok().filter(|value| !value.is_empty()));
        AuditEntry {
            time: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            principal: principal.to_string(),
            os_user,
            action: action.to_string(),
            incident_id: incident_id.to_string(),
            attachment: attachment.to_string(),
            outcome,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("could not write the audit log {path}: {source}. Make the folder writable or set attachments.audit_log to a writable file")]
pub struct AuditError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// The audit log file. Each [`AuditLog::append`] opens it in append mode,
/// writes one line in a single write and flushes it to disk.
#[derive(Debug, Clone)]
pub struct AuditLog {
    path: PathBuf,
}

impl AuditLog {
    pub fn new(path: impl Into<PathBuf>) -> AuditLog {
        AuditLog { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `entry` and waits until it is on disk (`fsync`). A new file
    /// is created with mode 0600 on Unix, with its missing parent folders.
    pub fn append(&self, entry: &AuditEntry) -> Result<(), AuditError> {
        let error = |source| AuditError {
            path: self.path.clone(),
            source,
        };
        if let Some(parent) = self.path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(error)?;
        }
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&self.path).map_err(error)?;
        let mut line = serde_json::to_vec(entry).map_err(|e| error(std::io::Error::other(e)))?;
        line.push(b'\n');
        file.write_all(&line).map_err(error)?;
        file.sync_data().map_err(error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_writes_one_line_each() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path().join("audit/attachments.jsonl"));
        let first = AuditEntry::now("alice", "decrypt", "inc-1", "a.txt", "granted".into());
        let second = AuditEntry::now("bob", "decrypt", "inc-1", "a.txt", "refused: missing role incident_commander".into());
        log.append(&first).unwrap();
        log.append(&second).unwrap();

        let text = std::fs::read_to_string(log.path()).unwrap();
        let lines: Vec<AuditEntry> = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
        assert_eq!(lines, vec![first, second]);
    }

    #[test]
    fn time_is_utc_with_milliseconds() {
        let entry = AuditEntry::now("alice", "decrypt", "inc-1", "a.txt", "granted".into());
        assert_eq!(entry.time.len(), "2025-12-12T15:01:53.383Z".len(), "{}", entry.time);
        assert!(entry.time.ends_with('Z'), "{}", entry.time);
        assert!(chrono::DateTime::parse_from_rfc3339(&entry.time).is_ok(), "{}", entry.time);
    }

    #[cfg(unix)]
    #[test]
    fn new_log_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path().join("attachments.jsonl"));
        log.append(&AuditEntry::now("alice", "decrypt", "inc-1", "a.txt", "granted".into()))
            .unwrap();
        let mode = std::fs::metadata(log.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn unwritable_log_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        // A path below a regular file cannot be created, even by root.
        let blocker = dir.path().join("not-a-folder");
        std::fs::write(&blocker, "").unwrap();
        let log = AuditLog::new(blocker.join("attachments.jsonl"));
        let error = log
            .append(&AuditEntry::now("alice", "decrypt", "inc-1", "a.txt", "granted".into()))
            .unwrap_err();
        assert!(error.to_string().contains("not-a-folder"), "{error}");
        assert!(error.to_string().contains("attachments.audit_log"), "{error}");
    }
}
