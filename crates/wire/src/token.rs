//! Tokens: how a node proves who it is, and how it knows it reached the
//! right hub.
//!
//! A token is `palisade1.KIND.SECRET[.PIN]`:
//! - `KIND` is `node` (the credential of one node), `join` (lets any number
//!   of servers join; each gets its own node credential on first contact) or
//!   `read` (read-only: export, listing, metrics);
//! - `SECRET` is 32 random bytes (base64url); the hub keeps only its SHA-256;
//! - `PIN` is the SHA-256 of the hub's certificate (base64url): the agent
//!   accepts exactly that certificate, so a self-signed hub needs no CA. It
//!   is absent when the hub has a certificate from a real CA.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

const PREFIX: &str = "palisade1";

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// One node's credential: report, receive the stream, read.
    Node,
    /// Enrols new nodes: exchanged for a node credential at first contact.
    Join,
    /// Read only: export, decision listing, explain, metrics.
    Read,
}

impl TokenKind {
    fn as_str(self) -> &'static str {
        match self {
            TokenKind::Node => "node",
            TokenKind::Join => "join",
            TokenKind::Read => "read",
        }
    }
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the holder of a node credential may do; the hub (or a policy
/// worker) enforces it, whatever a request claims.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Only reports attackers: always subject to quorum and rate limits.
    Reporter,
    /// Reports, and makes host bans within the hub's limits; never allows
    /// for the whole network, never lifts what others decided.
    #[default]
    Node,
    /// Everything the guard permits (the hub's own CLI and dashboard act as
    /// operators).
    Operator,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 3] = [Role::Reporter, Role::Node, Role::Operator];

    /// The word naming this role's intents on a bus (NATS subject token,
    /// MQTT topic level): `PREFIX.intents.NODE` for a node,
    /// `PREFIX.reports.NODE` for a reporter, `PREFIX.operator.NODE` for an
    /// operator, so the broker's permissions on those are what grant a role.
    pub fn intents_word(self) -> &'static str {
        match self {
            Role::Reporter => "reports",
            Role::Node => "intents",
            Role::Operator => "operator",
        }
    }

    /// `reporter`, `node` or `operator`, as configured and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reporter => "reporter",
            Role::Node => "node",
            Role::Operator => "operator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not a role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a role: use reporter, node or operator")]
pub struct RoleError(pub String);

impl FromStr for Role {
    type Err = RoleError;

    fn from_str(s: &str) -> Result<Role, RoleError> {
        match s {
            "reporter" => Ok(Role::Reporter),
            "node" => Ok(Role::Node),
            "operator" => Ok(Role::Operator),
            other => Err(RoleError(other.to_string())),
        }
    }
}

/// A parsed token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// What the token is for: a node credential, a join token, or read only.
    pub kind: TokenKind,
    /// The random secret; the hub stores only its hash.
    pub secret: [u8; 32],
    /// SHA-256 of the hub certificate's DER encoding.
    pub pin: Option<[u8; 32]>,
}

/// Why a string is not a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "this is not a palisade token ({0}); tokens look like palisade1.node.… and come from `palisade hub token create`"
)]
pub struct TokenError(&'static str);

impl Token {
    /// A fresh random token.
    pub fn generate(kind: TokenKind, pin: Option<[u8; 32]>) -> Token {
        Token {
            kind,
            secret: crate::random_bytes(),
            pin,
        }
    }

    /// The identifier the hub stores: SHA-256 of the secret, base64url.
    /// Stored tokens cannot be turned back into usable ones.
    pub fn id(&self) -> String {
        B64.encode(crate::sha256(&self.secret))
    }

    /// The value sent in `Authorization: Bearer …` (kind and secret, never
    /// the pin, which only the client needs).
    pub fn bearer(&self) -> String {
        format!("{PREFIX}.{}.{}", self.kind, B64.encode(self.secret))
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.bearer())?;
        if let Some(pin) = &self.pin {
            write!(f, ".{}", B64.encode(pin))?;
        }
        Ok(())
    }
}

impl fmt::Debug for Token {
    /// Never prints the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({}, id {}…)", self.kind, &self.id()[..8])
    }
}

impl FromStr for Token {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Token, TokenError> {
        let mut parts = s.trim().split('.');
        if parts.next() != Some(PREFIX) {
            return Err(TokenError("it does not start with palisade1."));
        }
        let kind = match parts.next() {
            Some("node") => TokenKind::Node,
            Some("join") => TokenKind::Join,
            Some("read") => TokenKind::Read,
            _ => return Err(TokenError("unknown kind; expected node, join or read")),
        };
        let secret = decode32(parts.next()).ok_or(TokenError("the secret is damaged"))?;
        let pin = match parts.next() {
            None => None,
            Some(p) => Some(decode32(Some(p)).ok_or(TokenError("the certificate pin is damaged"))?),
        };
        if parts.next().is_some() {
            return Err(TokenError("it has too many parts"));
        }
        Ok(Token { kind, secret, pin })
    }
}

fn decode32(part: Option<&str>) -> Option<[u8; 32]> {
    B64.decode(part?).ok()?.try_into().ok()
}

/// A certificate pin as shown to people (`sha256/` + base64url).
pub fn show_pin(pin: &[u8; 32]) -> String {
    format!("sha256/{}", B64.encode(pin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_and_without_pin() {
        for pin in [None, Some([7u8; 32])] {
            let t = Token::generate(TokenKind::Node, pin);
            let s = t.to_string();
            assert!(s.starts_with("palisade1.node."));
            assert_eq!(s.parse::<Token>().unwrap(), t);
            // The bearer form drops the pin but keeps the identity.
            let b: Token = t.bearer().parse().unwrap();
            assert_eq!((b.kind, b.secret, b.pin), (t.kind, t.secret, None));
            assert_eq!(b.id(), t.id());
        }
        assert_ne!(
            Token::generate(TokenKind::Join, None).secret,
            Token::generate(TokenKind::Join, None).secret
        );
    }

    #[test]
    fn damaged_tokens_are_refused_clearly() {
        let good = Token::generate(TokenKind::Read, Some([1; 32])).to_string();
        for bad in [
            "".to_string(),
            "hunter2".into(),
            good.replace("palisade1", "palisade2"),
            good.replace(".read.", ".admin."),
            good[..good.len() - 3].to_string(),
            format!("{good}.extra"),
        ] {
            let e = bad.parse::<Token>().unwrap_err();
            assert!(e.to_string().contains("palisade hub token create"), "{e}");
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let t = Token::generate(TokenKind::Node, None);
        let shown = format!("{t:?}");
        assert!(!shown.contains(&B64.encode(t.secret)));
    }
}
