//! Dashboard sessions and the login rate limit, both in memory and bounded.
//!
//! A session id is 256 random bits, sent to the browser once in a cookie
//! (`Secure; HttpOnly; SameSite=Strict`) and kept here only as its SHA-256.
//! Each session has its own CSRF token, checked on every state-changing
//! request. Sessions end when idle for [`IDLE`], after [`LIFETIME`] at most,
//! on logout, when their administrator is deleted, or when the hub
//! restarts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

/// A session unused this long ends.
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// No session lasts longer than this.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept; past it the oldest go.
const MAX_SESSIONS: usize = 10_000;

/// The session cookie's name (`__Host-`: only ever set by this origin, for
/// every path, over HTTPS).
pub const COOKIE: &str = "__Host-palisade";

#[derive(Debug, Clone)]
pub struct Session {
    pub admin: String,
    pub csrf: String,
    created: Instant,
    used: Instant,
}

#[derive(Default)]
pub struct Sessions {
    by_hash: Mutex<HashMap<[u8; 32], Session>>,
}

fn random_text() -> String {
    B64.encode(palisade_wire::random_bytes())
}

impl Sessions {
    /// Starts a session for `admin`; returns the cookie value.
    pub fn create(&self, admin: &str) -> String {
        let id = random_text();
        let now = Instant::now();
        let session = Session {
            admin: admin.to_string(),
            csrf: random_text(),
            created: now,
            used: now,
        };
        let mut map = self.by_hash.lock().unwrap();
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, s| live(s, now));
            if map.len() >= MAX_SESSIONS
                && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.used).map(|(k, _)| *k)
            {
                map.remove(&oldest);
            }
        }
        map.insert(palisade_wire::sha256(id.as_bytes()), session);
        id
    }

    /// The live session with this cookie value (marked as used).
    pub fn get(&self, id: &str) -> Option<Session> {
        let key = palisade_wire::sha256(id.as_bytes());
        let now = Instant::now();
        let mut map = self.by_hash.lock().unwrap();
        let s = map.get_mut(&key)?;
        if !live(s, now) {
            map.remove(&key);
            return None;
        }
        s.used = now;
        Some(s.clone())
    }

    /// Whether the session with this cookie value is live (without marking
    /// it used: an open live page does not keep a session alive).
    pub fn is_live(&self, id: &str) -> bool {
        let key = palisade_wire::sha256(id.as_bytes());
        self.by_hash
            .lock()
            .unwrap()
            .get(&key)
            .is_some_and(|s| live(s, Instant::now()))
    }

    pub fn end(&self, id: &str) {
        self.by_hash
            .lock()
            .unwrap()
            .remove(&palisade_wire::sha256(id.as_bytes()));
    }

    /// Ends every session of `admin` (deleted).
    pub fn end_admin(&self, admin: &str) {
        self.by_hash.lock().unwrap().retain(|_, s| s.admin != admin);
    }
}

fn live(s: &Session, now: Instant) -> bool {
    now.duration_since(s.used) < IDLE && now.duration_since(s.created) < LIFETIME
}

/// The session cookie's value in a `Cookie` header.
pub fn cookie_value(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

pub fn set_cookie(id: &str) -> String {
    format!(
        "{COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        LIFETIME.as_secs()
    )
}

pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Equal in constant time.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Login attempts allowed per client address and per name: a burst, then
/// one every [`REFILL`].
const BURST: f64 = 5.0;
const REFILL: Duration = Duration::from_secs(12);
const MAX_BUCKETS: usize = 10_000;

/// Token buckets of login attempts, by client address and by name, so that
/// neither one address nor many addresses guessing one name get far.
#[derive(Default)]
pub struct LoginLimit {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl LoginLimit {
    /// Takes one attempt for `peer` and `name`; on refusal, how long to wait.
    pub fn attempt(&self, peer: IpAddr, name: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut map = self.buckets.lock().unwrap();
        if map.len() >= MAX_BUCKETS {
            map.retain(|_, (tokens, at)| refill(*tokens, *at, now) < BURST);
            if map.len() >= MAX_BUCKETS {
                map.clear();
            }
        }
        let keys = [format!("ip {peer}"), format!("name {name}")];
        let mut wait = Duration::ZERO;
        for k in &keys {
            let (tokens, at) = map.get(k).copied().unwrap_or((BURST, now));
            let t = refill(tokens, at, now);
            if t < 1.0 {
                wait = wait.max(REFILL.mul_f64(1.0 - t));
            }
        }
        if wait > Duration::ZERO {
            return Err(wait);
        }
        for k in keys {
            let (tokens, at) = map.get(&k).copied().unwrap_or((BURST, now));
            map.insert(k, (refill(tokens, at, now) - 1.0, now));
        }
        Ok(())
    }
}

fn refill(tokens: f64, at: Instant, now: Instant) -> f64 {
    (tokens + now.duration_since(at).as_secs_f64() / REFILL.as_secs_f64()).min(BURST)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_random_hashed_and_end() {
        let s = Sessions::default();
        let a = s.create("alice");
        let b = s.create("alice");
        assert_ne!(a, b);
        assert_eq!(B64.decode(&a).unwrap().len(), 32, "256-bit ids");
        let got = s.get(&a).unwrap();
        assert_eq!(got.admin, "alice");
        assert_ne!(got.csrf, s.get(&b).unwrap().csrf);
        assert!(s.get("forged").is_none());
        s.end(&a);
        assert!(s.get(&a).is_none());
        s.end_admin("alice");
        assert!(s.get(&b).is_none());
        assert_eq!(
            cookie_value(&format!("x=1; {COOKIE}=abc; y=2")),
            Some("abc")
        );
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }

    #[test]
    fn login_attempts_are_limited_per_address_and_per_name() {
        let l = LoginLimit::default();
        let ip: IpAddr = "198.18.0.9".parse().unwrap();
        for _ in 0..5 {
            l.attempt(ip, "alice").unwrap();
        }
        let wait = l.attempt(ip, "bob").unwrap_err();
        assert!(wait > Duration::ZERO && wait <= REFILL);
        // Another address guessing the same name is limited too.
        assert!(l.attempt("198.18.0.10".parse().unwrap(), "alice").is_err());
        l.attempt("198.18.0.10".parse().unwrap(), "carol").unwrap();
    }
}
