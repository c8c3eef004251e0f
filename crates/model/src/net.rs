//! Addresses and networks: the one type every decision is about.
//!
//! A [`Net`] is an IPv4 or IPv6 network in canonical form. A host is simply a
//! network with a full-length prefix (/32 or /128), so the rest of palisade
//! never has to ask "host or network?" before comparing, storing or covering.
//!
//! Canonical form means:
//! - IPv4-mapped IPv6 (`::ffff:1.2.3.4`, `::ffff:1.2.3.0/120`) becomes IPv4,
//!   because the kernel sees those packets as IPv4 and an operator means the
//!   IPv4 address;
//! - host bits must be zero: `1.2.3.4/24` is rejected with a suggestion
//!   (`1.2.3.0/24`) rather than silently widened or narrowed, since either
//!   guess could block the wrong thing.

use std::cmp::Ordering;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// The address family of a [`Net`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Number of bits in an address of this family.
    pub const fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// An IPv4 or IPv6 host or network in canonical form (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

/// Why a string is not a valid address or network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    /// The text is neither an address nor `ADDR/PREFIX`.
    #[error(
        "{input:?} is not an IP address or network (expected e.g. 198.51.100.7, 2001:db8::1 or 203.0.113.0/24)"
    )]
    Syntax {
        /// The text as given.
        input: String,
    },
    /// The prefix length is longer than the family's address.
    #[error("{input:?}: prefix length {prefix} is too long for {family} (at most /{max})")]
    PrefixTooLong {
        /// The text as given.
        input: String,
        /// The prefix length given.
        prefix: u32,
        /// The address's family.
        family: Family,
        /// The longest prefix length of that family (32 or 128).
        max: u8,
    },
    /// The address has bits set beyond the prefix (`10.0.0.1/8`); palisade
    /// asks rather than guesses.
    #[error("{input:?} has host bits set below the /{prefix} prefix; did you mean {suggestion}?")]
    HostBits {
        /// The text as given.
        input: String,
        /// The prefix length given.
        prefix: u8,
        /// The network with the host bits cleared, suggested to the operator.
        suggestion: Net,
    },
}

impl Net {
    /// A network from an address and prefix, failing if host bits are set.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Net, NetError> {
        let (addr, prefix) = unmap(addr, prefix);
        let family = family_of(&addr);
        if prefix > family.bits() {
            return Err(NetError::PrefixTooLong {
                input: format!("{addr}/{prefix}"),
                prefix: prefix.into(),
                family,
                max: family.bits(),
            });
        }
        let net = Net::truncating(addr, prefix);
        if net.addr != addr {
            return Err(NetError::HostBits {
                input: format!("{addr}/{prefix}"),
                prefix,
                suggestion: net,
            });
        }
        Ok(net)
    }

    /// The network of `prefix` bits that contains `addr` (host bits cleared).
    ///
    /// # Panics
    /// If `prefix` is longer than the family allows.
    pub fn truncating(addr: IpAddr, prefix: u8) -> Net {
        let (addr, prefix) = unmap(addr, prefix);
        let family = family_of(&addr);
        assert!(
            prefix <= family.bits(),
            "prefix /{prefix} too long for {family}"
        );
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(prefix))),
        };
        Net { addr, prefix }
    }

    /// A single host (/32 or /128).
    pub fn host(addr: IpAddr) -> Net {
        let addr = canonical_addr(addr);
        let prefix = family_of(&addr).bits();
        Net { addr, prefix }
    }

    /// The first address of the network.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// Prefix length in bits: 0 to 32 for IPv4, 0 to 128 for IPv6.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// IPv4 or IPv6.
    pub fn family(&self) -> Family {
        family_of(&self.addr)
    }

    /// True for a single address (/32 or /128).
    pub fn is_host(&self) -> bool {
        self.prefix == self.family().bits()
    }

    /// True if every address of `other` is inside `self`.
    pub fn contains(&self, other: &Net) -> bool {
        self.family() == other.family()
            && self.prefix <= other.prefix
            && Net::truncating(other.addr, self.prefix).addr == self.addr
    }

    /// True if `addr` is inside this network.
    pub fn contains_addr(&self, addr: IpAddr) -> bool {
        self.contains(&Net::host(addr))
    }

    /// True if the two networks share at least one address.
    pub fn overlaps(&self, other: &Net) -> bool {
        self.contains(other) || other.contains(self)
    }

    /// The first and last address as integers (IPv4 uses the low 32 bits).
    /// Useful for interval arithmetic across both families.
    pub fn range(&self) -> (u128, u128) {
        let bits = self.family().bits();
        let start = addr_to_u128(self.addr);
        let size_minus_one = if self.prefix == 0 {
            if bits == 128 {
                u128::MAX
            } else {
                (1u128 << bits) - 1
            }
        } else {
            (1u128 << (bits - self.prefix)) - 1
        };
        (start, start + size_minus_one)
    }

    /// The address with the given integer value in this net's family.
    pub fn addr_from_u128(family: Family, value: u128) -> IpAddr {
        match family {
            Family::V4 => IpAddr::V4(Ipv4Addr::from(value as u32)),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(value)),
        }
    }

    /// The networks that contain this one, from the widest (/0) down to
    /// itself. Lets exact-match maps answer "which entry covers X?" with one
    /// lookup per prefix length.
    pub fn supernets(self) -> impl Iterator<Item = Net> {
        (0..=self.prefix).map(move |p| Net::truncating(self.addr, p))
    }
}

