//! The `<HOST>` placeholder and turning matched text into an address;
//! also fail2ban's `<HOST>`, which imported filters expand, and which of its
//! groups an address fills, where its bytes tell.
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

/// fail2ban's IPv4 pattern.
const IP4: &str = r"(?:\d{1,3}\.){3}\d{1,3}";
/// fail2ban's IPv6 pattern ends with `(?:[0-9a-fA-F]{1,4}|(?<=:):)`; every
/// repetition before it ends with `:`, so the look-behind always holds and
/// is dropped here: the pattern stays within what the `regex` crate (a
/// linear-time automaton) runs, and so do the filters that use `<HOST>`.
const IP6: &str = r"(?:[0-9a-fA-F]{1,4}::?|::){1,7}(?:[0-9a-fA-F]{1,4}|:)";

pub(crate) fn r_ip4() -> String {
    format!(r"(?:::f{{4,6}}:)?(?P<ip4>{IP4})")
}
pub(crate) fn r_ip6() -> String {
    format!(r"(?P<ip6>{IP6})")
}
pub(crate) fn r_dns() -> &'static str {
    r"(?P<dns>[\w\-.^_]*\w)"
}
pub(crate) fn r_addr() -> String {
    format!(r"\[?(?:{}|{})\]?", r_ip4(), r_ip6())
}

/// fail2ban's `<HOST>` (with `usedns`, as palisade reads filters): its
/// groups are `ip4`, `ip6` and `dns`, in that order.
pub(crate) fn f2b_host() -> String {
    format!("(?:{}|{})", r_addr(), r_dns())
}

/// Which group of fail2ban's [`f2b_host`] holds the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostGroup {
    Ip4,
    Ip6,
}

/// Which of [`f2b_host`]'s groups spans the whole of `text` (the other two
/// take no part) when the pattern matches all of it, if the text's bytes
/// show it; `None` when a search must tell.
///
/// Why: digits and dots alone cannot begin a bracket or the `::ffff:`
/// prefix, so the pattern's first way, a bare IPv4 address, is tried first;
/// in the shape `\d{1,3}(\.\d{1,3}){3}` its greedy runs of digits take the
/// whole text at once. Hex digits and colons without a dot rule out every
/// way through `ip4` (which needs dots) and through `dns` (which has no
/// colon), and leave no bracket: only `ip6`, which must then match the
/// whole text. That is checked by a DFA unless `matched`: the caller knows
/// the pattern matches the whole text (its DFA found that place).
pub(crate) fn f2b_host_group(text: &[u8], matched: bool) -> Option<HostGroup> {
    if ip4_shape(text) {
        return Some(HostGroup::Ip4);
    }
    if text.contains(&b':') && text.iter().all(|&b| hex_or_colon(b)) && (matched || ip6_whole(text))
    {
        return Some(HostGroup::Ip6);
    }
    None
}

/// Where the first way fail2ban's [`f2b_host`] matches from `at` ends, by
/// `end`, when the text there begins with an IPv4 or an IPv6 address: the
/// group the address is in, where that group, which starts at `at`, ends,
/// and where the match does; `None` when a search must tell.
///
/// Why, at a digit that begins an IPv4 address: `\[?` and the `::ffff:`
/// prefix take nothing, and the first way through `ip4`, which comes
/// before `ip6` and `dns`, is plain: each of its first three `\d{1,3}`
/// takes every digit of its run (there is no way with fewer: the next byte
/// would be a digit, not the dot that must follow), and the last takes up
/// to three. When that way exists it is the pattern's first, and `\]?`
/// then takes a `]` that follows.
///
/// Why, at hex digits and colons with no dot among them nor right after
/// them: `\[?` takes nothing, and no way through `ip4` exists (with or
/// without its `::ffff:` prefix, its first dot would come within those
/// bytes or right after them). So the first way through `ip6`, when there
/// is one, is the pattern's ([`ip6_first_way`]), and `\]?` takes a `]`
/// that follows; `dns` comes after both.
pub(crate) fn f2b_host_first_end(
    hay: &[u8],
    at: usize,
    end: usize,
) -> Option<(HostGroup, usize, usize)> {
    let text = &hay[at..end];
    let (group, i) = match ip4_first_way(text) {
        Some(i) => (HostGroup::Ip4, i),
        None => {
            let run = text.iter().take_while(|&&b| hex_or_colon(b)).count();
            if run == 0 || text.get(run) == Some(&b'.') {
                return None;
            }
            (HostGroup::Ip6, ip6_first_way(text)?)
        }
    };
    Some((
        group,
        at + i,
        at + i + usize::from(text.get(i) == Some(&b']')),
    ))
}

/// Whether `b` can be in an IPv6 address as fail2ban's pattern writes it
/// (no embedded IPv4 address).
fn hex_or_colon(b: u8) -> bool {
    b.is_ascii_hexdigit() || b == b':'
}

