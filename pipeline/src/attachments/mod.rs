//! Incident attachments: transcripts, recordings and other files that may
//! hold personal data, encrypted at rest in the cold tier and decrypted only
//! for a principal with the `incident_commander` role.
//!
//! Each attachment is one object,
//! `<archive.cold_url>/incidents/<incident id>/attachments/<name>.enc`,
//! written once and never replaced. Its format is described in [`envelope`].
//! Every decryption attempt, granted or not, is appended to the audit log
//! ([`audit`]) before any plaintext is returned.

pub mod access;
pub mod audit;
pub mod envelope;

use std::path::Path;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use zeroize::Zeroizing;

use access::{authorize_decrypt, AccessDenied, Principals, PrincipalsError};
use audit::{AuditEntry, AuditError, AuditLog};
use envelope::{EnvelopeError, Keyring, MasterKey};

/// Maximum length of an incident id or attachment name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Extension of stored attachments.
const OBJECT_EXTENSION: &str = ".enc";

#[derive(Debug, thiserror::Error)]
pub enum AttachmentError {
    #[error("{what} {value:?} is invalid: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("cold tier URL {url:?} is not usable: {reason}. Set archive.cold_url to a folder path, file:///absolute/path or s3://bucket/prefix")]
    StoreUrl { url: String, reason: String },
    #[error("object store operation on {location} failed: {source}")]
    Store {
        location: String,
        source: object_store::Error,
    },
    #[error("attachment {name:?} of incident {incident_id} already exists at {url}. Attachments are never replaced; store the new file under another --name")]
    AlreadyExists {
        incident_id: String,
        name: String,
        url: String,
    },
    #[error("incident {incident_id} has no attachment {name:?} (looked for {url}). Run `blameless attachment list --incident {incident_id}` to see its attachments")]
    NotFound {
        incident_id: String,
        name: String,
        url: String,
    },
    #[error("decryption refused: {0}")]
    AccessDenied(AccessDenied),
    #[error("decryption refused: {0}")]
    Principals(PrincipalsError),
    #[error("could not decrypt {url}: {source}")]
    Envelope { url: String, source: EnvelopeError },
    #[error("could not encrypt the attachment: {0}")]
    Encrypt(EnvelopeError),
    #[error("decryption refused because the attempt could not be recorded: {audit}{}", attempt.as_ref().map(|e| format!(". The attempt itself ended with: {e}")).unwrap_or_default())]
    AuditUnavailable {
        audit: AuditError,
        attempt: Option<Box<AttachmentError>>,
    },
}

impl AttachmentError {
    /// Outcome written to the audit log for a decryption attempt that ended
    /// with this error: `refused: …` when the request was not allowed,
    /// `failed: …` when it was allowed but could not be carried out.
    fn audit_outcome(&self) -> String {
        match self {
            AttachmentError::InvalidName { what, .. } => format!("refused: invalid {what}"),
            AttachmentError::AccessDenied(denied) => format!("refused: {}", denied.audit_reason()),
            AttachmentError::Principals(PrincipalsError::NotConfigured) => "refused: no principals file configured".into(),
            AttachmentError::Principals(_) => "refused: principals file unreadable or invalid".into(),
            AttachmentError::NotFound { .. } => "failed: no such attachment".into(),
            AttachmentError::Envelope { source, .. } => format!("failed: {}", source.audit_reason()),
            AttachmentError::StoreUrl { .. } | AttachmentError::Store { .. } => "failed: object store error".into(),
            AttachmentError::AlreadyExists { .. } | AttachmentError::Encrypt(_) | AttachmentError::AuditUnavailable { .. } => {
                "failed: internal error".into()
            }
        }
    }
}

