//! Creating, listing and revoking tokens. The store keeps each token's
//! SHA-256 (as its key) and a record, never the token itself: a stolen
//! state directory does not yield usable tokens.
//!
//! These work on the store directly, so `palisade hub token …` works the
//! same whether it goes through the running hub's control socket or, with
//! the hub stopped, opens the store itself.

use palisade_control::hub::TokenInfo;
use palisade_model::Timestamp;
use palisade_store::{Map, Store, StoreError};
use palisade_wire::{Token, TokenKind};

use crate::ledger::json;
use crate::records::{NodeRecord, TokenRecord};

/// Why a token operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0:?} is not a valid name: use 1 to 64 letters, digits, '-', '_' or '.'")]
    BadName(String),
    #[error("{0:?} is not a token kind: use node, join or read")]
    BadKind(String),
    #[error(
        "a node named {0:?} already has a valid token; revoke it first (`palisade hub token revoke {0}`) or choose another name"
    )]
    Taken(String),
    #[error("no valid token is named {0:?} (see `palisade hub token list`)")]
    Unknown(String),
}

pub fn parse_kind(s: &str) -> Result<TokenKind, TokenError> {
    match s {
        "node" => Ok(TokenKind::Node),
        "join" => Ok(TokenKind::Join),
        "read" => Ok(TokenKind::Read),
        other => Err(TokenError::BadKind(other.to_string())),
    }
}

pub fn check_name(name: &str) -> Result<(), TokenError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(TokenError::BadName(name.to_string()))
    }
}

/// Creates a token; returns it (to show once) and its record.
pub fn create(
    store: &Store,
    name: &str,
    kind: TokenKind,
    group: Option<String>,
    pin: Option<[u8; 32]>,
    joined_with: Option<String>,
) -> Result<(Token, TokenRecord), TokenError> {
    check_name(name)?;
    if let Some(g) = &group {
        check_name(g)?;
    }
    let token = Token::generate(kind, pin);
    let record = TokenRecord {
        name: name.to_string(),
        kind,
        group,
        created: Timestamp::now(),
        revoked: None,
        joined_with,
    };
    store.write(|w| {
        if kind == TokenKind::Node {
            for (_, bytes) in w.map_entries(Map::Tokens)? {
                if let Ok(r) = serde_json::from_slice::<TokenRecord>(&bytes)
                    && r.kind == TokenKind::Node
                    && r.name == name
                    && r.is_valid()
                {
                    return Ok(Err(TokenError::Taken(name.to_string())));
                }
            }
        }
        w.map_put(Map::Tokens, &token.id(), &json(&record))?;
        Ok(Ok(()))
    })??;
    Ok((token, record))
}

/// Every token record by id.
pub fn all(store: &Store) -> Result<Vec<(String, TokenRecord)>, StoreError> {
    Ok(store
        .read()?
        .map_entries(Map::Tokens)?
        .into_iter()
        .filter_map(|(id, b)| serde_json::from_slice(&b).ok().map(|r| (id, r)))
        .collect())
}

/// The tokens as listed to operators, with what is known of their nodes.
pub fn list(store: &Store) -> Result<Vec<TokenInfo>, StoreError> {
    let reader = store.read()?;
    let nodes: Vec<NodeRecord> = reader
        .map_entries(Map::Nodes)?
        .into_iter()
        .filter_map(|(_, b)| serde_json::from_slice(&b).ok())
        .collect();
    let mut out: Vec<TokenInfo> = all(store)?
        .into_iter()
        .map(|(id, r)| {
            let node = nodes
                .iter()
                .find(|n| n.name == r.name && r.kind == TokenKind::Node);
            TokenInfo {
                name: r.name,
                kind: r.kind.to_string(),
                group: r.group,
                created: r.created,
                revoked: r.revoked,
                id: id.chars().take(8).collect(),
                last_seen: node.and_then(|n| n.last_seen),
                address: node.and_then(|n| n.address).map(|a| a.to_string()),
                connected: false,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        (a.revoked.is_some(), &a.kind, &a.name).cmp(&(b.revoked.is_some(), &b.kind, &b.name))
    });
    Ok(out)
}

/// Revokes every valid token named `name`; returns their ids.
pub fn revoke(store: &Store, name: &str) -> Result<Vec<String>, TokenError> {
    let now = Timestamp::now();
    let ids = store.write(|w| {
        let mut ids = Vec::new();
        for (id, bytes) in w.map_entries(Map::Tokens)? {
            if let Ok(mut r) = serde_json::from_slice::<TokenRecord>(&bytes)
                && r.name == name
                && r.is_valid()
            {
                r.revoked = Some(now);
                w.map_put(Map::Tokens, &id, &json(&r))?;
                ids.push(id);
            }
        }
        Ok(ids)
    })?;
    if ids.is_empty() {
        return Err(TokenError::Unknown(name.to_string()));
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &tempfile::TempDir) -> Store {
        Store::open(&dir.path().join("hub.redb"), &Default::default()).unwrap()
    }

    #[test]
    fn tokens_are_stored_hashed_named_and_revocable() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        let (t, rec) = create(
            &s,
            "web1",
            TokenKind::Node,
            Some("dmz".into()),
            Some([3; 32]),
            None,
        )
        .unwrap();
        assert_eq!(rec.group.as_deref(), Some("dmz"));
        let stored = all(&s).unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].0, t.id());
        let raw = std::fs::read(dir.path().join("hub.redb")).unwrap();
        let secret = t.to_string();
        let secret_part = secret.split('.').nth(2).unwrap();
        assert!(
            !raw.windows(secret_part.len())
                .any(|w| w == secret_part.as_bytes()),
            "the secret is not on disk"
        );
        assert!(matches!(
            create(&s, "web1", TokenKind::Node, None, None, None),
            Err(TokenError::Taken(_))
        ));
        assert!(matches!(
            create(&s, "bad name", TokenKind::Node, None, None, None),
            Err(TokenError::BadName(_))
        ));
        assert_eq!(revoke(&s, "web1").unwrap().len(), 1);
        assert!(matches!(revoke(&s, "web1"), Err(TokenError::Unknown(_))));
        // Once revoked, the name can be given out again.
        create(&s, "web1", TokenKind::Node, None, None, None).unwrap();
        let listed = list(&s).unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed[0].revoked.is_none() && listed[1].revoked.is_some());
    }
}
