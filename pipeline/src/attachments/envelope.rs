//! Envelope encryption of one attachment with AES-256-GCM.
//!
//! Every object gets a fresh random 256-bit data key and 96-bit nonce. The
//! data key is itself encrypted ("wrapped") with AES-256-GCM under a master
//! key, with its own random nonce. The object is:
//!
//! ```text
//! offset  size  field
//! 0       8     magic "BLMLSATT"
//! 8       1     format version, 1
//! 9       1     length n of the master key id (1..=64)
//! 10      n     master key id, ASCII
//! 10+n    12    nonce of the key wrap
//! 22+n    48    wrapped data key (32 bytes and a 16-byte tag)
//! 70+n    12    nonce of the content
//! 82+n    ...   ciphertext of the attachment and its 16-byte tag
//! ```
//!
//! The associated data of the key wrap is the header up to the key id. The
//! associated data of the content is the whole header followed by the
//! incident id and the attachment name, each preceded by its length as a
//! 4-byte big-endian number. A changed header byte, or an object copied to
//! another incident or name, therefore fails authentication.

use aes_gcm::aead::{Aead, Generate, KeyInit, Payload};
use aes_gcm::Aes256Gcm;
use base64::Engine;
use zeroize::Zeroizing;

/// First bytes of every encrypted attachment.
pub const MAGIC: [u8; 8] = *b"BLMLSATT";
/// Format version written by [`encrypt`] and the only one [`decrypt`] reads.
pub const VERSION: u8 = 1;
/// Length of a master key and of a data key, in bytes.
pub const KEY_BYTES: usize = 32;
/// Maximum length of a master key id, in bytes.
pub const MAX_KEY_ID_BYTES: usize = 64;

const NONCE_BYTES: usize = 12;
const TAG_BYTES: usize = 16;
const WRAPPED_KEY_BYTES: usize = KEY_BYTES + TAG_BYTES;

type GcmNonce = aes_gcm::aead::Nonce<Aes256Gcm>;

/// A 256-bit master key and its id, which is written into every object it
/// wraps. The key bytes are zeroed on drop and never printed.
#[derive(Clone)]
pub struct MasterKey {
    id: String,
    key: Zeroizing<[u8; KEY_BYTES]>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey").field("id", &self.id).field("key", &"[redacted]").finish()
    }
}

impl MasterKey {
    /// Builds a master key from its id and its text: 64 hexadecimal
    /// characters or the base64 of 32 bytes. The error names neither the key
    /// nor any part of it.
    pub fn parse(id: &str, text: &str) -> Result<MasterKey, String> {
        check_key_id(id)?;
        let key = decode_key_text(text)?;
        Ok(MasterKey { id: id.to_string(), key })
    }

