//! Human-readable output: times, decision tables, explanations, status.

use std::fmt::Write as _;

use palisade_control::{AgentStatus, Explanation, Summary, Verdict};
use palisade_model::time::{compact_duration, relative};
use palisade_model::{Action, Decision, Timestamp};

/// `until 2026-11-21T11:00:00Z (in 1h)` or `forever`.
pub fn until(expires: Option<Timestamp>, now: Timestamp) -> String {
    match expires {
        Some(t) => format!("until {} ({})", t.rfc3339(), relative(t, now)),
        None => "forever".into(),
    }
}

/// `1 entry`, `2 entries`: a count and the word that agrees with it.
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `1000 added, 3 refused` for bulk requests.
pub fn summary(s: &Summary) -> String {
    let parts: Vec<String> = [
        (s.added, "added"),
        (s.extended, "extended"),
        (s.unchanged, "unchanged"),
        (s.removed, "removed"),
        (s.not_found, "not found"),
        (s.refused, "refused"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    if parts.is_empty() {
        "nothing to do".into()
    } else {
        parts.join(", ")
    }
}

/// The header and one row per decision, in aligned columns.
pub struct Table {
    rows: Vec<[String; 5]>,
}

impl Table {
    pub fn new() -> Table {
        Table {
            rows: vec![["ACTION", "TARGET", "EXPIRES", "ORIGIN", "REASON"].map(String::from)],
        }
    }

    pub fn push(&mut self, d: &Decision, now: Timestamp) {
        let expires = match d.expires {
            Some(t) => relative(t, now),
            None => "never".into(),
        };
        let mut reason = d.reason.clone().unwrap_or_default();
        if let Some(rule) = d.rule.as_deref().filter(|r| *r != "ban") {
            reason = if reason.is_empty() {
                format!("[{rule}]")
            } else {
                format!("[{rule}] {reason}")
            };
        }
        self.rows.push([
            d.action.to_string(),
            d.target.to_string(),
            expires,
            d.origin.to_string(),
            reason,
        ]);
    }

    pub fn print(&self) {
        let mut widths = [0usize; 5];
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i == 4 {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{:<w$}  ", cell, w = widths[i]);
                }
            }
            println!("{}", line.trim_end());
        }
    }
}

/// The story of one address, for `palisade explain`.
pub fn explanation(e: &Explanation) -> String {
    let mut out = String::new();
    let what = if e.address.is_host() {
        ""
    } else {
        " (network)"
    };
    let _ = match e.verdict {
        Verdict::Blocked => writeln!(out, "{}{what}: BLOCKED", e.address),
        Verdict::Allowed => writeln!(out, "{}{what}: ALLOWED (never banned)", e.address),
        Verdict::Open => writeln!(
            out,
            "{}{what}: not blocked: no ban or allow entry covers it",
            e.address
        ),
    };
    for d in &e.allowed_by {
        let _ = writeln!(out, "  allowed by {}", entry_name(d, e));
        decision_details(&mut out, d, e.now);
    }
    for d in &e.banned_by {
        let lead = if e.verdict == Verdict::Allowed {
            "ban that does not apply to it (allow entries win):"
        } else {
            "banned by"
        };
        let _ = writeln!(out, "  {lead} {}", entry_name(d, e));
        decision_details(&mut out, d, e.now);
    }
    if e.bans_inside > 0 {
        let _ = writeln!(
            out,
            "  {} narrower ban{} inside it (see `palisade list`)",
            e.bans_inside,
            if e.bans_inside == 1 { "" } else { "s" }
        );
    }
    out
}

fn entry_name(d: &Decision, e: &Explanation) -> String {
    if d.target == e.address {
        format!("{} (its own entry)", d.target)
    } else {
        format!("{} (network entry)", d.target)
    }
}

fn decision_details(out: &mut String, d: &Decision, now: Timestamp) {
    let _ = writeln!(
        out,
        "    since    {} ({})",
        d.created.rfc3339(),
        relative(d.created, now)
    );
    let _ = match d.expires {
        Some(t) => writeln!(out, "    until    {} ({})", t.rfc3339(), relative(t, now)),
        None => writeln!(out, "    until    forever"),
    };
    let _ = writeln!(out, "    by       {}", d.origin);
    if let Some(rule) = &d.rule {
        let _ = writeln!(out, "    rule     {rule}");
    }
    if let Some(reason) = &d.reason {
        let label = if d.action == Action::Allow {
            "comment"
        } else {
            "reason"
        };
        let _ = writeln!(out, "    {label:<8} {reason}");
    }
    if d.hits > 1 {
        let _ = writeln!(
            out,
            "    repeats  {} (last {})",
            d.hits,
            relative(d.updated, now)
        );
    }
    if d.scope == palisade_model::Scope::Local {
        let _ = writeln!(out, "    scope    this server only");
    }
    if !d.evidence.is_empty() {
        let _ = writeln!(out, "    evidence:");
        for line in &d.evidence {
            let _ = writeln!(out, "      {line}");
        }
    }
}

