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

use crate::limits::{Lru, client_key};

/// A session unused this long ends.
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// No session lasts longer than this.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept; past it the oldest go.
const MAX_SESSIONS: usize = 10_000;

/// The session cookie's name (`__Host-`: only ever set by this origin, for
/// every path, over HTTPS).
pub const COOKIE: &str = "__Host-palisade";

/// A logged-in administrator's session.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who is logged in.
    pub admin: String,
    /// The token every form of this session carries.
    pub csrf: String,
    created: Instant,
    used: Instant,
}

/// The open sessions, kept by the hash of their id.
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

    /// Ends the session `id` (logout).
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

/// The header that sets the session cookie.
pub fn set_cookie(id: &str) -> String {
    format!(
        "{COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        LIFETIME.as_secs()
    )
}

/// The header that removes the session cookie.
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

/// Login attempts allowed per client (address, or IPv6 /64) and per name:
/// a burst, then one every [`REFILL`].
const BURST: f64 = 5.0;
const REFILL: Duration = Duration::from_secs(12);
/// Buckets kept; past it the least recently used are forgotten.
const MAX_BUCKETS: usize = 10_000;
/// (client, name) pairs that logged in, remembered for the exemption below.
const MAX_KNOWN: usize = 10_000;

/// Token buckets of login attempts, by client and by name, so that neither
/// one client nor many clients guessing one name get far. A client that
/// logged in as a name before is not held back by that name's bucket: a
/// flood of guesses at `alice` from elsewhere does not lock alice out of
/// her usual place.
pub struct LoginLimit {
    state: Mutex<LoginState>,
}

struct LoginState {
    buckets: Lru<String, (f64, Instant)>,
    known: Lru<(IpAddr, String), ()>,
}

impl Default for LoginLimit {
    fn default() -> Self {
        LoginLimit {
            state: Mutex::new(LoginState {
                buckets: Lru::new(MAX_BUCKETS),
                known: Lru::new(MAX_KNOWN),
            }),
        }
    }
}

impl LoginLimit {
    /// Takes one attempt for `peer` and `name`; on refusal, how long to wait.
    pub fn attempt(&self, peer: IpAddr, name: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let client = client_key(peer);
        let mut state = self.state.lock().unwrap();
        let mut keys = vec![format!("ip {client}")];
        if state.known.get(&(client, name.to_string())).is_none() {
            keys.push(format!("name {name}"));
        }
        let mut wait = Duration::ZERO;
        for k in &keys {
            let (tokens, at) = state.buckets.get(k).copied().unwrap_or((BURST, now));
            let t = refill(tokens, at, now);
            if t < 1.0 {
                wait = wait.max(REFILL.mul_f64(1.0 - t));
            }
        }
        if wait > Duration::ZERO {
            return Err(wait);
        }
        for k in keys {
            let (tokens, at) = state.buckets.get(&k).copied().unwrap_or((BURST, now));
            state
                .buckets
                .put(k, (refill(tokens, at, now) - 1.0, now), now);
        }
        Ok(())
    }

    /// Remembers that `peer` logged in as `name`.
    pub fn logged_in(&self, peer: IpAddr, name: &str) {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap();
        state
            .known
            .put((client_key(peer), name.to_string()), (), now);
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

    #[test]
    fn an_ipv6_client_is_its_64() {
        let l = LoginLimit::default();
        for i in 0..5 {
            let ip: IpAddr = format!("2001:db8:7:7::{i}").parse().unwrap();
            l.attempt(ip, &format!("n{i}")).unwrap();
        }
        let same_64: IpAddr = "2001:db8:7:7:ffff::1".parse().unwrap();
        assert!(l.attempt(same_64, "other").is_err());
        let next_64: IpAddr = "2001:db8:7:8::1".parse().unwrap();
        l.attempt(next_64, "other").unwrap();
    }

    #[test]
    fn guesses_at_a_name_do_not_lock_out_where_it_logged_in_before() {
        let l = LoginLimit::default();
        let home: IpAddr = "198.18.0.9".parse().unwrap();
        l.attempt(home, "alice").unwrap();
        l.logged_in(home, "alice");
        // A flood of guesses at alice from many addresses.
        for i in 0..50u8 {
            let _ = l.attempt(IpAddr::from([198, 18, 1, i]), "alice");
        }
        assert!(l.attempt(IpAddr::from([198, 18, 2, 1]), "alice").is_err());
        l.attempt(home, "alice").unwrap();
    }

    #[test]
    fn a_full_table_forgets_the_oldest_not_everything() {
        let l = LoginLimit::default();
        let other = |i: u32| IpAddr::from((0xc612_0000u32 + 256 + i).to_be_bytes());
        // An old crowd fills the table almost.
        for i in 0..(MAX_BUCKETS as u32 - 10) {
            let _ = l.attempt(other(i), "x");
        }
        let ip: IpAddr = "198.18.0.9".parse().unwrap();
        for _ in 0..5 {
            l.attempt(ip, "alice").unwrap();
        }
        // Newcomers overflow it: the oldest go, alice's spent buckets stay.
        for i in 0..100 {
            let _ = l.attempt(other(MAX_BUCKETS as u32 + i), "y");
        }
        assert!(l.state.lock().unwrap().buckets.len() <= MAX_BUCKETS);
        assert!(l.attempt(ip, "alice").is_err());
    }
}
