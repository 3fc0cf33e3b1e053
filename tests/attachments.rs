//! `blameless attachment` run end to end as a user would, with a temporary
//! folder as the cold tier.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A master key of decimal digits and one `e`. Read as TOML it would be a
/// float, so this also checks that the variable is taken verbatim.
const MASTER_KEY: &str = "12345678901234567890123456789012345678901234567890123456789e0123";
const INCIDENT: &str = "6f1c2b9e-0d4a-5c3b-9a8e-1f2d3c4b5a69";
const NAME: &str = "call-transcript.txt";
const PLAINTEXT: &str = "Agent: how can I help? Customer: my number is 555-0100.\n";
const PLAINTEXT_MARKER: &str = "555-0100";

struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("principals.toml"),
            "[principals]\nalice = [\"incident_commander\"]\nbob = [\"reviewer\"]\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("transcript.txt"), PLAINTEXT).unwrap();
        Workspace { dir }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    fn object_path(&self) -> PathBuf {
        self.path(&format!("cold/incidents/{INCIDENT}/attachments/{NAME}.enc"))
    }

    /// Returns a command with only this workspace's settings: every other
    /// BLAMELESS variable is removed.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_blameless"));
        for (name, _) in std::env::vars() {
            if name.starts_with("BLAMELESS") {
                command.env_remove(name);
            }
        }
        command
            .args(args)
            .current_dir(self.dir.path())
            .env("BLAMELESS__ARCHIVE__COLD_URL", self.path("cold"))
            .env("BLAMELESS__ATTACHMENTS__MASTER_KEY", MASTER_KEY)
            .env("BLAMELESS__ATTACHMENTS__PRINCIPALS_FILE", self.path("principals.toml"))
            .env("BLAMELESS__ATTACHMENTS__AUDIT_LOG", self.path("audit/attachments.jsonl"));
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn put(&self) -> Output {
        let file = self.path("transcript.txt");
        self.run(&["attachment", "put", "--incident", INCIDENT, "--name", NAME, "--file", file.to_str().unwrap()])
    }

    fn get(&self, principal: &str, out: &str) -> Output {
        let out = self.path(out);
        self.run(&[
            "attachment",
            "get",
            "--incident",
            INCIDENT,
            "--name",
            NAME,
            "--out",
            out.to_str().unwrap(),
            "--principal",
            principal,
        ])
    }

    fn audit_lines(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.path("audit/attachments.jsonl")).unwrap_or_default();
        assert!(!text.contains(PLAINTEXT_MARKER), "{text}");
        text.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn put_stores_ciphertext_only() {
    let workspace = Workspace::new();
    let output = workspace.put();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains(&format!("incidents/{INCIDENT}/attachments/{NAME}.enc")), "{}", stdout(&output));
    let object = std::fs::read(workspace.object_path()).unwrap();
    assert_eq!(&object[..8], b"BLMLSATT");
    assert!(!String::from_utf8_lossy(&object).contains(PLAINTEXT_MARKER));
}

#[test]
fn put_twice_keeps_first() {
    let workspace = Workspace::new();
    assert!(workspace.put().status.success());
    let before = std::fs::read(workspace.object_path()).unwrap();
    let output = workspace.put();
    assert!(!output.status.success());
    assert!(stderr(&output).contains("already exists"), "{}", stderr(&output));
    assert_eq!(std::fs::read(workspace.object_path()).unwrap(), before);
}

#[test]
fn list_shows_names() {
    let workspace = Workspace::new();
    let empty = workspace.run(&["attachment", "list", "--incident", INCIDENT]);
    assert!(empty.status.success(), "{}", stderr(&empty));
    assert!(stdout(&empty).is_empty(), "{}", stdout(&empty));
    assert!(stderr(&empty).contains("has no attachments"), "{}", stderr(&empty));

    assert!(workspace.put().status.success());
    let listed = workspace.run(&["attachment", "list", "--incident", INCIDENT]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    let text = stdout(&listed);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(lines[0].starts_with(&format!("{NAME}\t")), "{text}");
}

#[test]
fn incident_commander_gets_plaintext() {
    let workspace = Workspace::new();
    assert!(workspace.put().status.success());
    let output = workspace.get("alice", "plain.txt");
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(std::fs::read_to_string(workspace.path("plain.txt")).unwrap(), PLAINTEXT);
    #[cfg(unix)]
    assert_eq!(mode(&workspace.path("plain.txt")), 0o600);

    let lines = workspace.audit_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["principal"], "alice");
    assert_eq!(lines[0]["action"], "decrypt");
    assert_eq!(lines[0]["incident_id"], INCIDENT);
    assert_eq!(lines[0]["attachment"], NAME);
    assert_eq!(lines[0]["outcome"], "granted");
}

#[test]
fn reviewer_is_refused() {
    let workspace = Workspace::new();
    assert!(workspace.put().status.success());
    let output = workspace.get("bob", "plain.txt");
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("principal \"bob\" has roles [reviewer] but not incident_commander"), "{message}");
    assert!(!workspace.path("plain.txt").exists());

    let lines = workspace.audit_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["principal"], "bob");
    assert_eq!(lines[0]["outcome"], "refused: missing role incident_commander");
}