impl Ord for Net {
    /// IPv4 before IPv6, then by address, then wider networks first.
    fn cmp(&self, other: &Self) -> Ordering {
        (self.family(), addr_to_u128(self.addr), self.prefix).cmp(&(
            other.family(),
            addr_to_u128(other.addr),
            other.prefix,
        ))
    }
}

impl PartialOrd for Net {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Net {
    /// Hosts print without a prefix (`198.51.100.7`), networks with one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_host() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

impl fmt::Debug for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Net({self})")
    }
}

impl FromStr for Net {
    type Err = NetError;

    /// Parses `ADDR` or `ADDR/PREFIX`. Surrounding whitespace and a pair of
    /// brackets around IPv6 (`[2001:db8::1]`) are accepted, because logs and
    /// URLs write addresses that way.
    fn from_str(input: &str) -> Result<Net, NetError> {
        let s = input.trim();
        let syntax = || NetError::Syntax {
            input: input.to_string(),
        };
        let (addr_part, prefix_part) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr_part = addr_part
            .strip_prefix('[')
            .and_then(|a| a.strip_suffix(']'))
            .unwrap_or(addr_part);
        // `IpAddr::from_str` is strict (no leading zeros in IPv4 octets), which
        // matters: `010.0.0.1` is octal to some tools and decimal to others.
        let addr: IpAddr = addr_part.parse().map_err(|_| syntax())?;
        let prefix = match prefix_part {
            None => return Ok(Net::host(addr)),
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u32>().map_err(|_| syntax())?
            }
            Some(_) => return Err(syntax()),
        };
        let max = family_of(&addr).bits();
        if prefix > u32::from(max) {
            return Err(NetError::PrefixTooLong {
                input: input.to_string(),
                prefix,
                family: family_of(&addr),
                max,
            });
        }
        Net::new(addr, prefix as u8).map_err(|e| match e {
            NetError::HostBits {
                prefix, suggestion, ..
            } => NetError::HostBits {
                input: input.to_string(),
                prefix,
                suggestion,
            },
            other => other,
        })
    }
}

impl From<IpAddr> for Net {
    fn from(addr: IpAddr) -> Net {
        Net::host(addr)
    }
}

impl serde::Serialize for Net {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            // Compact form for the store: family-sized address bytes + prefix.
            use serde::ser::SerializeTuple;
            let mut t = s.serialize_tuple(2)?;
            match self.addr {
                IpAddr::V4(a) => t.serialize_element(&NetBytes::V4(a.octets()))?,
                IpAddr::V6(a) => t.serialize_element(&NetBytes::V6(a.octets()))?,
            }
            t.serialize_element(&self.prefix)?;
            t.end()
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
enum NetBytes {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl<'de> serde::Deserialize<'de> for Net {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Net, D::Error> {
        if d.is_human_readable() {
            let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            let (bytes, prefix): (NetBytes, u8) = serde::Deserialize::deserialize(d)?;
            let addr = match bytes {
                NetBytes::V4(o) => IpAddr::V4(Ipv4Addr::from(o)),
                NetBytes::V6(o) => IpAddr::V6(Ipv6Addr::from(o)),
            };
            Net::new(addr, prefix).map_err(serde::de::Error::custom)
        }
    }
}

/// IPv4-mapped IPv6 addresses as plain IPv4.
pub fn canonical_addr(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(a),
        },
        v4 => v4,
    }
}

/// Maps `::ffff:a.b.c.d/p` (p >= 96) to `a.b.c.d/(p-96)`.
fn unmap(addr: IpAddr, prefix: u8) -> (IpAddr, u8) {
    match addr {
        IpAddr::V6(a) if prefix >= 96 => match a.to_ipv4_mapped() {
            Some(v4) => (IpAddr::V4(v4), prefix - 96),
            None => (addr, prefix),
        },
        _ => (addr, prefix),
    }
}

fn family_of(addr: &IpAddr) -> Family {
    match addr {
        IpAddr::V4(_) => Family::V4,
        IpAddr::V6(_) => Family::V6,
    }
}

fn addr_to_u128(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u32::from(a).into(),
        IpAddr::V6(a) => a.into(),
    }
}

