//! Names of decisions on buses that store them by key (NATS KV keys, MQTT
//! topics): one key per decision, readable and reversible.
//!
//! - `ban.<net>`, `allow.<net>`: global decisions;
//! - `allow.<net>.<group>`: a group's allow entry.
//!
//! A network is written with `.` as `-`, `:` as `_` and `/` as `=`
//! (`198-51-100-0=24`, `2001_db8__1`), so a key is valid for NATS KV
//! (`[-/_=.A-Za-z0-9]`) and an MQTT topic level, and has a fixed number of
//! dot-separated tokens. Dots in group names become `/`.

use palisade_model::{Action, Net};

/// A network as a key token.
pub fn net_token(net: &Net) -> String {
    let mut text = NetText::default();
    text.write_token(net);
    text.as_str().to_string()
}

/// The network of a key token.
///
/// Every decision a joining agent reads comes with its key, so this runs
/// once per decision per agent: it works on the stack.
pub fn parse_net_token(token: &str) -> Option<Net> {
    let mut text = NetText::default();
    let bytes = text.buf.get_mut(..token.len())?;
    for (b, t) in bytes.iter_mut().zip(token.bytes()) {
        *b = match t {
            b'-' => b'.',
            b'_' => b':',
            b'=' => b'/',
            t => t,
        };
    }
    text.len = token.len();
    let net: Net = text.as_str().parse().ok()?;
    // Only the canonical spelling is a key (no two keys for one decision).
    let mut canonical = NetText::default();
    canonical.write_token(&net);
    (canonical.as_str() == token).then_some(net)
}

/// A network's text in a buffer on the stack: the longest is a full IPv6
/// address with a prefix (`ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128`,
/// 43 bytes).
struct NetText {
    buf: [u8; 48],
    len: usize,
}

impl Default for NetText {
    fn default() -> NetText {
        NetText {
            buf: [0; 48],
            len: 0,
        }
    }
}

impl NetText {
    /// Writes `net` as a key token.
    fn write_token(&mut self, net: &Net) {
        use std::fmt::Write as _;
        self.len = 0;
        write!(self, "{net}").expect("a network's text fits 48 bytes");
        for b in &mut self.buf[..self.len] {
            *b = match *b {
                b'.' => b'-',
                b':' => b'_',
                b'/' => b'=',
                b => b,
            };
        }
    }

    fn as_str(&self) -> &str {
        // Only whole UTF-8 strings are ever put in, and ASCII bytes swapped
        // for ASCII bytes.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl std::fmt::Write for NetText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(std::fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// The key of a decision.
pub fn decision_key(action: Action, net: &Net, group: Option<&str>) -> String {
    let a = match action {
        Action::Ban => "ban",
        Action::Allow => "allow",
    };
    match group {
        None => format!("{a}.{}", net_token(net)),
        Some(g) => format!("{a}.{}.{}", net_token(net), g.replace('.', "/")),
    }
}

/// Whether decisions of `action` may name a group: only allows do (a
/// group's own allowlist); bans are for the whole network.
pub fn may_have_group(action: Action) -> bool {
    action == Action::Allow
}

/// The action, network and group of a decision key.
pub fn parse_decision_key(key: &str) -> Option<(Action, Net, Option<String>)> {
    let mut parts = key.split('.');
    let action = match parts.next()? {
        "ban" => Action::Ban,
        "allow" => Action::Allow,
        _ => return None,
    };
    let net = parse_net_token(parts.next()?)?;
    let group = parts.next().map(|g| g.replace('/', "."));
    if parts.next().is_some() || (group.is_some() && !may_have_group(action)) {
        return None;
    }
    Some((action, net, group))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_are_bus_safe() {
        for (net, group) in [
            ("198.51.100.7", None),
            ("198.51.100.0/24", None),
            ("2001:db8::1", None),
            ("2001:db8::/32", Some("dmz.eu")),
            ("::", None),
        ] {
            let n: Net = net.parse().unwrap();
            for action in [Action::Ban, Action::Allow] {
                if group.is_some() && action == Action::Ban {
                    continue;
                }
                let k = decision_key(action, &n, group);
                assert!(
                    k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-/_=.".contains(c)),
                    "{k}"
                );
                assert_eq!(
                    k.split('.').count(),
                    if group.is_some() { 3 } else { 2 },
                    "{k}"
                );
                assert_eq!(
                    parse_decision_key(&k),
                    Some((action, n, group.map(String::from)))
                );
            }
        }
        assert_eq!(
            decision_key(Action::Ban, &"198.51.100.0/24".parse().unwrap(), None),
            "ban.198-51-100-0=24"
        );
        assert_eq!(parse_decision_key("ban.198-51-100-7.x"), None);
        assert_eq!(parse_decision_key("ban.nonsense"), None);
        assert_eq!(parse_decision_key("kick.198-51-100-7"), None);
    }

    /// Only the one spelling a key is written with is read back: not the
    /// network's own text, not a padded, bracketed or zero-led variant, and
    /// nothing too long for any network.
    #[test]
    fn only_canonical_tokens_are_networks() {
        for token in [
            "198.51.100.7",
            "198-51-100-07",
            " 198-51-100-7",
            "198-51-100-7=32",
            "198-51-100-0=024",
            "[2001_db8__1]",
            "2001_0db8__1",
            "2001_DB8__1",
            "198-51-100-7=33",
            "",
            "ü",
            &"1".repeat(49),
            "ffff_ffff_ffff_ffff_ffff_ffff_ffff_ffff=128",
            "ffff_ffff_ffff_ffff_ffff_ffff_ffff_ffff==128",
        ] {
            assert_eq!(parse_net_token(token), None, "{token:?}");
        }
        for net in [
            "198.51.100.7",
            "2001:db8::1",
            "::ffff:198.51.100.7",
            "::/0",
            "198.51.100.0/24",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff0/127",
        ] {
            let net: Net = net.parse().unwrap();
            assert_eq!(parse_net_token(&net_token(&net)), Some(net));
        }
    }
}
