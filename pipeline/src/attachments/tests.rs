//! Tests of storing, authorizing, decrypting and auditing attachments on a
//! local cold tier.

use std::path::PathBuf;

use super::audit::AuditEntry;
use super::envelope::KEY_BYTES;
use super::*;

const INCIDENT: &str = "6f1c2b9e-0d4a-5c3b-9a8e-1f2d3c4b5a69";
const OTHER_INCIDENT: &str = "0b8e7d6c-5a4f-5e3d-8c2b-1a0f9e8d7c6b";
const NAME: &str = "call-transcript.txt";
const PLAINTEXT: &[u8] = b"Customer: my phone number is 555-0100 and my card is 4111111111111111";
const PLAINTEXT_MARKER: &str = "555-0100";

struct Fixture {
    dir: tempfile::TempDir,
    store: AttachmentStore,
    keyring: Keyring,
    principals_file: PathBuf,
    audit: AuditLog,
}

impl Fixture {
    async fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = AttachmentStore::open(dir.path().join("cold").to_str().unwrap()).unwrap();
        let keyring = Keyring {
            current: MasterKey::from_bytes("ak1", [3u8; KEY_BYTES]).unwrap(),
            previous: None,
        };
        let principals_file = dir.path().join("principals.toml");
        std::fs::write(
            &principals_file,
            "[principals]\nalice = [\"incident_commander\"]\nbob = [\"reviewer\"]\n",
        )
        .unwrap();
        let audit = AuditLog::new(dir.path().join("audit/attachments.jsonl"));
        store
            .encrypt_and_store(&keyring.current, INCIDENT, NAME, PLAINTEXT)
            .await
            .unwrap();
        Fixture {
            dir,
            store,
            keyring,
            principals_file,
            audit,
        }
    }

    fn object_path(&self, incident_id: &str, name: &str) -> PathBuf {
        self.dir
            .path()
            .join(format!("cold/incidents/{incident_id}/attachments/{name}.enc"))
    }

    async fn decrypt(&self, principal: &str, incident_id: &str, name: &str) -> Result<Zeroizing<Vec<u8>>, AttachmentError> {
        let request = DecryptRequest {
            principal,
            incident_id,
            name,
        };
        decrypt_attachment(&self.store, &self.keyring, Some(&self.principals_file), &self.audit, request).await
    }

    fn audit_text(&self) -> String {
        std::fs::read_to_string(self.audit.path()).unwrap_or_default()
    }

    fn audit_entries(&self) -> Vec<AuditEntry> {
        self.audit_text()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// Asserts that the audit log contains exactly one line, for `principal`,
    /// with `outcome`, and no plaintext.
    fn assert_single_audit_line(&self, principal: &str, incident_id: &str, name: &str, outcome: &str) {
        let entries = self.audit_entries();
        assert_eq!(entries.len(), 1, "{entries:?}");
        let entry = &entries[0];
        assert_eq!(entry.principal, principal);
        assert_eq!(entry.action, "decrypt");
        assert_eq!(entry.incident_id, incident_id);
        assert_eq!(entry.attachment, name);
        assert_eq!(entry.outcome, outcome);
        assert!(chrono::DateTime::parse_from_rfc3339(&entry.time).is_ok(), "{}", entry.time);
        assert!(!self.audit_text().contains(PLAINTEXT_MARKER), "{}", self.audit_text());
    }
}

#[tokio::test]
async fn incident_commander_decrypts() {
    let fixture = Fixture::new().await;
    let plaintext = fixture.decrypt("alice", INCIDENT, NAME).await.unwrap();
    assert_eq!(plaintext.as_slice(), PLAINTEXT);
    fixture.assert_single_audit_line("alice", INCIDENT, NAME, "granted");
}

#[tokio::test]
async fn stored_object_hides_plaintext() {
    let fixture = Fixture::new().await;
    let object = std::fs::read(fixture.object_path(INCIDENT, NAME)).unwrap();
    assert_eq!(&object[..8], b"BLMLSATT");
    let text = String::from_utf8_lossy(&object);
    assert!(!text.contains(PLAINTEXT_MARKER), "{text}");
}

#[tokio::test]
async fn reviewer_is_refused() {
    let fixture = Fixture::new().await;
    let error = fixture.decrypt("bob", INCIDENT, NAME).await.unwrap_err();
    assert!(matches!(error, AttachmentError::AccessDenied(AccessDenied::MissingRole { .. })), "{error:?}");
    assert!(error.to_string().contains("incident_commander"), "{error}");
    fixture.assert_single_audit_line("bob", INCIDENT, NAME, "refused: missing role incident_commander");
}