fn mask32(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

fn mask128(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Net {
        s.parse().unwrap()
    }

    #[test]
    fn parses_hosts_and_networks() {
        assert_eq!(n("198.51.100.7").to_string(), "198.51.100.7");
        assert!(n("198.51.100.7").is_host());
        assert_eq!(n("198.51.100.7/32").to_string(), "198.51.100.7");
        assert_eq!(n("203.0.113.0/24").to_string(), "203.0.113.0/24");
        assert_eq!(n("2001:db8::1").to_string(), "2001:db8::1");
        assert_eq!(n("2001:db8::/32").to_string(), "2001:db8::/32");
        assert_eq!(n(" [2001:db8::1] ").to_string(), "2001:db8::1");
        assert_eq!(n("0.0.0.0/0").prefix(), 0);
        assert_eq!(n("::/0").prefix(), 0);
    }

    #[test]
    fn ipv4_mapped_becomes_ipv4() {
        assert_eq!(n("::ffff:1.2.3.4"), n("1.2.3.4"));
        assert_eq!(n("::ffff:1.2.3.4").family(), Family::V4);
        assert_eq!(n("::ffff:1.2.3.0/120"), n("1.2.3.0/24"));
        assert_eq!(Net::host("::ffff:10.0.0.1".parse().unwrap()), n("10.0.0.1"));
        // A prefix shorter than the mapped range stays IPv6.
        assert_eq!(n("::fffe:0:0/95").family(), Family::V6);
    }

    #[test]
    fn host_bits_are_an_error_with_a_suggestion() {
        let err = "1.2.3.4/24".parse::<Net>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"1.2.3.4/24\" has host bits set below the /24 prefix; did you mean 1.2.3.0/24?"
        );
        let err = "2001:db8::1/64".parse::<Net>().unwrap_err();
        assert!(
            err.to_string().contains("did you mean 2001:db8::/64"),
            "{err}"
        );
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "1.2.3",
            "1.2.3.4.5",
            "256.1.1.1",
            "010.0.0.1",
            "1.2.3.4/",
            "1.2.3.4/abc",
            "1.2.3.4/-1",
            "1.2.3.4/ 8",
            "example.com",
            "1.2.3.4; rm -rf /",
            "2001:db8::1%eth0",
        ] {
            assert!(bad.parse::<Net>().is_err(), "{bad:?} should be rejected");
        }
        assert!(matches!(
            "1.2.3.4/33".parse::<Net>(),
            Err(NetError::PrefixTooLong { .. })
        ));
        assert!(matches!(
            "::/129".parse::<Net>(),
            Err(NetError::PrefixTooLong { .. })
        ));
    }

    #[test]
    fn containment() {
        assert!(n("10.0.0.0/8").contains(&n("10.1.2.3")));
        assert!(n("10.0.0.0/8").contains(&n("10.1.0.0/16")));
        assert!(!n("10.1.0.0/16").contains(&n("10.0.0.0/8")));
        assert!(n("10.0.0.0/8").overlaps(&n("10.1.0.0/16")));
        assert!(!n("10.0.0.0/8").overlaps(&n("11.0.0.0/8")));
        assert!(!n("0.0.0.0/0").contains(&n("::1")), "families never mix");
        assert!(n("::/0").contains(&n("2001:db8::1")));
    }

    #[test]
    fn ranges() {
        assert_eq!(n("10.0.0.0/8").range(), (0x0a00_0000, 0x0aff_ffff));
        assert_eq!(n("0.0.0.0/0").range(), (0, u32::MAX as u128));
        assert_eq!(n("::/0").range(), (0, u128::MAX));
        assert_eq!(n("1.2.3.4").range(), (0x0102_0304, 0x0102_0304));
    }

    #[test]
    fn supernets_run_wide_to_narrow() {
        let s: Vec<String> = n("10.1.2.0/24")
            .supernets()
            .map(|x| x.to_string())
            .collect();
        assert_eq!(s.len(), 25);
        assert_eq!(s[0], "0.0.0.0/0");
        assert_eq!(s[8], "10.0.0.0/8");
        assert_eq!(s[24], "10.1.2.0/24");
    }

    #[test]
    fn order_is_family_then_address_then_wider_first() {
        let mut v = [
            n("2001:db8::1"),
            n("10.0.0.1"),
            n("10.0.0.0/8"),
            n("9.0.0.0/8"),
        ];
        v.sort();
        let s: Vec<String> = v.iter().map(|x| x.to_string()).collect();
        assert_eq!(s, ["9.0.0.0/8", "10.0.0.0/8", "10.0.0.1", "2001:db8::1"]);
    }

    #[test]
    fn serde_round_trips_in_both_forms() {
        for s in ["198.51.100.7", "203.0.113.0/24", "2001:db8::/48", "::1"] {
            let net = n(s);
            let json = serde_json::to_string(&net).unwrap();
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<Net>(&json).unwrap(), net);
            let bin = postcard::to_stdvec(&net).unwrap();
            assert_eq!(postcard::from_bytes::<Net>(&bin).unwrap(), net);
        }
        assert!(serde_json::from_str::<Net>("\"1.2.3.4/24\"").is_err());
    }
}
