//! Creating, listing and revoking tokens. The store keeps each token's
//! SHA-256 (as its key) and a record, never the token itself: a stolen
//! state directory does not yield usable tokens.
//!
//! These work on the store directly, so `palisade hub token …` works the
//! same whether it goes through the running hub's control socket or, with
//! the hub stopped, opens the store itself.

use palisade_control::hub::TokenInfo;
use palisade_model::Timestamp;
use palisade_store::{Store, StoreError};
use palisade_wire::{Role, Token, TokenKind};

use crate::records::json;
use crate::records::{NodeRecord, TokenRecord};
use crate::tables;

/// Why a token operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The name is not a valid node name.
    #[error(transparent)]
    BadName(#[from] palisade_policy::NameError),
    /// Not a token kind.
    #[error("{0:?} is not a token kind: use node, join or read")]
    BadKind(String),
    #[error(
        "a node named {0:?} already has a valid token; revoke it first (`palisade hub token revoke {0}`) or choose another name"
    )]
    /// A node of that name has a valid token.
    Taken(String),
    /// No valid token has that name.
    #[error("no valid token is named {0:?} (see `palisade hub token list`)")]
    Unknown(String),
    /// Not a role.
    #[error(transparent)]
    BadRole(#[from] palisade_wire::RoleError),
    /// Limits given for a token that is not a join token.
    #[error("--uses and --expires are for join tokens (a node or read token lasts until revoked)")]
    NotJoin,
    #[error(
        "this join token has expired or enrolled all the nodes it may; ask for a new one (`palisade hub token create --kind join`)"
    )]
    /// The join token can enrol no more nodes.
    Spent,
}

/// A token to make.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// The node's name, or the token's label.
    pub name: String,
    /// Node, join or read.
    pub kind: TokenKind,
    /// The group of the nodes it stands for.
    pub group: Option<String>,
    /// What its holder (or, for a join token, the nodes it enrols) may do.
    pub role: Role,
    /// Join tokens: how many nodes it may enrol.
    pub uses: Option<u32>,
    /// Join tokens: when it stops working.
    pub expires: Option<Timestamp>,
    /// For node tokens minted by a join token: that token's name.
    pub joined_with: Option<String>,
}

impl NewToken {
    /// A token of `kind` named `name`, role `node`, no group, no limits.
    pub fn new(name: impl Into<String>, kind: TokenKind) -> NewToken {
        NewToken {
            name: name.into(),
            kind,
            group: None,
            role: Role::Node,
            uses: None,
            expires: None,
            joined_with: None,
        }
    }
}

/// Reads `node`, `join` or `read`.
pub fn parse_kind(s: &str) -> Result<TokenKind, TokenError> {
    match s {
        "node" => Ok(TokenKind::Node),
        "join" => Ok(TokenKind::Join),
        "read" => Ok(TokenKind::Read),
        other => Err(TokenError::BadKind(other.to_string())),
    }
}

/// Makes the token a control request asks for (`palisade hub token
/// create`); `None` when the request is not a token creation.
pub fn create_requested(
    store: &Store,
    request: &palisade_control::hub::HubRequest,
    pin: Option<[u8; 32]>,
) -> Option<Result<(Token, TokenRecord), TokenError>> {
    let palisade_control::hub::HubRequest::TokenCreate {
        name,
        kind,
        group,
        role,
        uses,
        expires_in,
    } = request
    else {
        return None;
    };
    let spec = || -> Result<NewToken, TokenError> {
        Ok(NewToken {
            group: group.clone(),
            role: match role {
                Some(r) => r.parse::<Role>()?,
                None => Role::Node,
            },
            uses: *uses,
            expires: expires_in.and_then(|s| s.expiry_from(Timestamp::now())),
            ..NewToken::new(name.clone(), parse_kind(kind)?)
        })
    };
    Some(spec().and_then(|spec| create(store, spec, pin)))
}

/// Checks a token's (or group's) name: the policy's rule, reserved names
/// included.
pub fn check_name(name: &str) -> Result<(), TokenError> {
    Ok(palisade_policy::check_node_name(name)?)
}

/// Creates a token; returns it (to show once) and its record.
pub fn create(
    store: &Store,
    spec: NewToken,
    pin: Option<[u8; 32]>,
) -> Result<(Token, TokenRecord), TokenError> {
    check_name(&spec.name)?;
    if let Some(g) = &spec.group {
        check_name(g)?;
    }
    if spec.kind != TokenKind::Join && (spec.uses.is_some() || spec.expires.is_some()) {
        return Err(TokenError::NotJoin);
    }
    let token = Token::generate(spec.kind, pin);
    let record = TokenRecord {
        name: spec.name.clone(),
        kind: spec.kind,
        group: spec.group,
        created: Timestamp::now(),
        revoked: None,
        joined_with: spec.joined_with,
        role: spec.role,
        uses_left: spec.uses,
        expires: spec.expires,
        used: 0,
    };
    store.write(|w| {
        if let Some(taken) = name_taken(w, &record)? {
            return Ok(Err(taken));
        }
        w.map_put(tables::TOKENS, &token.id(), &json(&record))?;
        Ok(Ok(()))
    })??;
    Ok((token, record))
}

/// A valid node token with the same name already exists.
fn name_taken(
    w: &palisade_store::Writer<'_>,
    record: &TokenRecord,
) -> Result<Option<TokenError>, StoreError> {
    if record.kind != TokenKind::Node {
        return Ok(None);
    }
    for (_, bytes) in w.map_entries(tables::TOKENS)? {
        if let Ok(r) = serde_json::from_slice::<TokenRecord>(&bytes)
            && r.kind == TokenKind::Node
            && r.name == record.name
            && r.is_valid()
        {
            return Ok(Some(TokenError::Taken(record.name.clone())));
        }
    }
    Ok(None)
}