/// Checks an incident id or attachment name, which become parts of an
/// object key: 1 to 128 ASCII letters, digits, `.`, `_` or `-`, not starting
/// with `.` and without `..`. This keeps keys predictable and rules out `/`,
/// path traversal and control characters.
pub fn check_name(what: &'static str, value: &str) -> Result<(), AttachmentError> {
    let invalid = |reason: &str| AttachmentError::InvalidName {
        what,
        value: value.to_string(),
        reason: reason.to_string(),
    };
    if value.is_empty() || value.len() > MAX_NAME_BYTES {
        return Err(invalid("it must be 1 to 128 characters long"));
    }
    if !value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return Err(invalid(
            "use only ASCII letters, digits, '.', '_' and '-' (no '/', spaces or control characters), such as \"call-1234-transcript.txt\"",
        ));
    }
    if value.starts_with('.') || value.contains("..") {
        return Err(invalid("it must not start with '.' or contain \"..\""));
    }
    Ok(())
}

/// An attachment as listed: its name and the size of its encrypted object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentInfo {
    pub name: String,
    pub encrypted_bytes: u64,
    pub last_modified: chrono::DateTime<chrono::Utc>,
}

/// The cold tier, holding attachments under
/// `incidents/<incident id>/attachments/`.
#[derive(Clone)]
pub struct AttachmentStore {
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    url: String,
}

impl AttachmentStore {
    /// Opens a folder path, a `file://` URL or an object store URL, as
    /// `ArchiveStore::open` does for the archive. S3 settings come from the
    /// `AWS_*` variables.
    pub fn open(location: &str) -> Result<AttachmentStore, AttachmentError> {
        let (store, prefix, url) =
            crate::stages::archive::open_location(location).map_err(|reason| AttachmentError::StoreUrl {
                url: location.to_string(),
                reason,
            })?;
        Ok(AttachmentStore { store, prefix, url })
    }

    fn folder(incident_id: &str) -> String {
        format!("incidents/{incident_id}/attachments")
    }

    fn relative(incident_id: &str, name: &str) -> String {
        format!("{}/{name}{OBJECT_EXTENSION}", AttachmentStore::folder(incident_id))
    }

    fn path(&self, relative: &str) -> StorePath {
        let mut path = self.prefix.clone();
        for part in relative.split('/') {
            path = path.join(part);
        }
        path
    }

    /// Returns the URL of an attachment's object.
    pub fn url_of(&self, incident_id: &str, name: &str) -> String {
        format!("{}/{}", self.url, AttachmentStore::relative(incident_id, name))
    }

    /// Writes an encrypted object, failing if the attachment exists.
    async fn put_new(&self, incident_id: &str, name: &str, object: Vec<u8>) -> Result<String, AttachmentError> {
        let url = self.url_of(incident_id, name);
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        let path = self.path(&AttachmentStore::relative(incident_id, name));
        match self.store.put_opts(&path, PutPayload::from(object), options).await {
            Ok(_) => Ok(url),
            Err(object_store::Error::AlreadyExists { .. }) => Err(AttachmentError::AlreadyExists {
                incident_id: incident_id.to_string(),
                name: name.to_string(),
                url,
            }),
            Err(source) => Err(AttachmentError::Store { location: url, source }),
        }
    }

