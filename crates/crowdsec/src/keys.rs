//! Bouncer keys: a name and the SHA-256 of a random key, kept in a
//! root-only file in the state directory. The key itself is shown once,
//! when it is made, and never stored.
//!
//! What the bouncers report about themselves (last pull, version, address,
//! usage reports) is kept apart, in a second file the server rewrites: a
//! bouncer can change that bookkeeping and nothing else.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use palisade_model::Timestamp;
use serde::{Deserialize, Serialize};

/// The file of bouncer names and key hashes.
pub const KEYS_FILE: &str = "crowdsec-bouncers.json";
/// The file of what each bouncer last reported.
pub const SEEN_FILE: &str = "crowdsec-bouncers-seen.json";
/// Longest bouncer name.
pub const MAX_NAME_LEN: usize = 64;
/// Longest key a request may present (palisade's are 32 hex digits).
pub const MAX_KEY_LEN: usize = 128;

/// Why a key could not be managed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The name is empty, too long, or has other characters than letters,
    /// digits, `.`, `_` and `-`.
    #[error(
        "{0:?} is not a bouncer name: use 1 to {MAX_NAME_LEN} letters, digits, '.', '_' or '-'"
    )]
    BadName(String),
    /// A bouncer of that name exists.
    #[error("a bouncer named {0:?} exists already: delete it first, or pick another name")]
    Exists(String),
    /// No bouncer has that name.
    #[error("no bouncer is named {0:?}: `palisade bouncer list` shows them")]
    Unknown(String),
    /// The keys or seen file could not be read or written.
    #[error("cannot read or write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The keys or seen file is not valid JSON of the expected shape.
    #[error("{path} is damaged ({reason}); remove it and add the bouncers again")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// No random bytes for a new key could be had.
    #[error("the system's random source failed")]
    Random,
}

/// One bouncer's credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bouncer {
    /// The name given with `palisade bouncer add`.
    pub name: String,
    /// Hex SHA-256 of the key.
    pub hash: String,
    /// When it was added.
    pub created: Timestamp,
}

/// What a bouncer last told about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// When it last asked for decisions.
    pub last_pull: Option<Timestamp>,
    /// Its `User-Agent`, cleaned.
    pub version: Option<String>,
    /// The address its last request came from.
    pub address: Option<String>,
    /// Usage reports (`POST /v1/usage-metrics`) it has sent.
    pub usage_reports: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct KeysFile {
    bouncers: Vec<Bouncer>,
}

/// The bouncer keys of one state directory.
#[derive(Debug, Clone)]
pub struct Keys {
    dir: PathBuf,
}

impl Keys {
    /// The keys kept in `state_dir` (the files need not exist yet).
    pub fn new(state_dir: &Path) -> Keys {
        Keys {
            dir: state_dir.to_path_buf(),
        }
    }

    /// The file of bouncer names and key hashes.
    pub fn keys_path(&self) -> PathBuf {
        self.dir.join(KEYS_FILE)
    }

    /// The file of what each bouncer last reported ([`Seen`]).
    pub fn seen_path(&self) -> PathBuf {
        self.dir.join(SEEN_FILE)
    }

    /// Every bouncer, by name.
    pub fn list(&self) -> Result<Vec<Bouncer>, KeyError> {
        let path = self.keys_path();
        let file: KeysFile = read_json(&path)?.unwrap_or_default();
        Ok(file.bouncers)
    }

    /// Adds a bouncer and returns its key (the only time it is known).
    pub fn add(&self, name: &str) -> Result<String, KeyError> {
        check_name(name)?;
        let mut bouncers = self.list()?;
        if bouncers.iter().any(|b| b.name == name) {
            return Err(KeyError::Exists(name.into()));
        }
        let key = new_key()?;
        bouncers.push(Bouncer {
            name: name.into(),
            hash: hash(&key),
            created: Timestamp::now(),
        });
        bouncers.sort_by(|a, b| a.name.cmp(&b.name));
        write_json(&self.keys_path(), &KeysFile { bouncers })?;
        Ok(key)
    }

    /// Removes a bouncer; its key stops working at its next request.
    pub fn delete(&self, name: &str) -> Result<(), KeyError> {
        let mut bouncers = self.list()?;
        let before = bouncers.len();
        bouncers.retain(|b| b.name != name);
        if bouncers.len() == before {
            return Err(KeyError::Unknown(name.into()));
        }
        write_json(&self.keys_path(), &KeysFile { bouncers })
    }

    /// What each bouncer last reported.
    pub fn seen(&self) -> Result<BTreeMap<String, Seen>, KeyError> {
        Ok(read_json(&self.seen_path())?.unwrap_or_default())
    }

    /// Replaces what is kept of each bouncer's last report.
    pub fn write_seen(&self, seen: &BTreeMap<String, Seen>) -> Result<(), KeyError> {
        write_json(&self.seen_path(), seen)
    }
}

/// Hex SHA-256 of a presented key.
pub fn hash(key: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn new_key() -> Result<String, KeyError> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| KeyError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn check_name(name: &str) -> Result<(), KeyError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(KeyError::BadName(name.into()))
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, KeyError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| KeyError::Damaged {
                path: path.into(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(KeyError::Io {
            path: path.into(),
            source,
        }),
    }
}

/// Writes root-only, through a temporary file renamed over the old one, so
/// a reader sees the old or the new file, never half of one.
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.into(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    let bytes = serde_json::to_vec_pretty(value).expect("plain data serialises");
    f.write_all(&bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_shown_once_and_stored_only_as_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::new(dir.path());
        let key = keys.add("fw-1").unwrap();
        assert_eq!(key.len(), 32);
        let text = std::fs::read_to_string(keys.keys_path()).unwrap();
        assert!(!text.contains(&key));
        assert!(text.contains(&hash(&key)));
        assert!(matches!(keys.add("fw-1"), Err(KeyError::Exists(_))));
        keys.delete("fw-1").unwrap();
        assert!(keys.list().unwrap().is_empty());
        assert!(matches!(keys.delete("fw-1"), Err(KeyError::Unknown(_))));
    }

    #[test]
    fn hostile_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::new(dir.path());
        for bad in ["", "a b", "../x", "x\ny", &"a".repeat(65)] {
            assert!(
                matches!(keys.add(bad), Err(KeyError::BadName(_))),
                "{bad:?}"
            );
        }
    }
}