/// Exchanges one use of the join token with id `join_id` for a node token
/// named `name`, with the join token's group and role, in one transaction
/// (two nodes racing for the last use cannot both win).
pub fn enrol(store: &Store, join_id: &str, name: &str) -> Result<(Token, TokenRecord), TokenError> {
    check_name(name)?;
    let token = Token::generate(TokenKind::Node, None);
    let now = Timestamp::now();
    let record = store.write(|w| {
        let Some(mut join) = w
            .map_get(tables::TOKENS, join_id)?
            .and_then(|b| serde_json::from_slice::<TokenRecord>(&b).ok())
            .filter(|r| r.kind == TokenKind::Join)
        else {
            return Ok(Err(TokenError::Spent));
        };
        if !join.is_valid() {
            return Ok(Err(TokenError::Spent));
        }
        let record = TokenRecord {
            name: name.to_string(),
            kind: TokenKind::Node,
            group: join.group.clone(),
            created: now,
            revoked: None,
            joined_with: Some(join.name.clone()),
            role: join.role,
            uses_left: None,
            expires: None,
            used: 0,
        };
        if let Some(taken) = name_taken(w, &record)? {
            return Ok(Err(taken));
        }
        join.used = join.used.saturating_add(1);
        join.uses_left = join.uses_left.map(|n| n.saturating_sub(1));
        w.map_put(tables::TOKENS, join_id, &json(&join))?;
        w.map_put(tables::TOKENS, &token.id(), &json(&record))?;
        Ok(Ok(record))
    })??;
    Ok((token, record))
}

/// Every token record by id.
pub fn all(store: &Store) -> Result<Vec<(String, TokenRecord)>, StoreError> {
    Ok(store
        .read()?
        .map_entries(tables::TOKENS)?
        .into_iter()
        .filter_map(|(id, b)| serde_json::from_slice(&b).ok().map(|r| (id, r)))
        .collect())
}

/// The tokens as listed to operators, with what is known of their nodes.
pub fn list(store: &Store) -> Result<Vec<TokenInfo>, StoreError> {
    let reader = store.read()?;
    let nodes: Vec<NodeRecord> = reader
        .map_entries(tables::NODES)?
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
                role: r.role.to_string(),
                used: r.used,
                uses_left: r.uses_left,
                expires: r.expires,
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

/// Gives the token with this id another role.
pub fn set_role(store: &Store, id: &str, role: Role) -> Result<(), StoreError> {
    store.write(|w| {
        if let Some(mut r) = w
            .map_get(tables::TOKENS, id)?
            .and_then(|b| serde_json::from_slice::<TokenRecord>(&b).ok())
            && r.role != role
        {
            r.role = role;
            w.map_put(tables::TOKENS, id, &json(&r))?;
        }
        Ok(())
    })
}

/// Revokes every valid token named `name`; returns their ids.
pub fn revoke(store: &Store, name: &str) -> Result<Vec<String>, TokenError> {
    let now = Timestamp::now();
    let ids = store.write(|w| {
        let mut ids = Vec::new();
        for (id, bytes) in w.map_entries(tables::TOKENS)? {
            if let Ok(mut r) = serde_json::from_slice::<TokenRecord>(&bytes)
                && r.name == name
                && r.is_valid()
            {
                r.revoked = Some(now);
                w.map_put(tables::TOKENS, &id, &json(&r))?;
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
            NewToken {
                group: Some("dmz".into()),
                ..NewToken::new("web1", TokenKind::Node)
            },
            Some([3; 32]),
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
            create(&s, NewToken::new("web1", TokenKind::Node), None),
            Err(TokenError::Taken(_))
        ));
        assert!(matches!(
            create(&s, NewToken::new("bad name", TokenKind::Node), None),
            Err(TokenError::BadName(_))
        ));
        assert_eq!(revoke(&s, "web1").unwrap().len(), 1);
        assert!(matches!(revoke(&s, "web1"), Err(TokenError::Unknown(_))));
        // Once revoked, the name can be given out again.
        create(&s, NewToken::new("web1", TokenKind::Node), None).unwrap();
        let listed = list(&s).unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed[0].revoked.is_none() && listed[1].revoked.is_some());
    }

    #[test]
    fn join_tokens_pass_on_their_role_and_run_out() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        let (join, _) = create(
            &s,
            NewToken {
                role: Role::Reporter,
                uses: Some(1),
                group: Some("dmz".into()),
                ..NewToken::new("f2b-hosts", TokenKind::Join)
            },
            None,
        )
        .unwrap();
        let (_, node) = enrol(&s, &join.id(), "mail1").unwrap();
        assert_eq!(
            (node.role, node.group.as_deref()),
            (Role::Reporter, Some("dmz"))
        );
        assert!(matches!(
            enrol(&s, &join.id(), "mail2"),
            Err(TokenError::Spent)
        ));
        let listed = list(&s).unwrap();
        let j = listed.iter().find(|t| t.kind == "join").unwrap();
        assert_eq!(j.used, 1);
        // Reserved names are refused, whatever makes them.
        let (open, _) = create(&s, NewToken::new("open", TokenKind::Join), None).unwrap();
        assert!(matches!(
            enrol(&s, &open.id(), "dashboard"),
            Err(TokenError::BadName(_))
        ));
        assert!(matches!(
            create(&s, NewToken::new("hub", TokenKind::Node), None),
            Err(TokenError::BadName(_))
        ));
        assert!(matches!(
            create(
                &s,
                NewToken {
                    uses: Some(2),
                    ..NewToken::new("n", TokenKind::Node)
                },
                None
            ),
            Err(TokenError::NotJoin)
        ));
    }
}