#[tokio::test]
async fn unknown_principal_is_refused() {
    let fixture = Fixture::new().await;
    let error = fixture.decrypt("mallory", INCIDENT, NAME).await.unwrap_err();
    assert!(matches!(error, AttachmentError::AccessDenied(AccessDenied::UnknownPrincipal(_))), "{error:?}");
    assert!(error.to_string().contains("\"mallory\""), "{error}");
    fixture.assert_single_audit_line("mallory", INCIDENT, NAME, "refused: unknown principal");
}

#[tokio::test]
async fn missing_principals_file_refuses() {
    let fixture = Fixture::new().await;
    let request = DecryptRequest {
        principal: "alice",
        incident_id: INCIDENT,
        name: NAME,
    };
    let error = decrypt_attachment(&fixture.store, &fixture.keyring, None, &fixture.audit, request)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("attachments.principals_file is not set"), "{error}");
    fixture.assert_single_audit_line("alice", INCIDENT, NAME, "refused: no principals file configured");
}

#[tokio::test]
async fn invalid_name_is_refused_and_audited() {
    let fixture = Fixture::new().await;
    let error = fixture.decrypt("alice", INCIDENT, "../manifest.json").await.unwrap_err();
    assert!(matches!(error, AttachmentError::InvalidName { .. }), "{error:?}");
    fixture.assert_single_audit_line("alice", INCIDENT, "../manifest.json", "refused: invalid attachment name");
}

#[tokio::test]
async fn missing_attachment_fails_and_is_audited() {
    let fixture = Fixture::new().await;
    let error = fixture.decrypt("alice", INCIDENT, "recording.wav").await.unwrap_err();
    assert!(matches!(error, AttachmentError::NotFound { .. }), "{error:?}");
    assert!(error.to_string().contains("blameless attachment list --incident"), "{error}");
    fixture.assert_single_audit_line("alice", INCIDENT, "recording.wav", "failed: no such attachment");
}

#[tokio::test]
async fn tampered_object_fails_and_is_audited() {
    let fixture = Fixture::new().await;
    let path = fixture.object_path(INCIDENT, NAME);
    let mut object = std::fs::read(&path).unwrap();
    let last = object.len() - 1;
    object[last] ^= 0x01;
    std::fs::write(&path, object).unwrap();

    let error = fixture.decrypt("alice", INCIDENT, NAME).await.unwrap_err();
    assert!(
        matches!(error, AttachmentError::Envelope { source: EnvelopeError::AuthenticationFailed { .. }, .. }),
        "{error:?}"
    );
    fixture.assert_single_audit_line(
        "alice",
        INCIDENT,
        NAME,
        "failed: authentication failed (object changed or moved, or wrong master key)",
    );
}

#[tokio::test]
async fn object_moved_to_other_incident_fails() {
    let fixture = Fixture::new().await;
    let moved = fixture.object_path(OTHER_INCIDENT, NAME);
    std::fs::create_dir_all(moved.parent().unwrap()).unwrap();
    std::fs::copy(fixture.object_path(INCIDENT, NAME), &moved).unwrap();

    let error = fixture.decrypt("alice", OTHER_INCIDENT, NAME).await.unwrap_err();
    assert!(
        matches!(error, AttachmentError::Envelope { source: EnvelopeError::AuthenticationFailed { .. }, .. }),
        "{error:?}"
    );
    fixture.assert_single_audit_line(
        "alice",
        OTHER_INCIDENT,
        NAME,
        "failed: authentication failed (object changed or moved, or wrong master key)",
    );
}

#[tokio::test]
async fn wrong_master_key_fails() {
    let mut fixture = Fixture::new().await;
    fixture.keyring.current = MasterKey::from_bytes("ak1", [4u8; KEY_BYTES]).unwrap();
    let error = fixture.decrypt("alice", INCIDENT, NAME).await.unwrap_err();
    assert!(
        matches!(error, AttachmentError::Envelope { source: EnvelopeError::AuthenticationFailed { .. }, .. }),
        "{error:?}"
    );
    assert_eq!(fixture.audit_entries().len(), 1);
}