    /// Builds a master key from raw bytes, for tests and tools that hold the
    /// key already decoded.
    pub fn from_bytes(id: &str, bytes: [u8; KEY_BYTES]) -> Result<MasterKey, String> {
        check_key_id(id)?;
        Ok(MasterKey {
            id: id.to_string(),
            key: Zeroizing::new(bytes),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn cipher(&self) -> Aes256Gcm {
        cipher_of(&self.key[..])
    }
}

/// Checks a master key id: 1 to 64 ASCII letters, digits, `.`, `_` or `-`.
pub fn check_key_id(id: &str) -> Result<(), String> {
    let valid_characters = id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if id.is_empty() || id.len() > MAX_KEY_ID_BYTES || !valid_characters {
        return Err(format!(
            "{id:?} is not a valid master key id; use 1 to {MAX_KEY_ID_BYTES} ASCII letters, digits, '.', '_' or '-', such as \"ak1\""
        ));
    }
    Ok(())
}

/// Decodes a master key written as 64 hexadecimal characters or as base64
/// (padded or not) of 32 bytes. Surrounding whitespace is ignored.
pub fn decode_key_text(text: &str) -> Result<Zeroizing<[u8; KEY_BYTES]>, String> {
    let text = text.trim();
    let is_hex = text.len() == 2 * KEY_BYTES && text.bytes().all(|b| b.is_ascii_hexdigit());
    let decoded = if is_hex {
        Zeroizing::new(hex::decode(text).map_err(|_| "is not valid hexadecimal".to_string())?)
    } else {
        let engine = base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT;
        Zeroizing::new(engine.decode(text).map_err(|_| {
            format!(
                "is neither {} hexadecimal characters nor base64; generate one with `openssl rand -hex 32`",
                2 * KEY_BYTES
            )
        })?)
    };
    if decoded.len() != KEY_BYTES {
        return Err(format!(
            "decodes to {} bytes, but a master key is {KEY_BYTES} bytes ({} hexadecimal characters or 44 base64 characters); generate one with `openssl rand -hex 32`",
            decoded.len(),
            2 * KEY_BYTES
        ));
    }
    let mut key = Zeroizing::new([0u8; KEY_BYTES]);
    key.copy_from_slice(&decoded);
    Ok(key)
}

/// The master keys a program may use: the current one, which encrypts, and
/// optionally the previous one, which still decrypts during a rotation.
#[derive(Debug, Clone)]
pub struct Keyring {
    pub current: MasterKey,
    pub previous: Option<MasterKey>,
}

impl Keyring {
    fn find(&self, id: &str) -> Option<&MasterKey> {
        std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .find(|key| key.id == id)
    }

    fn configured_ids(&self) -> String {
        std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .map(|key| format!("{:?}", key.id))
            .collect::<Vec<_>>()
            .join(" and ")
    }
}

/// Reason an object could not be decrypted. None of the messages contains key
/// material or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("the object does not start with the attachment magic bytes, so it is not an encrypted attachment or its first bytes were changed")]
    NotAnAttachment,
    #[error("the object has format version {0}, but this program reads version {VERSION} only; decrypt it with the release that wrote it, or check whether the object was changed")]
    UnsupportedVersion(u8),
    #[error("the object is truncated or its header is damaged")]
    Truncated,
    #[error("the object was encrypted with master key id {found:?}, but only {configured} are configured; set attachments.previous_master_key and previous_master_key_id to that key, or check whether the object was changed")]
    UnknownMasterKey { found: String, configured: String },
    #[error("authentication failed: the object was changed, moved to another incident or name, or master key id {key_id:?} is not the key it was encrypted with")]
    AuthenticationFailed { key_id: String },
    #[error("the system random number generator failed: {0}")]
    Random(String),
    #[error("the attachment is too large to encrypt in one AES-GCM message")]
    TooLarge,
}

impl EnvelopeError {
    /// Short, stable reason for the audit log.
    pub fn audit_reason(&self) -> String {
        match self {
            EnvelopeError::NotAnAttachment => "not an encrypted attachment".into(),
            EnvelopeError::UnsupportedVersion(version) => format!("unsupported format version {version}"),
            EnvelopeError::Truncated => "truncated object".into(),
            EnvelopeError::UnknownMasterKey { found, .. } => format!("unknown master key id {found:?}"),
            EnvelopeError::AuthenticationFailed { .. } => {
                "authentication failed (object changed or moved, or wrong master key)".into()
            }
            EnvelopeError::Random(_) => "random number generator failed".into(),
            EnvelopeError::TooLarge => "attachment too large".into(),
        }
    }
}

/// Associated data of the content: the header, then the incident id and the
/// attachment name, each after its length.
fn content_associated_data(header: &[u8], incident_id: &str, name: &str) -> Vec<u8> {
    let mut data = Vec::with_capacity(header.len() + 8 + incident_id.len() + name.len());
    data.extend_from_slice(header);
    for part in [incident_id, name] {
        let length = u32::try_from(part.len()).unwrap_or(u32::MAX);
        data.extend_from_slice(&length.to_be_bytes());
        data.extend_from_slice(part.as_bytes());
    }
    data
}

fn random_nonce() -> Result<GcmNonce, EnvelopeError> {
    GcmNonce::try_generate().map_err(|e| EnvelopeError::Random(e.to_string()))
}

/// Builds an AES-256-GCM cipher from a key of [`KEY_BYTES`] bytes.
fn cipher_of(key: &[u8]) -> Aes256Gcm {
    Aes256Gcm::new_from_slice(key).expect("callers pass keys of KEY_BYTES bytes")
}

/// Converts a slice that [`parse_header`] cut to the nonce length.
fn nonce_of(bytes: &[u8]) -> GcmNonce {
    GcmNonce::try_from(bytes).expect("parse_header cuts nonces to NONCE_BYTES")
}

/// Encrypts `plaintext` as an attachment named `name` of incident
/// `incident_id`, under `master` with a fresh data key.
pub fn encrypt(master: &MasterKey, incident_id: &str, name: &str, plaintext: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    let data_key = Zeroizing::new(<[u8; KEY_BYTES]>::try_generate().map_err(|e| EnvelopeError::Random(e.to_string()))?);
    let wrap_nonce = random_nonce()?;
    let content_nonce = random_nonce()?;

    let mut header = Vec::with_capacity(82 + master.id.len());
    header.extend_from_slice(&MAGIC);
    header.push(VERSION);
    // check_key_id keeps the id at 64 bytes or fewer, so it fits in one byte.
    header.push(master.id.len() as u8);
    header.extend_from_slice(master.id.as_bytes());
    let wrap_associated_data = header.clone();

    let wrapped_key = master
        .cipher()
        .encrypt(
            &wrap_nonce,
            Payload {
                msg: &data_key[..],
                aad: &wrap_associated_data,
            },
        )
        .map_err(|_| EnvelopeError::TooLarge)?;
    header.extend_from_slice(&wrap_nonce);
    header.extend_from_slice(&wrapped_key);
    header.extend_from_slice(&content_nonce);

    let associated_data = content_associated_data(&header, incident_id, name);
    let ciphertext = cipher_of(&data_key[..])
        .encrypt(
            &content_nonce,
            Payload {
                msg: plaintext,
                aad: &associated_data,
            },
        )
        .map_err(|_| EnvelopeError::TooLarge)?;

    let mut object = header;
    object.extend_from_slice(&ciphertext);
    Ok(object)
}

/// The parts of an object's header, as byte ranges of the object.
struct Header<'a> {
    key_id: &'a str,
    wrap_associated_data: &'a [u8],
    wrap_nonce: &'a [u8],
    wrapped_key: &'a [u8],
    content_nonce: &'a [u8],
    header: &'a [u8],
    ciphertext: &'a [u8],
}

fn parse_header(object: &[u8]) -> Result<Header<'_>, EnvelopeError> {
    if object.len() < MAGIC.len() || object[..MAGIC.len()] != MAGIC {
        return Err(EnvelopeError::NotAnAttachment);
    }
    let version = *object.get(MAGIC.len()).ok_or(EnvelopeError::Truncated)?;
    if version != VERSION {
        return Err(EnvelopeError::UnsupportedVersion(version));
    }
    let key_id_length = usize::from(*object.get(MAGIC.len() + 1).ok_or(EnvelopeError::Truncated)?);
    let key_id_start = MAGIC.len() + 2;
    let wrap_nonce_start = key_id_start + key_id_length;
    let wrapped_key_start = wrap_nonce_start + NONCE_BYTES;
    let content_nonce_start = wrapped_key_start + WRAPPED_KEY_BYTES;
    let ciphertext_start = content_nonce_start + NONCE_BYTES;
    if key_id_length == 0 || object.len() < ciphertext_start + TAG_BYTES {
        return Err(EnvelopeError::Truncated);
    }
    let key_id = std::str::from_utf8(&object[key_id_start..wrap_nonce_start]).map_err(|_| EnvelopeError::Truncated)?;
    Ok(Header {
        key_id,
        wrap_associated_data: &object[..wrap_nonce_start],
        wrap_nonce: &object[wrap_nonce_start..wrapped_key_start],
        wrapped_key: &object[wrapped_key_start..content_nonce_start],
        content_nonce: &object[content_nonce_start..ciphertext_start],
        header: &object[..ciphertext_start],
        ciphertext: &object[ciphertext_start..],
    })
}

