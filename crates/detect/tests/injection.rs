//! Log injection: attacker-controlled text (user names, URLs, user agents,
//! banners) that contains addresses must never get the wrong address
//! banned by the built-in rules. Each case names the only address that may
//! be counted (the real peer), or none.
//!
//! The classic is fail2ban's CVE-2013-2178 family: a user name such as
//! `x from 6.6.6.6 port 22 ssh2` makes an unanchored `from <HOST>` pattern
//! take the injected address.

use palisade_detect::{Engine, HitKind, builtin};

const REAL: &str = "198.51.100.7";
const VICTIM: &str = "203.0.113.66";

fn engine() -> Engine {
    let mut e = Engine::compile(&builtin::rules()).unwrap();
    e.check_open_ports(false);
    e
}

/// Every address the built-in rules would count (or forgive) for `line`.
fn addresses(e: &mut Engine, line: &str) -> Vec<(String, HitKind)> {
    let mut out = Vec::new();
    e.check("test", line, &mut out);
    out.iter()
        .filter(|h| h.kind != HitKind::Ignored)
        .filter_map(|h| h.address.map(|a| (a.to_string(), h.kind)))
        .collect()
}

/// (line, the address allowed to be counted or None)
fn corpus() -> Vec<(String, Option<&'static str>)> {
    let sshd = "Mar  3 12:00:01 web1 sshd[4242]: ";
    let mut c: Vec<(String, Option<&str>)> = vec![
        // CVE-2013-2178 style: the address in the user name.
        (
            format!(
                "{sshd}Failed password for invalid user x from {VICTIM} port 22 ssh2 from {REAL} port 4242 ssh2"
            ),
            Some(REAL),
        ),
        (
            format!(
                "{sshd}Failed password for invalid user from {VICTIM} port 22 ssh2 from {REAL} port 4242 ssh2"
            ),
            Some(REAL),
        ),
        (
            format!("{sshd}Failed password for {VICTIM} from {REAL} port 4242 ssh2"),
            Some(REAL),
        ),
        (
            format!("{sshd}Invalid user admin from {VICTIM} from {REAL} port 4242"),
            Some(REAL),
        ),
        (
            format!("{sshd}Invalid user from {VICTIM} port 1 from {REAL} port 4242"),
            Some(REAL),
        ),
        (
            format!("{sshd}Invalid user [{VICTIM}] from {REAL}"),
            Some(REAL),
        ),
        (
            format!("{sshd}Invalid user ::ffff:{VICTIM} from ::ffff:{REAL} port 1"),
            Some(REAL),
        ),
        (
            format!("{sshd}Invalid user 2001:db8::66 from 2001:db8::7 port 1"),
            Some("2001:db8::7"),
        ),
        (
            format!(
                "{sshd}User x from {VICTIM} not allowed because not listed in AllowUsers from {REAL} not allowed because not listed in AllowUsers"
            ),
            Some(REAL),
        ),
        (
            format!(
                "{sshd}Connection closed by invalid user x {VICTIM} port 22 [preauth] {REAL} port 4242 [preauth]"
            ),
            Some(REAL),
        ),
        (
            format!(
                "{sshd}Disconnected from authenticating user root {VICTIM} port 1 [preauth] {REAL} port 2 [preauth]"
            ),
            Some(REAL),
        ),
        (
            format!(
                "{sshd}Bad protocol version identification 'SSH-2.0 from {VICTIM} port 1' from {REAL} port 4242"
            ),
            Some(REAL),
        ),
        (
            format!(
                "{sshd}maximum authentication attempts exceeded for invalid user a from {VICTIM} port 1 ssh2 [preauth] from {REAL} port 2 ssh2 [preauth]"
            ),
            Some(REAL),
        ),
        // A user name that is a whole fake line cannot start a message.
        (
            format!(
                "{sshd}Accepted password for x from {REAL} port 1 ssh2: Failed password for root from {VICTIM} port 22 ssh2"
            ),
            Some(REAL),
        ),
        // A forged good line inside a user name never forgives the victim.
        (
            format!(
                "{sshd}Failed password for invalid user Accepted password for x from {VICTIM} port 1 ssh2 from {REAL} port 4242 ssh2"
            ),
            Some(REAL),
        ),
        // Truncated: the real suffix is missing, nothing is trusted.
        (
            format!("{sshd}Failed password for invalid user x from {VICTIM} port 22 ssh2 from"),
            None,
        ),
        // Postfix: the client name comes from reverse DNS; brackets cannot
        // appear in it, so the first [ADDR] is the real one.
        (
            format!(
                "Mar  3 12:00:01 mx postfix/smtpd[1]: warning: unknown[{REAL}]: SASL LOGIN authentication failed: {VICTIM}"
            ),
            Some(REAL),
        ),
        (
            format!(
                "Mar  3 12:00:01 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[{REAL}]: 554 5.7.1 <x@[{VICTIM}]>: Relay access denied; from=<a@[{VICTIM}]> to=<x@[{VICTIM}]> proto=ESMTP helo=<[{VICTIM}]>"
            ),
            Some(REAL),
        ),
        (
            format!(
                "Mar  3 12:00:01 mx postfix/smtpd[1]: warning: x[{VICTIM}]y[{REAL}]: SASL LOGIN authentication failed: z"
            ),
            None,
        ),
        // Dovecot: the user name comes before rip=; the last rip= is real.
        (
            format!(
                "Mar  3 12:00:01 mx dovecot: imap-login: Disconnected (auth failed, 1 attempts in 2 secs): user=<a>, method=PLAIN, rip={VICTIM}, lip=192.0.2.1>, method=PLAIN, rip={REAL}, lip=192.0.2.1, TLS, session=<x>"
            ),
            Some(REAL),
        ),
        (
            format!(
                "Mar  3 12:00:01 mx dovecot: imap-login: Disconnected (auth failed, 1 attempts in 2 secs): user=<rip={VICTIM}, lip=1.1.1.1>, method=PLAIN, rip={REAL}, lip=192.0.2.1, session=<x>"
            ),
            Some(REAL),
        ),
        // Web: URL, referer, user agent and user field are the client's.
        (
            format!(
                r#"{REAL} - {VICTIM} [03/Mar/2024:12:00:00 +0000] "GET /?ip={VICTIM} HTTP/1.1" 401 0 "http://{VICTIM}/" "{VICTIM} - - [03/Mar/2024:12:00:00 +0000] \"GET / HTTP/1.1\" 401""#
            ),
            Some(REAL),
        ),
        (
            format!(
                r#"{REAL} - - [03/Mar/2024:12:00:00 +0000] "GET /wp-login.php?x={VICTIM} HTTP/1.1" 404 0 "-" "{VICTIM}""#
            ),
            Some(REAL),
        ),
        (
            format!(
                r#"{REAL} - - [03/Mar/2024:12:00:00 +0000] "GET /\" 401 0 \"-\" \"x\"\n{VICTIM} - - [03/Mar/2024:12:00:00 +0000] \"GET / HTTP/1.1" 200 0 "-" "x""#
            ),
            None,
        ),
        (
            format!(
                "[Sun Mar 03 12:00:00.1 2024] [auth_basic:error] [pid 1] [client {REAL}:1] AH01617: user [client {VICTIM}:2] AH01617: user x: authentication failure for \"/\": Password Mismatch"
            ),
            Some(REAL),
        ),
        // Lines with two addresses where neither is a failure source.
        (
            format!("{sshd}Accepted publickey for git from {REAL} port 1 ssh2: RSA {VICTIM}"),
            Some(REAL),
        ),
        (
            format!("{sshd}Connection from {VICTIM} port 1 on {REAL} port 22"),
            None,
        ),
        // Port probes: kernel-written fields only; the LOG prefix is the
        // operator's.
        (
            format!(
                "Mar  3 12:00:01 fw kernel: [1.5] SRC={VICTIM} IN=eth0 OUT= MAC=00 SRC={REAL} DST=192.0.2.1 LEN=60 PROTO=TCP SPT=1 DPT=23 SYN"
            ),
            Some(REAL),
        ),
    ];
    // A message from another program claiming to be sshd text.
    c.push((
        format!(
            "Mar  3 12:00:01 web1 cron[1]: Failed password for root from {VICTIM} port 22 ssh2"
        ),
        None,
    ));
    c
}

#[test]
fn injected_addresses_are_never_counted() {
    let mut e = engine();
    let mut bad = Vec::new();
    for (line, allowed) in corpus() {
        let got = addresses(&mut e, &line);
        for (addr, kind) in &got {
            if Some(addr.as_str()) != allowed {
                bad.push(format!("{kind:?} {addr} from: {line}"));
            }
        }
        if got.iter().any(|(a, _)| a == VICTIM) && allowed != Some(VICTIM) {
            bad.push(format!("victim counted: {line}"));
        }
    }
    assert!(
        bad.is_empty(),
        "injection got the wrong address:\n{}",
        bad.join("\n")
    );
}

#[test]
fn real_peer_still_counted() {
    // The corpus is not vacuous: the real peer is found where one is named.
    let mut e = engine();
    let mut missing = Vec::new();
    for (line, allowed) in corpus() {
        if let Some(a) = allowed
            && a != VICTIM
        {
            let got = addresses(&mut e, &line);
            if !got.iter().any(|(x, _)| x == a) {
                missing.push(line);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "real peer not found in:\n{}",
        missing.join("\n")
    );
}