    /// Reads an encrypted object.
    async fn fetch(&self, incident_id: &str, name: &str) -> Result<Vec<u8>, AttachmentError> {
        let url = self.url_of(incident_id, name);
        let path = self.path(&AttachmentStore::relative(incident_id, name));
        let result = match self.store.get(&path).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(AttachmentError::NotFound {
                    incident_id: incident_id.to_string(),
                    name: name.to_string(),
                    url,
                })
            }
            Err(source) => return Err(AttachmentError::Store { location: url, source }),
        };
        let bytes = result
            .bytes()
            .await
            .map_err(|source| AttachmentError::Store { location: url, source })?;
        Ok(bytes.to_vec())
    }

    /// Lists the attachments of an incident, sorted by name. Nothing is
    /// decrypted, so no key or role is needed.
    pub async fn list(&self, incident_id: &str) -> Result<Vec<AttachmentInfo>, AttachmentError> {
        check_name("incident id", incident_id)?;
        let folder = AttachmentStore::folder(incident_id);
        let objects: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&self.path(&folder)))
            .try_collect()
            .await
            .map_err(|source| AttachmentError::Store {
                location: format!("{}/{folder}/", self.url),
                source,
            })?;
        let mut attachments: Vec<AttachmentInfo> = objects
            .into_iter()
            .filter_map(|meta| {
                let file_name = meta.location.filename()?;
                let name = file_name.strip_suffix(OBJECT_EXTENSION)?;
                Some(AttachmentInfo {
                    name: name.to_string(),
                    encrypted_bytes: meta.size,
                    last_modified: meta.last_modified,
                })
            })
            .collect();
        attachments.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(attachments)
    }

    /// Encrypts `plaintext` under `master` and stores it as attachment
    /// `name` of `incident_id`. Returns the object's URL.
    pub async fn encrypt_and_store(
        &self,
        master: &MasterKey,
        incident_id: &str,
        name: &str,
        plaintext: &[u8],
    ) -> Result<String, AttachmentError> {
        check_name("incident id", incident_id)?;
        check_name("attachment name", name)?;
        let object = envelope::encrypt(master, incident_id, name, plaintext).map_err(AttachmentError::Encrypt)?;
        let url = self.put_new(incident_id, name, object).await?;
        tracing::info!(
            incident_id,
            attachment = name,
            plaintext_bytes = plaintext.len(),
            master_key_id = master.id(),
            url = %url,
            "attachment encrypted and stored"
        );
        Ok(url)
    }
}

/// A request to decrypt one attachment on behalf of a principal.
#[derive(Debug, Clone, Copy)]
pub struct DecryptRequest<'a> {
    pub principal: &'a str,
    pub incident_id: &'a str,
    pub name: &'a str,
}

/// Decrypts an attachment if `request.principal` has the
/// `incident_commander` role in the principals file, and appends one line
/// for the attempt to `audit`, whatever its outcome. The plaintext is
/// returned only after that line is on disk. If the line cannot be written,
/// the plaintext is dropped (and zeroed) and the call fails.
pub async fn decrypt_attachment(
    store: &AttachmentStore,
    keyring: &Keyring,
    principals_file: Option<&Path>,
    audit: &AuditLog,
    request: DecryptRequest<'_>,
) -> Result<Zeroizing<Vec<u8>>, AttachmentError> {
    let attempt = attempt_decrypt(store, keyring, principals_file, request).await;
    let outcome = match &attempt {
        Ok(_) => "granted".to_string(),
        Err(error) => error.audit_outcome(),
    };
    let entry = AuditEntry::now(request.principal, "decrypt", request.incident_id, request.name, outcome);
    if let Err(audit_error) = audit.append(&entry) {
        tracing::error!(
            error = %audit_error,
            principal = request.principal,
            incident_id = request.incident_id,
            attachment = request.name,
            "audit log not writable, decryption refused"
        );
        return Err(AttachmentError::AuditUnavailable {
            audit: audit_error,
            attempt: attempt.err().map(Box::new),
        });
    }
    // A refusal or failure is returned to the caller, which reports it, so
    // only a granted decryption is logged here.
    if let Ok(plaintext) = &attempt {
        tracing::info!(
            principal = request.principal,
            incident_id = request.incident_id,
            attachment = request.name,
            plaintext_bytes = plaintext.len(),
            "attachment decrypted"
        );
    }
    attempt
}

async fn attempt_decrypt(
    store: &AttachmentStore,
    keyring: &Keyring,
    principals_file: Option<&Path>,
    request: DecryptRequest<'_>,
) -> Result<Zeroizing<Vec<u8>>, AttachmentError> {
    check_name("incident id", request.incident_id)?;
    check_name("attachment name", request.name)?;
    let principals = Principals::load(principals_file).map_err(AttachmentError::Principals)?;
    authorize_decrypt(&principals, request.principal).map_err(AttachmentError::AccessDenied)?;
    let object = store.fetch(request.incident_id, request.name).await?;
    envelope::decrypt(keyring, request.incident_id, request.name, &object).map_err(|source| AttachmentError::Envelope {
        url: store.url_of(request.incident_id, request.name),
        source,
    })
}

#[cfg(test)]
mod tests;