/// Returns the id of the master key that wrapped an object's data key,
/// without decrypting anything.
pub fn master_key_id(object: &[u8]) -> Result<&str, EnvelopeError> {
    parse_header(object).map(|header| header.key_id)
}

/// Decrypts an object written by [`encrypt`] for the same incident id and
/// name. The plaintext is zeroed when dropped.
pub fn decrypt(keyring: &Keyring, incident_id: &str, name: &str, object: &[u8]) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    let header = parse_header(object)?;
    let master = keyring.find(header.key_id).ok_or_else(|| EnvelopeError::UnknownMasterKey {
        found: header.key_id.to_string(),
        configured: keyring.configured_ids(),
    })?;
    let authentication_failed = || EnvelopeError::AuthenticationFailed {
        key_id: master.id.clone(),
    };

    let data_key = Zeroizing::new(
        master
            .cipher()
            .decrypt(
                &nonce_of(header.wrap_nonce),
                Payload {
                    msg: header.wrapped_key,
                    aad: header.wrap_associated_data,
                },
            )
            .map_err(|_| authentication_failed())?,
    );
    if data_key.len() != KEY_BYTES {
        return Err(authentication_failed());
    }

    let associated_data = content_associated_data(header.header, incident_id, name);
    let plaintext = cipher_of(&data_key)
        .decrypt(
            &nonce_of(header.content_nonce),
            Payload {
                msg: header.ciphertext,
                aad: &associated_data,
            },
        )
        .map_err(|_| authentication_failed())?;
    Ok(Zeroizing::new(plaintext))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INCIDENT: &str = "6f1c2b9e-0d4a-5c3b-9a8e-1f2d3c4b5a69";
    const NAME: &str = "call-transcript.txt";
    const PLAINTEXT: &[u8] = b"Agent: thank you for calling. Customer: my card is 4111 1111 1111 1111";

    fn keyring() -> Keyring {
        Keyring {
            current: MasterKey::from_bytes("ak1", [7u8; KEY_BYTES]).unwrap(),
            previous: None,
        }
    }

    /// Offset of the first byte after the key id, for the key id "ak1".
    const KEY_ID_END: usize = 10 + 3;

    #[test]
    fn round_trip_returns_plaintext() {
        let keys = keyring();
        let object = encrypt(&keys.current, INCIDENT, NAME, PLAINTEXT).unwrap();
        assert_eq!(&object[..8], b"BLMLSATT");
        assert_eq!(object[8], VERSION);
        assert_eq!(master_key_id(&object).unwrap(), "ak1");
        let plaintext = decrypt(&keys, INCIDENT, NAME, &object).unwrap();
        assert_eq!(plaintext.as_slice(), PLAINTEXT);
    }

    #[test]
    fn empty_attachment_round_trips() {
        let keys = keyring();
        let object = encrypt(&keys.current, INCIDENT, NAME, b"").unwrap();
        assert!(decrypt(&keys, INCIDENT, NAME, &object).unwrap().is_empty());
    }

    #[test]
    fn ciphertext_hides_plaintext_and_differs_each_time() {
        let keys = keyring();
        let first = encrypt(&keys.current, INCIDENT, NAME, PLAINTEXT).unwrap();
        let second = encrypt(&keys.current, INCIDENT, NAME, PLAINTEXT).unwrap();
        assert_ne!(first, second);
        assert!(!first.windows(16).any(|window| PLAINTEXT.windows(16).any(|part| part == window)));
    }

    #[test]
    fn every_flipped_byte_fails() {
        let keys = keyring();
        let object = encrypt(&keys.current, INCIDENT, NAME, PLAINTEXT).unwrap();
        for index in 0..object.len() {
            let mut changed = object.clone();
            changed[index] ^= 0x01;
            let error = decrypt(&keys, INCIDENT, NAME, &changed).unwrap_err();
            let expected = match index {
                0..8 => matches!(error, EnvelopeError::NotAnAttachment),
                8 => matches!(error, EnvelopeError::UnsupportedVersion(_)),
                // A changed id length moves every later field.
                9 => matches!(error, EnvelopeError::UnknownMasterKey { .. } | EnvelopeError::Truncated),
                10..KEY_ID_END => matches!(error, EnvelopeError::UnknownMasterKey { .. }),
                _ => matches!(error, EnvelopeError::AuthenticationFailed { .. }),
            };
            assert!(expected, "byte {index}: {error:?}");
        }
    }

    #[test]
    fn flipped_wrapped_key_fails_authentication() {
        let keys = keyring();
        let object = encrypt(&keys.current, INCIDENT, NAME, PLAINTEXT).unwrap();
        let regions = [
            ("wrap nonce", KEY_ID_END),
            ("wrapped key", KEY_ID_END + 12),
            ("content nonce", KEY_ID_END + 12 + 48),
            ("ciphertext", KEY_ID_END + 12 + 48 + 12),
            ("tag", object.len() - 1),
        ];
        for (region, index) in regions {
            let mut changed = object.clone();
            changed[index] ^= 0x80;
            let error = decrypt(&keys, INCIDENT, NAME, &changed).unwrap_err();
            assert_eq!(
                error,
                EnvelopeError::AuthenticationFailed { key_id: "ak1".into() },
                "{region}"
            );
        }
    }

    #[test]
    fn object_moved_to_other_incident_fails() {
        let keys = keyring();
        let object = encrypt(&keys.current, INCIDENT, NAME, PLAINTEXT).unwrap();
        let error = decrypt(&keys, "0b8e7d6c-5a4f-5e3d-8c2b-1a0f9e8d7c6b", NAME, &object).unwrap_err();
        assert!(matches!(error, EnvelopeError::AuthenticationFailed { .. }), "{error:?}");
    }

    #[test]
    fn renamed_object_fails() {
        let keys = keyring();
        let object = encrypt(&keys.current, INCIDENT, NAME, PLAINTEXT).unwrap();
        let error = decrypt(&keys, INCIDENT, "call-recording.wav", &object).unwrap_err();
        assert!(matches!(error, EnvelopeError::AuthenticationFailed { .. }), "{error:?}");
    }

    #[test]
    fn length_prefix_separates_incident_and_name() {
        let keys = keyring();
        let object = encrypt(&keys.current, "inc-a", "b.txt", PLAINTEXT).unwrap();
        assert!(decrypt(&keys, "inc-ab", ".txt", &object).is_err());
    }

    #[test]
    fn wrong_master_key_fails() {
        let object = encrypt(&keyring().current, INCIDENT, NAME, PLAINTEXT).unwrap();
        let other = Keyring {
            current: MasterKey::from_bytes("ak1", [8u8; KEY_BYTES]).unwrap(),
            previous: None,
        };
        let error = decrypt(&other, INCIDENT, NAME, &object).unwrap_err();
        assert_eq!(error, EnvelopeError::AuthenticationFailed { key_id: "ak1".into() });
    }

    #[test]
    fn previous_master_key_still_decrypts() {
        let old = keyring();
        let object = encrypt(&old.current, INCIDENT, NAME, PLAINTEXT).unwrap();
        let rotated = Keyring {
            current: MasterKey::from_bytes("ak2", [9u8; KEY_BYTES]).unwrap(),
            previous: Some(old.current.clone()),
        };
        assert_eq!(decrypt(&rotated, INCIDENT, NAME, &object).unwrap().as_slice(), PLAINTEXT);

        let without_previous = Keyring {
            current: rotated.current.clone(),
            previous: None,
        };
        let error = decrypt(&without_previous, INCIDENT, NAME, &object).unwrap_err();
        assert_eq!(
            error,
            EnvelopeError::UnknownMasterKey {
                found: "ak1".into(),
                configured: "\"ak2\"".into()
            }
        );
        assert!(error.to_string().contains("attachments.previous_master_key"), "{error}");
    }

    #[test]
    fn truncated_object_fails() {
        let keys = keyring();
        let object = encrypt(&keys.current, INCIDENT, NAME, PLAINTEXT).unwrap();
        for length in [0, 7, 9, KEY_ID_END + 20, KEY_ID_END + 72 + 15] {
            let error = decrypt(&keys, INCIDENT, NAME, &object[..length]).unwrap_err();
            assert!(
                matches!(error, EnvelopeError::Truncated | EnvelopeError::NotAnAttachment),
                "length {length}: {error:?}"
            );
        }
        let error = decrypt(&keys, INCIDENT, NAME, &object[..object.len() - 1]).unwrap_err();
        assert!(matches!(error, EnvelopeError::AuthenticationFailed { .. }), "{error:?}");
    }

    #[test]
    fn key_text_accepts_hex_and_base64() {
        let hex_text = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let from_hex = decode_key_text(hex_text).unwrap();
        assert_eq!(from_hex[0], 0x00);
        assert_eq!(from_hex[31], 0xff);
        let base64_text = base64::engine::general_purpose::STANDARD.encode(*from_hex);
        assert_eq!(*decode_key_text(&base64_text).unwrap(), *from_hex);
        assert_eq!(*decode_key_text(base64_text.trim_end_matches('=')).unwrap(), *from_hex);
        assert_eq!(*decode_key_text(&format!("{hex_text}\n")).unwrap(), *from_hex);
    }

    #[test]
    fn key_text_of_wrong_length_is_rejected() {
        let short = decode_key_text(&"ab".repeat(16)).unwrap_err();
        assert!(short.contains("decodes to 24 bytes"), "{short}");
        assert!(short.contains("openssl rand -hex 32"), "{short}");
        let garbage = decode_key_text("not a key!").unwrap_err();
        assert!(garbage.contains("neither 64 hexadecimal characters nor base64"), "{garbage}");
        assert!(!garbage.contains("not a key"), "{garbage}");
    }

    #[test]
    fn key_id_is_checked() {
        assert!(check_key_id("ak-2025.1_b").is_ok());
        for id in ["", "a/b", "key id", &"k".repeat(65), "ключ"] {
            assert!(check_key_id(id).is_err(), "{id:?}");
        }
    }

    #[test]
    fn master_key_debug_hides_key() {
        let key = MasterKey::from_bytes("ak1", [0xab; KEY_BYTES]).unwrap();
        let printed = format!("{key:?}");
        assert!(printed.contains("ak1"), "{printed}");
        assert!(!printed.contains("171"), "{printed}");
        assert!(!printed.to_lowercase().contains("abab"), "{printed}");
    }
}
