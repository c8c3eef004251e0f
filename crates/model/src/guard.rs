//! The rules no ban may break, whoever asks for it.
//!
//! Before any ban reaches an enforcer, [`Guard::check_ban`] refuses it if:
//! - an allow entry covers the whole target (the allowlist always wins);
//! - it touches an address that must never be blocked (loopback,
//!   "this network", multicast, broadcast, link-local, where neighbour
//!   discovery and cloud metadata live);
//! - it is wider than the configured minimum prefix (a typo like
//!   `10.0.0.0/1` would cut a server off half the internet).
//!
//! A ban of a network that merely *contains* an allowed host is accepted:
//! the enforcer checks allows before bans, so the allowed host keeps getting
//! through while the rest of the network is dropped.

use std::fmt;

use crate::net::{Family, Net};
use crate::netmap::NetMap;

/// Ranges that palisade never bans, with the reason shown to the operator.
pub const PROTECTED: &[(&str, &str)] = &[
    ("0.0.0.0/8", "\"this network\" (unspecified source)"),
    ("127.0.0.0/8", "loopback"),
    (
        "169.254.0.0/16",
        "link-local (includes cloud metadata services)",
    ),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255", "broadcast"),
    ("::/128", "the unspecified address"),
    ("::1", "loopback"),
    ("fe80::/10", "link-local (neighbour discovery)"),
    ("ff00::/8", "multicast"),
    // Translation prefixes carry IPv4 hosts inside IPv6: a ban here would
    // cut an IPv6-only server off the IPv4 internet (or some of it) rather
    // than one attacker. Ban the IPv4 address instead.
    (
        "64:ff9b::/96",
        "the NAT64 well-known prefix (IPv4 hosts seen through a translator; ban the IPv4 address)",
    ),
    (
        "64:ff9b:1::/48",
        "the local-use NAT64 prefix (IPv4 hosts seen through a translator; ban the IPv4 address)",
    ),
    (
        "::ffff:0:0:0/96",
        "the SIIT IPv4-translated prefix (ban the IPv4 address)",
    ),
];

/// Ranges that are not the public internet: where feeds (third parties)
/// may not ban unless the operator says so. An attacker's address is never
/// in them, and a list that names them is wrong or hostile.
pub const NON_PUBLIC: &[(&str, &str)] = &[
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("100.64.0.0/10", "carrier-grade NAT shared space (RFC 6598)"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("198.18.0.0/15", "benchmarking (RFC 2544)"),
    ("240.0.0.0/4", "reserved"),
    ("fc00::/7", "unique local (ULA)"),
    ("fec0::/10", "site-local"),
    ("100::/64", "discard-only"),
];

/// The non-public range that overlaps `target`, with its description.
pub fn non_public(target: &Net) -> Option<(Net, &'static str)> {
    NON_PUBLIC
        .iter()
        .map(|(net, why)| (net.parse::<Net>().expect("built-in range"), *why))
        .find(|(r, _)| r.overlaps(target))
}

/// Why a ban was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// An allow entry covers the target.
    #[error("{target} is allowed by {}{}; unallow that entry first if it really must be banned",
        describe_allow(target, allow), comment.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Allowed {
        /// The ban's target.
        target: Net,
        /// The allow entry that covers it (possibly the target itself).
        allow: Net,
        /// The allow entry's comment.
        comment: Option<String>,
    },
    /// The target overlaps a range palisade never bans ([`PROTECTED`]:
    /// loopback, link-local, multicast, translation prefixes...).
    #[error("{target} overlaps {range}, which is {why}; palisade never bans it")]
    Protected {
        /// The ban's target.
        target: Net,
        /// The protected range it overlaps.
        range: Net,
        /// Why the range is protected.
        why: &'static str,
    },
    /// The ban is wider than the guard's prefix limit for its family.
    #[error("{target} is wider than /{min}, the widest {family} ban allowed; ban narrower networks or lower min_prefix_{} in the config",
        if *family == Family::V4 { "v4" } else { "v6" })]
    TooBroad {
        /// The ban's target.
        target: Net,
        /// Its address family.
        family: Family,
        /// The shortest prefix length accepted for a ban of that family.
        min: u8,
    },
    /// An allow entry is wider than the guard's prefix limit for allows.
    #[error("an allow entry of {target} is wider than /{min}, the widest {family} allow entry accepted (it would open every firewall to that range); allow narrower networks or lower allow_min_prefix_{} in [guard]",
        if *family == Family::V4 { "v4" } else { "v6" })]
    AllowTooBroad {
        /// The allow entry's target.
        target: Net,
        /// Its address family.
        family: Family,
        /// The shortest prefix length accepted for an allow entry of that family.
        min: u8,
    },
}

