//! The `<HOST>` placeholder and turning matched text into an address.
//!
//! `<HOST>` matches an IPv4 address, an IPv6 address (optionally in
//! brackets) or an IPv4-mapped IPv6 address (`::ffff:1.2.3.4`, which becomes
//! plain IPv4). The matched text must then parse as an address: `999.1.1.1`
//! or a DNS name is no address, and palisade never resolves names.

use std::net::IpAddr;

use palisade_model::Net;

/// The regex `<HOST>` expands to in palisade's own patterns; the address
/// is the `host` group. It is deliberately loose (small and fast to
/// match): what it captures must then parse as an address.
pub const HOST_RE: &str =
    r"\[?(?P<host>(?:[0-9]{1,3}\.){3}[0-9]{1,3}|[0-9A-Fa-f]*:[0-9A-Fa-f:.]+)\]?";

/// The address in `text` (a matched `<HOST>`), as a host [`Net`].
/// Brackets are accepted; unspecified addresses (`0.0.0.0`, `::`) and
/// anything that does not parse are not.
pub fn parse_addr(text: &str) -> Option<Net> {
    if let Some(v4) = dotted_quad(text.as_bytes()) {
        return (!v4.is_unspecified()).then(|| Net::host(IpAddr::V4(v4)));
    }
    if let Some(v6) = hex_groups(text.as_bytes()) {
        return (!v6.is_unspecified()).then(|| Net::host(IpAddr::V6(v6)));
    }
    let t = text.trim();
    let t = t
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(t);
    if t.is_empty() || t.len() > 45 {
        return None;
    }
    let ip: IpAddr = t.parse().ok()?;
    let net = Net::host(ip);
    if net.addr().is_unspecified() {
        return None;
    }
    Some(net)
}

