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
