//! The dashboard's administrators: a name and an argon2id hash of the
//! password, in the hub's map [`ADMINS`](crate::tables::ADMINS). Never the password itself.
//!
//! Like tokens, these work on the store directly, so `palisade hub admin …`
//! works the same with the hub running (through its control socket) or
//! stopped.

use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use palisade_control::hub::AdminInfo;
use palisade_model::Timestamp;
use palisade_store::{Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::records::json;
use crate::tables;

/// argon2id cost: OWASP's recommended minimum (19 MiB, 2 passes, 1 lane);
/// about 50 ms a guess on one core.
const MEMORY_KIB: u32 = 19 * 1024;
const PASSES: u32 = 2;
const LANES: u32 = 1;
const HASH_LEN: usize = 32;
/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 10;
/// Longest password accepted (argon2 takes any length; this bounds work).
pub const MAX_PASSWORD: usize = 1024;

/// An administrator as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminRecord {
    /// The administrator's login name.
    pub name: String,
    /// `$argon2id$v=19$m=…,t=…,p=…$SALT$HASH` (PHC string format).
    pub hash: String,
    /// When it was made.
    pub created: Timestamp,
    /// The last successful login.
    #[serde(default)]
    pub last_login: Option<Timestamp>,
}

/// Why an administrator could not be made, changed or deleted.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The name is not a valid administrator name.
    #[error("{0:?} is not a valid name: use 1 to 64 letters, digits, '-', '_' or '.'")]
    BadName(String),
    /// The password is shorter than [`MIN_PASSWORD`].
    #[error("the password is too short: use at least {MIN_PASSWORD} characters")]
    ShortPassword,
    /// The password is longer than [`MAX_PASSWORD`].
    #[error("the password is too long: use at most {MAX_PASSWORD} bytes")]
    LongPassword,
    #[error(
        "an administrator named {0:?} already exists; delete it first (`palisade hub admin delete {0}`)"
    )]
    /// An administrator of that name exists.
    Taken(String),
    /// No administrator has that name.
    #[error("no administrator is named {0:?} (see `palisade hub admin list`)")]
    Unknown(String),
}

