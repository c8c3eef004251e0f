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
    net.to_string()
        .chars()
        .map(|c| match c {
            '.' => '-',
            ':' => '_',
            '/' => '=',
            c => c,
        })
        .collect()
}

/// The network of a key token.
pub fn parse_net_token(token: &str) -> Option<Net> {
    let text: String = token
        .chars()
        .map(|c| match c {
            '-' => '.',
            '_' => ':',
            '=' => '/',
            c => c,
        })
        .collect();
    let net: Net = text.parse().ok()?;
    // Only the canonical spelling is a key (no two keys for one decision).
    (net_token(&net) == token).then_some(net)
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
    if parts.next().is_some() || (group.is_some() && action == Action::Ban) {
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
}