fn describe_allow(target: &Net, allow: &Net) -> String {
    if allow == target {
        "an allow entry".to_string()
    } else {
        format!("the allow entry {allow}")
    }
}

/// Checks bans against the allowlist and the ranges that must stay reachable.
#[derive(Debug, Clone)]
pub struct Guard {
    protected: Vec<(Net, &'static str)>,
    /// Widest IPv4 ban accepted (default /8).
    pub min_prefix_v4: u8,
    /// Widest IPv6 ban accepted (default /16).
    pub min_prefix_v6: u8,
    /// Widest IPv4 allow entry accepted (default /8): an allow of
    /// `0.0.0.0/0` would open every firewall at once.
    pub allow_min_prefix_v4: u8,
    /// Widest IPv6 allow entry accepted (default /16).
    pub allow_min_prefix_v6: u8,
}

impl Default for Guard {
    fn default() -> Self {
        Guard::new(8, 16)
    }
}

impl Guard {
    /// A guard with the built-in protected ranges, refusing bans shorter than
    /// `/min_prefix_v4` (IPv4) and `/min_prefix_v6` (IPv6); allow entries keep
    /// the default limits (/8 and /16).
    pub fn new(min_prefix_v4: u8, min_prefix_v6: u8) -> Guard {
        Guard {
            protected: PROTECTED
                .iter()
                .map(|(net, why)| (net.parse().expect("built-in range"), *why))
                .collect(),
            min_prefix_v4,
            min_prefix_v6,
            allow_min_prefix_v4: 8,
            allow_min_prefix_v6: 16,
        }
    }

    /// The same guard with other limits for allow entries.
    pub fn with_allow_limits(mut self, v4: u8, v6: u8) -> Guard {
        self.allow_min_prefix_v4 = v4;
        self.allow_min_prefix_v6 = v6;
        self
    }

    /// Refuses an allow entry wider than the configured limit.
    pub fn check_allow(&self, target: &Net) -> Result<(), Refusal> {
        let min = match target.family() {
            Family::V4 => self.allow_min_prefix_v4,
            Family::V6 => self.allow_min_prefix_v6,
        };
        if target.prefix() < min {
            return Err(Refusal::AllowTooBroad {
                target: *target,
                family: target.family(),
                min,
            });
        }
        Ok(())
    }

    /// Refuses a ban of `target` if the allowlist or the safety rules forbid
    /// it. `comment` turns an allow entry's value into its comment.
    pub fn check_ban<V>(
        &self,
        target: &Net,
        allows: &NetMap<V>,
        comment: impl Fn(&V) -> Option<String>,
    ) -> Result<(), Refusal> {
        if let Some((allow, v)) = allows.covering(target).next() {
            return Err(Refusal::Allowed {
                target: *target,
                allow,
                comment: comment(v),
            });
        }
        if let Some((range, why)) = self.protected.iter().find(|(r, _)| r.overlaps(target)) {
            return Err(Refusal::Protected {
                target: *target,
                range: *range,
                why,
            });
        }
        let min = match target.family() {
            Family::V4 => self.min_prefix_v4,
            Family::V6 => self.min_prefix_v6,
        };
        if target.prefix() < min {
            return Err(Refusal::TooBroad {
                target: *target,
                family: target.family(),
                min,
            });
        }
        Ok(())
    }
}

impl fmt::Display for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "widest bans /{} (IPv4) and /{} (IPv6); {} protected ranges",
            self.min_prefix_v4,
            self.min_prefix_v6,
            self.protected.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Net {
        s.parse().unwrap()
    }