fn argon() -> Argon2<'static> {
    let params = Params::new(MEMORY_KIB, PASSES, LANES, Some(HASH_LEN)).expect("valid parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes `password` with a fresh random salt.
pub fn hash_password(password: &str) -> String {
    let salt = &palisade_wire::random_bytes()[..16];
    let mut out = [0u8; HASH_LEN];
    argon()
        .hash_password_into(password.as_bytes(), salt, &mut out)
        .expect("argon2 accepts these lengths");
    format!(
        "$argon2id$v=19$m={MEMORY_KIB},t={PASSES},p={LANES}${}${}",
        B64.encode(salt),
        B64.encode(out)
    )
}

/// argon2's working memory for one hash at the cost [`hash_password`] uses,
/// to be kept and reused: allocating 19 MiB per login leaves the allocator
/// holding freed copies in every thread's arena.
pub fn hash_memory() -> Vec<argon2::Block> {
    vec![argon2::Block::default(); MEMORY_KIB as usize]
}

/// True if `password` matches `phc` (made by [`hash_password`], with the
/// cost it was made with). Compares in constant time.
pub fn verify_password(phc: &str, password: &str) -> bool {
    verify_password_in(phc, password, &mut [])
}

/// [`verify_password`], working in `memory` when it is large enough (see
/// [`hash_memory`]).
pub fn verify_password_in(phc: &str, password: &str, memory: &mut [argon2::Block]) -> bool {
    let parts: Vec<&str> = phc.split('$').collect();
    let ["", "argon2id", "v=19", params, salt, hash] = parts.as_slice() else {
        return false;
    };
    let mut m = 0;
    let mut t = 0;
    let mut p = 0;
    for kv in params.split(',') {
        match kv.split_once('=') {
            Some(("m", v)) => m = v.parse().unwrap_or(0),
            Some(("t", v)) => t = v.parse().unwrap_or(0),
            Some(("p", v)) => p = v.parse().unwrap_or(0),
            _ => return false,
        }
    }
    let (Ok(salt), Ok(expected)) = (B64.decode(salt), B64.decode(hash)) else {
        return false;
    };
    let Ok(params) = Params::new(m, t, p, Some(expected.len())) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    let blocks = params.block_count();
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let hashed = if blocks <= memory.len() {
        argon.hash_password_into_with_memory(
            password.as_bytes(),
            &salt,
            &mut out,
            &mut memory[..blocks],
        )
    } else {
        argon.hash_password_into(password.as_bytes(), &salt, &mut out)
    };
    if hashed.is_err() {
        return false;
    }
    out.iter()
        .zip(&expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// A hash of nothing anyone knows, verified for unknown names so that a
/// refusal takes as long whether or not the name exists.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password(&B64.encode(palisade_wire::random_bytes())))
}

/// Refuses a password too short or too long.
pub fn check_password(password: &str) -> Result<(), AdminError> {
    if password.chars().count() < MIN_PASSWORD {
        return Err(AdminError::ShortPassword);
    }
    if password.len() > MAX_PASSWORD {
        return Err(AdminError::LongPassword);
    }
    Ok(())
}

/// Creates an administrator.
pub fn create(store: &Store, name: &str, password: &str) -> Result<AdminRecord, AdminError> {
    crate::tokens::check_name(name).map_err(|_| AdminError::BadName(name.to_string()))?;
    check_password(password)?;
    let record = AdminRecord {
        name: name.to_string(),
        hash: hash_password(password),
        created: Timestamp::now(),
        last_login: None,
    };
    store.write(|w| {
        if w.map_get(tables::ADMINS, name)?.is_some() {
            return Ok(Err(AdminError::Taken(name.to_string())));
        }
        w.map_put(tables::ADMINS, name, &json(&record))?;
        Ok(Ok(()))
    })??;
    Ok(record)
}

/// The administrator named `name`.
pub fn get(store: &Store, name: &str) -> Result<Option<AdminRecord>, StoreError> {
    Ok(store
        .read()?
        .map_get(tables::ADMINS, name)?
        .and_then(|b| serde_json::from_slice(&b).ok()))
}

/// Every administrator, without the hashes.
pub fn list(store: &Store) -> Result<Vec<AdminInfo>, StoreError> {
    Ok(store
        .read()?
        .map_entries(crate::tables::ADMINS)?
        .into_iter()
        .filter_map(|(_, b)| serde_json::from_slice::<AdminRecord>(&b).ok())
        .map(|r| AdminInfo {
            name: r.name,
            created: r.created,
            last_login: r.last_login,
        })
        .collect())
}

/// Deletes an administrator; its sessions end.
pub fn delete(store: &Store, name: &str) -> Result<(), AdminError> {
    match store.write(|w| w.map_remove(tables::ADMINS, name))? {
        Some(_) => Ok(()),
        None => Err(AdminError::Unknown(name.to_string())),
    }
}

/// Notes a successful login.
pub fn logged_in(store: &Store, name: &str) -> Result<(), StoreError> {
    store.write(|w| {
        if let Some(mut r) = w
            .map_get(tables::ADMINS, name)?
            .and_then(|b| serde_json::from_slice::<AdminRecord>(&b).ok())
        {
            r.last_login = Some(Timestamp::now());
            w.map_put(tables::ADMINS, name, &json(&r))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_kept_as_argon2id_hashes_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("hub.redb"), &Default::default()).unwrap();
        let r = create(&s, "alice", "correct horse battery").unwrap();
        assert!(r.hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify_password(&r.hash, "correct horse battery"));
        assert!(!verify_password(&r.hash, "correct horse batterz"));
        assert!(!verify_password("garbage", "correct horse battery"));
        assert!(!verify_password(decoy_hash(), ""));
        assert!(matches!(
            create(&s, "alice", "another password"),
            Err(AdminError::Taken(_))
        ));
        assert!(matches!(
            create(&s, "bob", "short"),
            Err(AdminError::ShortPassword)
        ));
        assert!(matches!(
            create(&s, "b b", "long enough password"),
            Err(AdminError::BadName(_))
        ));
        // Two hashes of one password differ (random salts).
        assert_ne!(
            hash_password("same password"),
            hash_password("same password")
        );
        drop(s);
        let raw = std::fs::read(dir.path().join("hub.redb")).unwrap();
        let secret = b"correct horse battery";
        assert!(!raw.windows(secret.len()).any(|w| w == secret));
        let s = Store::open(&dir.path().join("hub.redb"), &Default::default()).unwrap();
        assert_eq!(list(&s).unwrap().len(), 1);
        logged_in(&s, "alice").unwrap();
        assert!(get(&s, "alice").unwrap().unwrap().last_login.is_some());
        delete(&s, "alice").unwrap();
        assert!(matches!(delete(&s, "alice"), Err(AdminError::Unknown(_))));
    }
}
