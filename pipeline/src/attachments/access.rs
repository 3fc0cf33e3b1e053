//! Principals, their roles, and the decision whether one may decrypt.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The role that may decrypt attachments. Role names are case-sensitive.
pub const INCIDENT_COMMANDER: &str = "incident_commander";
/// The role of postmortem reviewers. It does not allow decryption, and
/// listing attachments needs no role at all.
pub const REVIEWER: &str = "reviewer";
/// Every role a principals file may name.
pub const KNOWN_ROLES: [&str; 2] = [INCIDENT_COMMANDER, REVIEWER];

/// Principal names mapped to their roles, read from the principals file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Principals {
    pub principals: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum PrincipalsError {
    #[error("attachments.principals_file is not set. Point it at a TOML or JSON file that maps principal names to roles, such as `[principals]` and `alice = [\"incident_commander\"]`")]
    NotConfigured,
    #[error("could not read the principals file {path}: {source}. Check attachments.principals_file")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the principals file {path} is invalid: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl Principals {
    /// Reads a principals file: JSON when the name ends in `.json`, TOML
    /// otherwise. Both hold a `principals` table of name to role list.
    pub fn load(path: Option<&Path>) -> Result<Principals, PrincipalsError> {
        let path = path.ok_or(PrincipalsError::NotConfigured)?;
        let text = std::fs::read_to_string(path).map_err(|source| PrincipalsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |reason: String| PrincipalsError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let is_json = path.extension().is_some_and(|extension| extension.eq_ignore_ascii_case("json"));
        let principals: Principals = if is_json {
            serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?
        } else {
            toml::from_str(&text).map_err(|e| invalid(e.to_string()))?
        };
        principals.check().map_err(invalid)?;
        Ok(principals)
    }

    /// Rejects unknown role names, so that a misspelled role is reported
    /// instead of silently granting nothing.
    fn check(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        for (name, roles) in &self.principals {
            for role in roles {
                if !KNOWN_ROLES.contains(&role.as_str()) {
                    problems.push(format!(
                        "principal {name:?} has role {role:?}, which is not a known role; the roles are {} (case-sensitive)",
                        KNOWN_ROLES.join(", ")
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// Reason a principal may not decrypt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessDenied {
    #[error("no principal was given; pass --principal NAME or set BLAMELESS_PRINCIPAL")]
    NoPrincipal,
    #[error("principal {0:?} is not listed in the principals file; ask an administrator to add it to attachments.principals_file")]
    UnknownPrincipal(String),
    #[error("principal {principal:?} has roles [{roles}] but not {INCIDENT_COMMANDER}, the only role that may decrypt attachments")]
    MissingRole { principal: String, roles: String },
}

impl AccessDenied {
    /// Short, stable reason for the audit log.
    pub fn audit_reason(&self) -> String {
        match self {
            AccessDenied::NoPrincipal => "no principal given".into(),
            AccessDenied::UnknownPrincipal(_) => "unknown principal".into(),
            AccessDenied::MissingRole { .. } => format!("missing role {INCIDENT_COMMANDER}"),
        }
    }
}

/// Decides whether `principal` may decrypt attachments: only a principal
/// listed with the role `incident_commander`, spelled exactly so, may.
pub fn authorize_decrypt(principals: &Principals, principal: &str) -> Result<(), AccessDenied> {
    if principal.is_empty() {
        return Err(AccessDenied::NoPrincipal);
    }
    let roles = principals
        .principals
        .get(principal)
        .ok_or_else(|| AccessDenied::UnknownPrincipal(principal.to_string()))?;
    if roles.iter().any(|role| role == INCIDENT_COMMANDER) {
        Ok(())
    } else {
        Err(AccessDenied::MissingRole {
            principal: principal.to_string(),
            roles: roles.join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principals() -> Principals {
        let text = r#"
            [principals]
            alice = ["incident_commander"]
            bob = ["reviewer"]
            carol = ["reviewer", "incident_commander"]
            dave = []
        "#;
        toml::from_str(text).unwrap()
    }

    #[test]
    fn authorization_table() {
        let principals = principals();
        let cases: [(&str, Result<(), AccessDenied>); 7] = [
            ("alice", Ok(())),
            ("carol", Ok(())),
            (
                "bob",
                Err(AccessDenied::MissingRole {
                    principal: "bob".into(),
                    roles: "reviewer".into(),
                }),
            ),
            (
                "dave",
                Err(AccessDenied::MissingRole {
                    principal: "dave".into(),
                    roles: String::new(),
                }),
            ),
            ("mallory", Err(AccessDenied::UnknownPrincipal("mallory".into()))),
            // Principal names are matched exactly.
            ("Alice", Err(AccessDenied::UnknownPrincipal("Alice".into()))),
            ("", Err(AccessDenied::NoPrincipal)),
        ];
        for (principal, expected) in cases {
            assert_eq!(authorize_decrypt(&principals, principal), expected, "{principal:?}");
        }
    }

    #[test]
    fn role_name_is_case_sensitive() {
        let mut principals = Principals::default();
        principals.principals.insert("erin".into(), vec!["Incident_Commander".into()]);
        assert!(authorize_decrypt(&principals, "erin").is_err());
        assert!(principals.check().unwrap_err().contains("\"Incident_Commander\", which is not a known role"));
    }

    #[test]
    fn refusal_messages_name_the_fix() {
        let unknown = AccessDenied::UnknownPrincipal("mallory".into()).to_string();
        assert!(unknown.contains("\"mallory\""), "{unknown}");
        assert!(unknown.contains("attachments.principals_file"), "{unknown}");
        let missing = AccessDenied::MissingRole {
            principal: "bob".into(),
            roles: "reviewer".into(),
        }
        .to_string();
        assert!(missing.contains("[reviewer]"), "{missing}");
        assert!(missing.contains("incident_commander"), "{missing}");
    }

    #[test]
    fn principals_load_from_toml_and_json() {
        let dir = tempfile::tempdir().unwrap();
        let toml_path = dir.path().join("principals.toml");
        std::fs::write(&toml_path, "[principals]\nalice = [\"incident_commander\"]\n").unwrap();
        let json_path = dir.path().join("principals.json");
        std::fs::write(&json_path, r#"{"principals": {"alice": ["incident_commander"]}}"#).unwrap();
        for path in [toml_path, json_path] {
            let principals = Principals::load(Some(&path)).unwrap();
            assert_eq!(principals.principals["alice"], vec!["incident_commander".to_string()], "{path:?}");
        }
    }

    #[test]
    fn principals_load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(Principals::load(None), Err(PrincipalsError::NotConfigured)));

        let missing = dir.path().join("missing.toml");
        let error = Principals::load(Some(&missing)).unwrap_err().to_string();
        assert!(error.contains("missing.toml"), "{error}");

        let misspelled = dir.path().join("misspelled.toml");
        std::fs::write(&misspelled, "[principals]\nalice = [\"incident_comander\"]\n").unwrap();
        let error = Principals::load(Some(&misspelled)).unwrap_err().to_string();
        assert!(error.contains("misspelled.toml"), "{error}");
        assert!(error.contains("\"incident_comander\", which is not a known role"), "{error}");

        let unknown_table = dir.path().join("unknown.toml");
        std::fs::write(&unknown_table, "[principal]\nalice = [\"incident_commander\"]\n").unwrap();
        let error = Principals::load(Some(&unknown_table)).unwrap_err().to_string();
        assert!(error.contains("principal"), "{error}");
    }
}