#[test]
fn unknown_principal_from_environment_is_refused() {
    let workspace = Workspace::new();
    assert!(workspace.put().status.success());
    let out = workspace.path("plain.txt");
    let output = workspace
        .command(&["attachment", "get", "--incident", INCIDENT, "--name", NAME, "--out", out.to_str().unwrap()])
        .env("BLAMELESS_PRINCIPAL", "mallory")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(stderr(&output).contains("principal \"mallory\" is not listed"), "{}", stderr(&output));
    assert!(!out.exists());
    let lines = workspace.audit_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["principal"], "mallory");
    assert_eq!(lines[0]["outcome"], "refused: unknown principal");
}

#[test]
fn missing_attachment_names_list_command() {
    let workspace = Workspace::new();
    let output = workspace.get("alice", "plain.txt");
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains(&format!("incident {INCIDENT} has no attachment \"{NAME}\"")), "{message}");
    assert!(message.contains("blameless attachment list"), "{message}");
    assert_eq!(workspace.audit_lines()[0]["outcome"], "failed: no such attachment");
}

#[test]
fn tampered_object_is_rejected() {
    let workspace = Workspace::new();
    assert!(workspace.put().status.success());
    let mut object = std::fs::read(workspace.object_path()).unwrap();
    let middle = object.len() / 2;
    object[middle] ^= 0x20;
    std::fs::write(workspace.object_path(), object).unwrap();

    let output = workspace.get("alice", "plain.txt");
    assert!(!output.status.success());
    assert!(stderr(&output).contains("authentication failed"), "{}", stderr(&output));
    assert!(!workspace.path("plain.txt").exists());
    let lines = workspace.audit_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let outcome = lines[0]["outcome"].as_str().unwrap();
    assert!(outcome.starts_with("failed: authentication failed"), "{outcome}");
}

#[test]
fn unwritable_audit_log_refuses() {
    let workspace = Workspace::new();
    assert!(workspace.put().status.success());
    std::fs::write(workspace.path("blocker"), "").unwrap();
    let out = workspace.path("plain.txt");
    let output = workspace
        .command(&[
            "attachment",
            "get",
            "--incident",
            INCIDENT,
            "--name",
            NAME,
            "--out",
            out.to_str().unwrap(),
            "--principal",
            "alice",
        ])
        .env("BLAMELESS__ATTACHMENTS__AUDIT_LOG", workspace.path("blocker/attachments.jsonl"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("decryption refused because the attempt could not be recorded"),
        "{}",
        stderr(&output)
    );
    assert!(!out.exists());
}

#[test]
fn existing_out_file_is_not_overwritten() {
    let workspace = Workspace::new();
    assert!(workspace.put().status.success());
    std::fs::write(workspace.path("plain.txt"), "keep").unwrap();
    let output = workspace.get("alice", "plain.txt");
    assert!(!output.status.success());
    assert!(stderr(&output).contains("already exists"), "{}", stderr(&output));
    assert_eq!(std::fs::read_to_string(workspace.path("plain.txt")).unwrap(), "keep");
    assert!(workspace.audit_lines().is_empty());
}

#[test]
fn missing_master_key_explains_setting() {
    let workspace = Workspace::new();
    let file = workspace.path("transcript.txt");
    let output = workspace
        .command(&["attachment", "put", "--incident", INCIDENT, "--name", NAME, "--file", file.to_str().unwrap()])
        .env_remove("BLAMELESS__ATTACHMENTS__MASTER_KEY")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(stderr(&output).contains("BLAMELESS__ATTACHMENTS__MASTER_KEY"), "{}", stderr(&output));
    assert!(!workspace.object_path().exists());
}

#[test]
fn invalid_name_is_rejected() {
    let workspace = Workspace::new();
    let file = workspace.path("transcript.txt");
    let output = workspace.run(&[
        "attachment",
        "put",
        "--incident",
        INCIDENT,
        "--name",
        "../../manifest.json",
        "--file",
        file.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("attachment name \"../../manifest.json\" is invalid"), "{}", stderr(&output));
}

#[test]
fn rotated_key_still_decrypts() {
    let workspace = Workspace::new();
    assert!(workspace.put().status.success());
    let new_key = "ab".repeat(32);
    let out = workspace.path("plain.txt");
    let output = workspace
        .command(&[
            "attachment",
            "get",
            "--incident",
            INCIDENT,
            "--name",
            NAME,
            "--out",
            out.to_str().unwrap(),
            "--principal",
            "alice",
        ])
        .env("BLAMELESS__ATTACHMENTS__MASTER_KEY", &new_key)
        .env("BLAMELESS__ATTACHMENTS__MASTER_KEY_ID", "ak2")
        .env("BLAMELESS__ATTACHMENTS__PREVIOUS_MASTER_KEY", MASTER_KEY)
        .env("BLAMELESS__ATTACHMENTS__PREVIOUS_MASTER_KEY_ID", "ak1")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), PLAINTEXT);
}