    fn allows() -> NetMap<Option<String>> {
        let mut m = NetMap::new();
        m.insert(n("198.18.0.0/24"), Some("office".to_string()));
        m.insert(n("2001:db8:1::7"), None);
        m
    }

    fn check(s: &str) -> Result<(), Refusal> {
        Guard::default().check_ban(&n(s), &allows(), |c| c.clone())
    }

    #[test]
    fn allowlist_wins() {
        let err = check("198.18.0.5").unwrap_err();
        assert!(matches!(err, Refusal::Allowed { .. }));
        assert_eq!(
            err.to_string(),
            "198.18.0.5 is allowed by the allow entry 198.18.0.0/24 (office); unallow that entry first if it really must be banned"
        );
        assert!(check("198.18.0.0/25").is_err());
        assert!(check("2001:db8:1::7").is_err());
    }

    #[test]
    fn allow_entries_are_width_limited() {
        let g = Guard::default();
        for s in ["0.0.0.0/0", "::/0", "10.0.0.0/7", "2000::/15"] {
            assert!(
                matches!(g.check_allow(&n(s)), Err(Refusal::AllowTooBroad { .. })),
                "{s}"
            );
        }
        assert!(g.check_allow(&n("10.0.0.0/8")).is_ok());
        assert!(g.check_allow(&n("198.18.0.7")).is_ok());
        let wide = Guard::default().with_allow_limits(0, 0);
        assert!(wide.check_allow(&n("0.0.0.0/0")).is_ok());
    }

    #[test]
    fn a_network_containing_an_allowed_host_may_be_banned() {
        assert!(check("198.18.0.0/16").is_ok());
        assert!(check("2001:db8:1::/48").is_ok());
        assert!(check("198.18.1.5").is_ok());
    }

    #[test]
    fn protected_ranges_are_refused() {
        for s in [
            "127.0.0.1",
            "127.0.0.0/8",
            "::1",
            "fe80::1",
            "169.254.169.254",
            "224.0.0.1",
            "0.0.0.0",
        ] {
            assert!(matches!(check(s), Err(Refusal::Protected { .. })), "{s}");
        }
        for s in [
            "64:ff9b::c612:7",
            "64:ff9b::/96",
            "64:ff9b:1::5",
            "::ffff:0:c612:7",
        ] {
            let err = check(s).unwrap_err();
            assert!(matches!(err, Refusal::Protected { .. }), "{s}");
            assert!(err.to_string().contains("ban the IPv4 address"), "{err}");
        }
        // A wide IPv6 net that contains ::1 is refused too.
        assert!(matches!(check("::/16"), Err(Refusal::Protected { .. })));
    }

    #[test]
    fn non_public_ranges_are_known() {
        for s in [
            "10.1.2.3",
            "172.20.0.0/16",
            "100.64.1.1",
            "fd00::1",
            "0.0.0.0/0",
        ] {
            assert!(non_public(&n(s)).is_some(), "{s}");
        }
        for s in ["203.0.113.7", "2001:db9::1", "100.128.0.1", "172.32.0.1"] {
            assert!(non_public(&n(s)).is_none(), "{s}");
        }
    }

    #[test]
    fn too_broad_is_refused() {
        assert!(matches!(check("10.0.0.0/7"), Err(Refusal::TooBroad { .. })));
        assert!(check("10.0.0.0/8").is_ok());
        assert!(matches!(check("2000::/15"), Err(Refusal::TooBroad { .. })));
        let msg = check("10.0.0.0/7").unwrap_err().to_string();
        assert!(msg.contains("min_prefix_v4"), "{msg}");
    }
}