/// `palisade status` as text.
pub fn status(s: &AgentStatus) -> String {
    let mut out = String::new();
    let up = compact_duration(s.now.since(s.started));
    let _ = writeln!(
        out,
        "palisade agent {} on {} (pid {}), {}, up {up}",
        s.version, s.node, s.pid, s.mode
    );
    let _ = writeln!(out, "  state      {}", s.state_dir);
    let _ = writeln!(out, "  socket     {}", s.socket);
    let next = match s.next_expiry {
        Some(t) => format!(" (next expiry {})", relative(t, s.now)),
        None => String::new(),
    };
    let _ = writeln!(
        out,
        "  bans       {}, {}{next}",
        count(s.bans, "address", "addresses"),
        count(s.ban_networks, "network", "networks"),
    );
    let _ = writeln!(out, "  allows     {}", s.allows);
    let _ = writeln!(
        out,
        "  bans last  {} unless --for says otherwise",
        s.default_ban
    );
    for e in &s.enforcers {
        let health = if e.healthy { "ok" } else { "FAILING" };
        let _ = writeln!(out, "  enforcer   {} {health}: {}", e.name, e.detail);
    }
    let _ = writeln!(
        out,
        "  killed     {} of banned addresses",
        count(s.connections_killed, "open connection", "open connections")
    );
    if let Some(n) = &s.network {
        let state = if n.connected {
            "connected"
        } else {
            "NOT CONNECTED (enforcing what it has, queueing reports)"
        };
        let _ = writeln!(out, "  network    {}: {state}", n.bus);
        let latest = n.latest.max(n.cursor);
        let _ = writeln!(
            out,
            "  stream     at {} of {latest} ({} behind), {} queued",
            n.cursor,
            latest - n.cursor,
            count(n.pending, "request", "requests")
        );
        if let Some(why) = &n.held_back {
            let _ = writeln!(out, "  held back  {why}");
        }
        if let Some(e) = &n.last_error {
            let _ = writeln!(out, "  last error {e}");
        }
    }
    out
}

/// `palisade hub status` as text.
pub fn hub_status(s: &palisade_control::hub::HubStatus) -> String {
    let mut out = String::new();
    let up = compact_duration(s.now.since(s.started));
    let _ = writeln!(out, "palisade hub {} on {}, up {up}", s.version, s.listen);
    if let Some(pin) = &s.pin {
        let _ = writeln!(
            out,
            "  pin        {pin} (agents pin this certificate through their tokens)"
        );
    }
    let _ = writeln!(
        out,
        "  decisions  {}, {}, {}",
        count(s.bans, "banned address", "banned addresses"),
        count(s.ban_networks, "network", "networks"),
        count(s.allows, "allow", "allows")
    );
    let _ = writeln!(out, "  stream     at {}", s.seq);
    let _ = writeln!(
        out,
        "  nodes      {} with a valid token, {} connected now",
        s.nodes, s.connected
    );
    out
}

/// `palisade hub token list` as text.
pub fn admins(admins: &[palisade_control::hub::AdminInfo]) -> String {
    let now = Timestamp::now();
    if admins.is_empty() {
        return "no dashboard administrators yet: create one with `palisade hub admin create NAME`\n"
            .into();
    }
    let mut out = String::new();
    let _ = writeln!(out, "{:<24} {:<16} LAST LOGIN", "NAME", "CREATED");
    for a in admins {
        let _ = writeln!(
            out,
            "{:<24} {:<16} {}",
            a.name,
            relative(a.created, now),
            a.last_login
                .map_or("never".to_string(), |t| relative(t, now))
        );
    }
    out
}

pub fn tokens(tokens: &[palisade_control::hub::TokenInfo]) -> String {
    let now = Timestamp::now();
    if tokens.is_empty() {
        return "no tokens yet: create one with `palisade hub token create NAME`\n".into();
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<5} {:<9} {:<10} {:<9} {:<14} {:<16} CREATED",
        "NAME", "KIND", "ROLE", "GROUP", "ID", "STATE", "ADDRESS"
    );
    for t in tokens {
        let spent = t.uses_left == Some(0) || t.expires.is_some_and(|e| e <= now);
        let state = match (t.revoked, t.connected, t.last_seen) {
            (Some(_), _, _) => "revoked".to_string(),
            _ if t.kind == "join" && spent => format!("spent ({} joined)", t.used),
            _ if t.kind == "join" && t.used > 0 => match t.uses_left {
                Some(left) => format!("{} joined, {left} left", t.used),
                None => format!("{} joined", t.used),
            },
            (None, true, _) => "connected".to_string(),
            (None, false, Some(seen)) => format!("seen {}", relative(seen, now)),
            (None, false, None) => "unused".to_string(),
        };
        let role = if t.kind == "read" {
            "-"
        } else {
            t.role.as_str()
        };
        let _ = writeln!(
            out,
            "{:<20} {:<5} {:<9} {:<10} {:<9} {:<14} {:<16} {}",
            t.name,
            t.kind,
            role,
            t.group.as_deref().unwrap_or("-"),
            t.id,
            state,
            t.address.as_deref().unwrap_or("-"),
            relative(t.created, now)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_control::hub::HubStatus;

    #[test]
    fn counts_agree_with_their_words() {
        assert_eq!(
            count(1, "banned network", "banned networks"),
            "1 banned network"
        );
        assert_eq!(
            count(0, "banned network", "banned networks"),
            "0 banned networks"
        );
        assert_eq!(count(2, "entry", "entries"), "2 entries");
        let now = Timestamp::now();
        let hub = HubStatus {
            version: "0.1.0".into(),
            listen: "198.18.0.2:7470".into(),
            pin: None,
            started: now,
            now,
            bans: 1,
            ban_networks: 1,
            allows: 1,
            seq: 3,
            nodes: 1,
            connected: 1,
        };
        let shown = hub_status(&hub);
        assert!(
            shown.contains("decisions  1 banned address, 1 network, 1 allow\n"),
            "{shown}"
        );
        let shown = hub_status(&HubStatus {
            bans: 2,
            ban_networks: 0,
            allows: 3,
            ..hub
        });
        assert!(
            shown.contains("decisions  2 banned addresses, 0 networks, 3 allows\n"),
            "{shown}"
        );
    }
}