/// How much of `text`, from its start, the first way of fail2ban's IPv6
/// pattern [`IP6`] takes when nothing after it can fail, if it matches at
/// all.
///
/// The pattern's ways are tried in its order: another round of the
/// repetition before the last piece (up to seven), and in a round a group
/// of hex digits before `::`, its second colon before none. A group takes
/// the whole run of hex digits or none of it (only the whole run can be
/// followed by the colon it needs), so a round has at most two ways, and
/// the search tries at most 2^7 of them, each a few bytes long, whatever
/// the text.
fn ip6_first_way(text: &[u8]) -> Option<usize> {
    /// Hex digits from `i`, counted up to five (more than four: no group).
    fn hex(t: &[u8], i: usize) -> usize {
        t[i..]
            .iter()
            .take(5)
            .take_while(|b| b.is_ascii_hexdigit())
            .count()
    }
    /// The first way on from `i` after `rounds` rounds.
    fn on(t: &[u8], i: usize, rounds: usize) -> Option<usize> {
        if rounds < 7 {
            let h = hex(t, i);
            if (1..=4).contains(&h) && t.get(i + h) == Some(&b':') {
                if t.get(i + h + 1) == Some(&b':')
                    && let Some(e) = on(t, i + h + 2, rounds + 1)
                {
                    return Some(e);
                }
                if let Some(e) = on(t, i + h + 1, rounds + 1) {
                    return Some(e);
                }
            } else if h == 0
                && t[i..].starts_with(b"::")
                && let Some(e) = on(t, i + 2, rounds + 1)
            {
                return Some(e);
            }
        }
        if rounds == 0 {
            return None;
        }
        // The last piece: up to four hex digits, else a colon.
        match hex(t, i).min(4) {
            0 => (t.get(i) == Some(&b':')).then_some(i + 1),
            h => Some(i + h),
        }
    }
    on(text, 0, 0)
}