#[tokio::test]
async fn each_attempt_appends_one_line() {
    let fixture = Fixture::new().await;
    fixture.decrypt("alice", INCIDENT, NAME).await.unwrap();
    fixture.decrypt("bob", INCIDENT, NAME).await.unwrap_err();
    fixture.decrypt("alice", INCIDENT, "absent.txt").await.unwrap_err();
    let outcomes: Vec<String> = fixture.audit_entries().into_iter().map(|entry| entry.outcome).collect();
    assert_eq!(
        outcomes,
        vec![
            "granted".to_string(),
            "refused: missing role incident_commander".to_string(),
            "failed: no such attachment".to_string(),
        ]
    );
}

#[tokio::test]
async fn unwritable_audit_log_refuses_decryption() {
    let mut fixture = Fixture::new().await;
    let blocker = fixture.dir.path().join("not-a-folder");
    std::fs::write(&blocker, "").unwrap();
    fixture.audit = AuditLog::new(blocker.join("attachments.jsonl"));

    let error = fixture.decrypt("alice", INCIDENT, NAME).await.unwrap_err();
    assert!(
        matches!(error, AttachmentError::AuditUnavailable { attempt: None, .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.starts_with("decryption refused because the attempt could not be recorded"), "{message}");
    assert!(message.contains("attachments.audit_log"), "{message}");
}

#[tokio::test]
async fn unwritable_audit_log_keeps_refusal_reason() {
    let mut fixture = Fixture::new().await;
    fixture.audit = AuditLog::new(fixture.dir.path().to_path_buf());
    let error = fixture.decrypt("bob", INCIDENT, NAME).await.unwrap_err();
    let AttachmentError::AuditUnavailable { attempt: Some(attempt), .. } = &error else {
        panic!("{error:?}");
    };
    assert!(matches!(**attempt, AttachmentError::AccessDenied(_)), "{attempt:?}");
    assert!(error.to_string().contains("not incident_commander"), "{error}");
}

#[tokio::test]
async fn existing_attachment_is_not_replaced() {
    let fixture = Fixture::new().await;
    let before = std::fs::read(fixture.object_path(INCIDENT, NAME)).unwrap();
    let error = fixture
        .store
        .encrypt_and_store(&fixture.keyring.current, INCIDENT, NAME, b"replacement")
        .await
        .unwrap_err();
    assert!(matches!(error, AttachmentError::AlreadyExists { .. }), "{error:?}");
    assert!(error.to_string().contains("another --name"), "{error}");
    assert_eq!(std::fs::read(fixture.object_path(INCIDENT, NAME)).unwrap(), before);
}

#[tokio::test]
async fn list_returns_names_in_order() {
    let fixture = Fixture::new().await;
    fixture
        .store
        .encrypt_and_store(&fixture.keyring.current, INCIDENT, "a-recording.wav", b"RIFF")
        .await
        .unwrap();
    let listed = fixture.store.list(INCIDENT).await.unwrap();
    let names: Vec<&str> = listed.iter().map(|info| info.name.as_str()).collect();
    assert_eq!(names, vec!["a-recording.wav", NAME]);
    let transcript = &listed[1];
    let on_disk = std::fs::metadata(fixture.object_path(INCIDENT, NAME)).unwrap().len();
    assert_eq!(transcript.encrypted_bytes, on_disk);

    assert!(fixture.store.list(OTHER_INCIDENT).await.unwrap().is_empty());
}

#[tokio::test]
async fn store_rejects_invalid_names() {
    let fixture = Fixture::new().await;
    let error = fixture
        .store
        .encrypt_and_store(&fixture.keyring.current, "../escape", NAME, PLAINTEXT)
        .await
        .unwrap_err();
    assert!(error.to_string().starts_with("incident id \"../escape\" is invalid"), "{error}");
    assert!(!fixture.dir.path().join("escape").exists());
}

#[test]
fn name_rules() {
    let valid = ["call-1234-transcript.txt", "recording_2.wav", "a", "v1.2.json", &"n".repeat(128)];
    for name in valid {
        assert!(check_name("attachment name", name).is_ok(), "{name:?}");
    }
    let invalid = [
        "",
        "..",
        ".hidden",
        "a..b",
        "a/b",
        "a\\b",
        "with space.txt",
        "tab\there",
        "new\nline",
        "nul\0byte",
        "transcripción.txt",
        &"n".repeat(129),
    ];
    for name in invalid {
        assert!(check_name("attachment name", name).is_err(), "{name:?}");
    }
}