/// A plain dotted-quad IPv4 address (what the standard parser accepts:
/// four decimal parts up to 255, no leading zeros), quickly; `None` for
/// anything else, which the standard parser then looks at.
fn dotted_quad(t: &[u8]) -> Option<std::net::Ipv4Addr> {
    if t.len() < 7 || t.len() > 15 {
        return None;
    }
    let mut octets = [0u8; 4];
    let mut i = 0;
    for (n, octet) in octets.iter_mut().enumerate() {
        if n > 0 {
            if t.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
        let start = i;
        let mut v: u32 = 0;
        while i < t.len() && t[i].is_ascii_digit() && i - start < 3 {
            v = v * 10 + u32::from(t[i] - b'0');
            i += 1;
        }
        let digits = i - start;
        if digits == 0 || v > 255 || (digits > 1 && t[start] == b'0') {
            return None;
        }
        *octet = v as u8;
    }
    (i == t.len()).then_some(std::net::Ipv4Addr::from(octets))
}

/// An IPv6 address written as hex groups with at most one `::` (no
/// embedded IPv4, no brackets or zone), as the standard parser reads it;
/// `None` for anything else, which the standard parser then looks at.
fn hex_groups(t: &[u8]) -> Option<std::net::Ipv6Addr> {
    if t.len() < 2 || t.len() > 39 {
        return None;
    }
    let mut head = [0u16; 8];
    let mut tail = [0u16; 8];
    let (mut nh, mut nt) = (0, 0);
    let mut gap = false;
    let mut i = 0;
    if t.starts_with(b"::") {
        gap = true;
        i = 2;
        if i == t.len() {
            return Some(std::net::Ipv6Addr::UNSPECIFIED);
        }
    }
    loop {
        let start = i;
        let mut v: u32 = 0;
        while i < t.len() && i - start < 4 && t[i].is_ascii_hexdigit() {
            v = v * 16 + (t[i] as char).to_digit(16)?;
            i += 1;
        }
        if i == start || (i < t.len() && t[i].is_ascii_hexdigit()) {
            return None;
        }
        let n = nh + nt;
        if n == 8 || (gap && n == 7) {
            return None;
        }
        if gap {
            tail[nt] = v as u16;
            nt += 1;
        } else {
            head[nh] = v as u16;
            nh += 1;
        }
        if i == t.len() {
            break;
        }
        if t[i] != b':' {
            return None;
        }
        i += 1;
        if t.get(i) == Some(&b':') {
            if gap {
                return None;
            }
            gap = true;
            i += 1;
            if i == t.len() {
                break;
            }
        } else if i == t.len() {
            return None;
        }
    }
    if !gap && nh != 8 {
        return None;
    }
    if gap && nh + nt > 7 {
        return None;
    }
    let mut groups = [0u16; 8];
    groups[..nh].copy_from_slice(&head[..nh]);
    groups[8 - nt..].copy_from_slice(&tail[..nt]);
    Some(std::net::Ipv6Addr::from(groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(parse_addr("1.2.3.4").unwrap().to_string(), "1.2.3.4");
        assert_eq!(
            parse_addr("[2001:db8::1]").unwrap().to_string(),
            "2001:db8::1"
        );
        assert_eq!(parse_addr("::ffff:1.2.3.4").unwrap().to_string(), "1.2.3.4");
        assert!(parse_addr("999.1.1.1").is_none());
        assert!(parse_addr("example.com").is_none());
        assert!(parse_addr("0.0.0.0").is_none());
        assert!(parse_addr("::").is_none());
        assert!(parse_addr("01.2.3.4").is_none());
    }

    #[test]
    fn dotted_quads_parse_as_the_standard_parser_does() {
        let mut r = crate::loggen::Rng::new(3);
        let parts = [
            "0", "1", "9", "10", "01", "00", "255", "256", "999", "1000", "", "a", " 1",
        ];
        for _ in 0..20_000 {
            let n = 3 + r.below(3) as usize;
            let text = (0..n)
                .map(|_| parts[r.below(parts.len() as u64) as usize])
                .collect::<Vec<_>>()
                .join(if r.below(20) == 0 { ":" } else { "." });
            let fast = dotted_quad(text.as_bytes());
            let std = text.parse::<std::net::Ipv4Addr>().ok();
            assert!(fast.is_none() || fast == std, "{text:?}");
            if text.len() <= 15 && text.len() >= 7 {
                assert_eq!(fast, std, "{text:?}");
            }
        }
    }

    #[test]
    fn hex_groups_parse_as_the_standard_parser_does() {
        let mut r = crate::loggen::Rng::new(4);
        let parts = [
            "0", "1", "db8", "ffff", "FFFF", "0000", "12345", "g", "", "1.2.3.4", "a",
        ];
        let seps = [":", ":", ":", "::", ":::", "."];
        let mut agree = 0;
        for _ in 0..200_000 {
            let n = 1 + r.below(9) as usize;
            let mut text = String::new();
            if r.below(6) == 0 {
                text.push_str("::");
            }
            for k in 0..n {
                if k > 0 {
                    text.push_str(seps[r.below(seps.len() as u64) as usize]);
                }
                text.push_str(parts[r.below(parts.len() as u64) as usize]);
            }
            if r.below(6) == 0 {
                text.push_str("::");
            }
            let fast = hex_groups(text.as_bytes());
            let std = text.parse::<std::net::Ipv6Addr>().ok();
            assert!(fast.is_none() || fast == std, "{text:?}: {fast:?} {std:?}");
            if !text.contains('.') {
                assert_eq!(fast, std, "{text:?}");
            }
            agree += usize::from(fast.is_some());
        }
        assert!(agree > 5_000, "{agree}");
        for ok in [
            "::",
            "::1",
            "1::",
            "2001:db8::1",
            "1:2:3:4:5:6:7:8",
            "1:2:3:4:5:6:7::",
            "::2:3:4:5:6:7:8",
        ] {
            assert_eq!(hex_groups(ok.as_bytes()), ok.parse().ok(), "{ok}");
        }
    }

    #[test]
    fn host_re_matches_all_forms() {
        let re = regex::Regex::new(&format!("^{HOST_RE}$")).unwrap();
        for ok in [
            "1.2.3.4",
            "2001:db8::1",
            "[2001:db8::1]",
            "::ffff:1.2.3.4",
            "::1",
            "fe80::1:2:3:4",
            "2001:0db8:0000:0000:0000:ff00:0042:8329",
        ] {
            let c = re.captures(ok).unwrap_or_else(|| panic!("{ok}"));
            assert!(parse_addr(&c["host"]).is_some(), "{ok}");
        }
    }
}