/// How much of `text`, from its start, the first way of
/// `(?:\d{1,3}\.){3}\d{1,3}` takes, if there is one: each of the first three
/// runs of digits whole (at most three, then a dot), and up to three of the
/// last.
fn ip4_first_way(text: &[u8]) -> Option<usize> {
    let mut i = 0;
    for octet in 0..4 {
        let digits = text[i..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || (octet < 3 && (digits > 3 || text.get(i + digits) != Some(&b'.'))) {
            return None;
        }
        i += digits.min(3) + usize::from(octet < 3);
    }
    Some(i)
}

/// `\d{1,3}(\.\d{1,3}){3}`, the whole of `text`.
fn ip4_shape(text: &[u8]) -> bool {
    ip4_first_way(text) == Some(text.len())
}

/// Whether fail2ban's IPv6 pattern matches the whole of `text`.
fn ip6_whole(text: &[u8]) -> bool {
    use regex_automata::dfa::{Automaton, dense};
    use regex_automata::{Anchored, Input};
    static DFA: std::sync::LazyLock<Option<dense::DFA<Vec<u32>>>> =
        std::sync::LazyLock::new(|| {
            dense::Builder::new()
                .syntax(regex_automata::util::syntax::Config::new().unicode(false))
                .build(&format!(r"(?:{IP6})\z"))
                .ok()
        });
    let Some(dfa) = DFA.as_ref() else {
        return false;
    };
    dfa.try_search_fwd(&Input::new(text).anchored(Anchored::Yes))
        .is_ok_and(|m| m.is_some())
}

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
    /// Each byte's value as a hex digit; 16 for any other byte.
    const HEX: [u8; 256] = {
        let mut v = [16u8; 256];
        let mut b = 0;
        while b < 256 {
            let c = b as u8;
            v[b] = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => 16,
            };
            b += 1;
        }
        v
    };
    if t.len() < 2 || t.len() > 39 {
        return None;
    }
    // The groups in order, and how many came before the `::`, if any.
    let mut groups = [0u16; 8];
    let (mut n, mut gap) = (0, None);
    let mut i = 0;
    if t.starts_with(b"::") {
        gap = Some(0);
        i = 2;
        if i == t.len() {
            return Some(std::net::Ipv6Addr::UNSPECIFIED);
        }
    }
    loop {
        let start = i;
        let mut v: u16 = 0;
        while let Some(&c) = t.get(i) {
            let d = HEX[usize::from(c)];
            if d == 16 {
                break;
            }
            if i - start == 4 {
                return None;
            }
            v = v << 4 | u16::from(d);
            i += 1;
        }
        // At most seven groups beside a `::`, eight without.
        if i == start || n == 8 || (gap.is_some() && n == 7) {
            return None;
        }
        groups[n] = v;
        n += 1;
        if i == t.len() {
            break;
        }
        if t[i] != b':' {
            return None;
        }
        i += 1;
        if t.get(i) == Some(&b':') {
            // One `::` at most, standing for one group at least.
            if gap.is_some() || n == 8 {
                return None;
            }
            gap = Some(n);
            i += 1;
            if i == t.len() {
                break;
            }
        } else if i == t.len() {
            return None;
        }
    }
    match gap {
        None if n != 8 => return None,
        None => {}
        // The groups after the `::` move to the end (by 8 - n places);
        // zeros fill the gap.
        Some(g) => {
            let shift = 8 - n;
            groups = std::array::from_fn(|k| match k {
                k if k < g => groups[k],
                k if k < g + shift => 0,
                k => groups[k - shift],
            });
        }
    }
    Some(std::net::Ipv6Addr::from(groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// fail2ban's `<HOST>` searched by the `regex` crate, anchored and
    /// leftmost-first: the group holding the address, where that group
    /// ends and where the match does.
    fn regex_first_way() -> impl Fn(&[u8]) -> Option<(HostGroup, usize, usize)> {
        let re = regex::bytes::RegexBuilder::new(&format!("^(?:{})", f2b_host()))
            .unicode(false)
            .build()
            .unwrap();
        move |t: &[u8]| {
            let c = re.captures(t)?;
            let (group, addr) = match (c.name("ip4"), c.name("ip6")) {
                (Some(a), _) => (HostGroup::Ip4, a),
                (None, Some(a)) => (HostGroup::Ip6, a),
                _ => return None,
            };
            Some((group, addr.end(), c[0].len()))
        }
    }

    /// Where the first way of fail2ban's `<HOST>` ends, by the text's bytes
    /// when they begin with an IPv4 or IPv6 address: where the `regex`
    /// crate's leftmost-first search of it ends, every time.
    #[test]
    fn the_hosts_first_way_by_its_bytes() {
        let want = regex_first_way();
        let mut answered = 0;
        for t in [
            "198.51.100.7 port 22",
            "1.2.3.4",
            "1.2.3.4567",
            "1.2.3.4]:22",
            "1.2.3.4] ",
            "1234.1.1.1",
            "1.2.3",
            "1.2.3.",
            "01.02.003.4x",
            "1.2.3.4.5",
            "999.999.999.999",
            "1..2.3.4",
            "12.34.56.78:80",
            "1.2.3.4a",
            "[1.2.3.4]",
            "::ffff:1.2.3.4",
            "host.example",
            // IPv6: whole, cut short by its rounds, by its groups, by
            // what follows, or not placed by bytes.
            "2001:db8::1",
            "2001:db8:69:ee::4682 port 18558 ssh2",
            "2001:db8::1]:22",
            "::1",
            "::",
            "1:2:3:4:5:6:7:8",
            "1:2:3:4:5:6:7:8:9:10",
            "a::b::c",
            "a:::b",
            "2001:db8:",
            "2001:db8::",
            "12345::1",
            "fe80::1%eth0",
            "dead:beef:gg",
            "2001:db8::1.2.3.4",
            "abcd",
            "[2001:db8::1]",
            ":",
        ] {
            if let Some(ends) = f2b_host_first_end(t.as_bytes(), 0, t.len()) {
                assert_eq!(Some(ends), want(t.as_bytes()), "{t:?}");
                answered += 1;
            }
            // Within a longer text, from where the host starts.
            let longer = format!("from {t}");
            if let Some((g, a, e)) = f2b_host_first_end(longer.as_bytes(), 5, longer.len()) {
                assert_eq!(Some((g, a - 5, e - 5)), want(t.as_bytes()), "{longer:?}");
            }
        }
        assert_eq!(answered, 22);
        // Crafted: rounds that can each take `::` or `:`, a last piece that
        // fails after seven of them, and 60 KiB of rounds; each answered as
        // the `regex` crate answers (the search tries at most 2^7 ways).
        for t in [
            "a::".repeat(7) + "g",
            "a::".repeat(20_000),
            "1:".repeat(30_000),
            "a::".repeat(6) + ":",
        ] {
            let got = f2b_host_first_end(t.as_bytes(), 0, t.len());
            assert_eq!(got, want(t.as_bytes()), "{}", &t[..t.len().min(40)]);
        }
    }

    /// Texts of hex digits, colons, dots, brackets and other bytes, drawn
    /// at random: every place told by bytes is the `regex` crate's, and
    /// IPv6 addresses as logs write them are all told so.
    #[test]
    fn random_hosts_placed_by_bytes_are_the_regex_crates() {
        let want = regex_first_way();
        let mut r = crate::loggen::Rng::new(6);
        let mut next = move |n: u64| r.below(n);
        let alphabet = b"0123456789abcdefABCDEFg::::..[] x%";
        let mut told = 0;
        for _ in 0..200_000 {
            let len = next(40) as usize;
            let t: Vec<u8> = (0..len)
                .map(|_| alphabet[next(alphabet.len() as u64) as usize])
                .collect();
            let end = next(len as u64 + 1) as usize;
            if let Some(got) = f2b_host_first_end(&t, 0, end) {
                assert_eq!(
                    Some(got),
                    want(&t[..end]),
                    "{:?}",
                    String::from_utf8_lossy(&t[..end])
                );
                told += 1;
            }
        }
        assert!(told > 10_000, "{told}");
        // Addresses as written: each group without its leading zeros, the
        // longest run of zero groups as `::`.
        for _ in 0..20_000 {
            let groups: Vec<u16> = (0..8)
                .map(|_| {
                    if next(3) == 0 {
                        0
                    } else {
                        next(0x10000) as u16
                    }
                })
                .collect();
            let addr = std::net::Ipv6Addr::from(<[u16; 8]>::try_from(groups).unwrap());
            for t in [
                format!("{addr} port 22"),
                format!("{addr}]:22"),
                addr.to_string(),
            ] {
                // `::` is no match of fail2ban's pattern (nor an attacker);
                // a mapped IPv4 address goes to `ip4`, by the DFA.
                if addr.is_unspecified() || addr.to_ipv4_mapped().is_some() {
                    continue;
                }
                let got = f2b_host_first_end(t.as_bytes(), 0, t.len());
                assert!(got.is_some(), "{t}");
                assert_eq!(got, want(t.as_bytes()), "{t}");
            }
        }
    }

    #[test]
    fn host_groups_are_the_regex_crates() {
        let re = regex::bytes::RegexBuilder::new(&format!(r"\A{}\z", f2b_host()))
            .unicode(false)
            .build()
            .unwrap();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut texts: Vec<Vec<u8>> = [
            "198.51.100.7",
            "2001:db8::7",
            "::ffff:1.2.3.4",
            "1:2:3:4:5:6:7:8",
            "1:2:3:4:5:6:7:8:9",
            "::",
            ":",
        ]
        .iter()
        .map(|t| t.as_bytes().to_vec())
        .collect();
        let hex = b"0123456789abcdefABCDEF";
        for n in 0..60_000 {
            let mut t = Vec::new();
            match n % 3 {
                // Runs of digits between dots.
                0 => {
                    for k in 0..3 + next() % 3 {
                        if k > 0 {
                            t.push(b'.');
                        }
                        let len = match next() % 10 {
                            0 => 0,
                            1 => 4,
                            r => 1 + r % 3,
                        };
                        t.extend((0..len).map(|_| b'0' + (next() % 10) as u8));
                    }
                }
                // Runs of hex digits between one or two colons.
                1 => {
                    for k in 0..1 + next() % 10 {
                        if k > 0 || next() % 4 == 0 {
                            t.extend(std::iter::repeat_n(b':', 1 + (next() % 3 == 0) as usize));
                        }
                        t.extend((0..next() % 6).map(|_| hex[(next() % 22) as usize]));
                    }
                }
                // Anything of those bytes.
                _ => {
                    let alphabet = b"0123456789abcdefABCDEF:.[]-_xf";
                    t.extend((0..1 + next() % 24).map(|_| alphabet[(next() % 30) as usize]));
                }
            }
            texts.push(t);
        }
        let (mut told, mut v4, mut v6) = (0, 0, 0);
        for t in &texts {
            let Some(caps) = re.captures(t) else {
                // Not a host: never told to be one by its bytes alone.
                assert_eq!(f2b_host_group(t, false), None, "{t:?}");
                continue;
            };
            // Known to be a host, the bytes tell the same.
            let group = f2b_host_group(t, false);
            assert_eq!(f2b_host_group(t, true), group);
            let Some(group) = group else {
                continue;
            };
            told += 1;
            let whole = Some((0, t.len()));
            let span = |n: &str| caps.name(n).map(|m| (m.start(), m.end()));
            let want = match group {
                HostGroup::Ip4 => {
                    v4 += 1;
                    [whole, None, None]
                }
                HostGroup::Ip6 => {
                    v6 += 1;
                    [None, whole, None]
                }
            };
            assert_eq!(
                [span("ip4"), span("ip6"), span("dns")],
                want,
                "{:?}",
                String::from_utf8_lossy(t)
            );
        }
        assert!(
            v4 > 2_000 && v6 > 3_000,
            "{told} told: {v4} IPv4, {v6} IPv6"
        );
    }

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
            // Too many groups beside a `::`, which must stand for one.
            "1:2:3:4:5:6:7:8::",
            "::1:2:3:4:5:6:7:8",
            "1:2:3:4::5:6:7:8",
            "1:2:3:4:5:6:7:8:9",
            "12345::",
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
