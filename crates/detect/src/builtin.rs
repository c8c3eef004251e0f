//! The built-in rule pack: sshd, postfix, dovecot, nginx/apache and port
//! probes, written in the same TOML as user rules ([`BUILTIN_TOML`]).
//!
//! Every pattern is anchored at the start of the message and, where a user
//! name, URL or banner comes before the address, at the end too, with the
//! text after `<HOST>` fixed by the daemon: the address is always the one
//! the daemon wrote, never one an attacker typed (see
//! `tests/injection.rs`).

use crate::config::RuleConfig;

/// The built-in rules as TOML `[[rule]]` tables.
pub const BUILTIN_TOML: &str = r#####"
# sshd: password and keyboard-interactive failures, invalid users, users
# refused by AllowUsers/DenyUsers, pre-authentication disconnects, and
# key-exchange/banner probing (fail2ban's sshd "normal" + "ddos" modes).
# "Failed publickey" is not counted: clients try several keys.
[[rule]]
name = "sshd"
program = "sshd*"
bad = [
  '^(?:error: )?Failed (?:password|keyboard-interactive/pam|none) for (?:invalid user )?.*? from <HOST> port \d+(?: ssh\d*)?$',
  '^(?:error: PAM: )?[Aa]uthentication (?:failure|error) for (?:illegal user )?.*? from <HOST>$',
  '^(?:Invalid|Illegal) user .*? from <HOST>(?: port \d+)?$',
  '^User .*? from <HOST> not allowed because (?:not listed in AllowUsers|listed in DenyUsers|not in any group|a group is listed in DenyGroups|none of user.s groups are listed in AllowGroups)$',
  '^(?:error: )?maximum authentication attempts exceeded for (?:invalid user )?.*? from <HOST> port \d+(?: ssh\d*)? \[preauth\]$',
  '^(?:Connection (?:closed|reset)|Disconnected) by (?:(?:invalid|authenticating) user .*? )?<HOST> port \d+ \[preauth\]$',
  '^Disconnected from (?:invalid|authenticating) user .*? <HOST> port \d+ \[preauth\]$',
  '^Did not receive identification string from <HOST>(?: port \d+)?$',
  '^Bad protocol version identification .* from <HOST>(?: port \d+)?$',
  '^banner exchange: Connection from <HOST> port \d+: invalid format$',
  '^Unable to negotiate with <HOST> port \d+: no matching \S+(?: \S+){0,3} found\.',
  '^(?:error: )?ssh_dispatch_run_fatal: Connection from (?:(?:invalid|authenticating) user .*? )?<HOST> port \d+: (?:message authentication code incorrect|Connection corrupted|invalid format|error in libcrypto|incomplete message) \[preauth\]$',
  '^Timeout before authentication for (?:connection from )?<HOST>(?: to \S+)?(?:,)? port \d+$',
]
good = [
  '^Accepted (?:password|publickey|keyboard-interactive/pam|gssapi-with-mic|hostbased) for \S+ from <HOST> port \d+(?: ssh\d*)?(?:: .*)?$',
]
[[rule.stages]]
name = "ban"
count = 5
within = "10m"
ban = "1h"
[[rule.stages]]
name = "long"
count = 20
within = "1d"
ban = "1w"

# postfix: SASL authentication failures, RBL and relay/unknown-user rejects,
# AUTH floods. The client name before [ADDR] comes from reverse DNS and
# cannot contain brackets or spaces.
[[rule]]
name = "postfix"
program = "postfix*"
bad = [
  '^warning: [-._\w]+\[<HOST>\]: SASL [-\w]+ authentication failed:.*$',
  '^NOQUEUE: reject: (?:RCPT|EHLO|HELO|VRFY|MAIL) from [-._\w]+\[<HOST>\](?::\d+)?: (?:554 5\.7\.1|550 5\.1\.1|550 5\.7\.1|450 4\.7\.1|554 5\.7\.0|504 5\.5\.2|450 4\.1\.8) .*$',
  '^too many errors after AUTH from [-._\w]+\[<HOST>\]$',
  '^warning: non-SMTP command from [-._\w]+\[<HOST>\]: .*$',
]
[[rule.stages]]
name = "ban"
count = 5
within = "10m"
ban = "1h"
[[rule.stages]]
name = "long"
count = 20
within = "1d"
ban = "1w"

# dovecot: failed logins reported by the login processes. The user name is
# greedy and the line is anchored at the end, so the last "rip=" (written
# by dovecot after the user name) is the one taken.
[[rule]]
name = "dovecot"
program = "dovecot*"
bad = [
  '^(?:imap|pop3|submission|managesieve)-login: (?:Disconnected|Aborted login|Login aborted)(?:: [^(]*?)? \((?:auth failed|tried to use (?:disallowed|disabled) \S+ auth|no auth attempts)[^)]*\)(?:: [^,]*)?: (?:user=<.*>, )?(?:method=\S+, )?rip=<HOST>, lip=[0-9A-Fa-f:.]+(?:, .*)?$',
]
[[rule.stages]]
name = "ban"
count = 5
within = "10m"
ban = "1h"

# Web servers (nginx and apache access logs in the common/combined format,
# apache error logs): 401 brute force, scanners probing for well-known
# paths, apache basic-auth failures. The client address is the first field
# of an access log line, before any text the client chose.
[[rule]]
name = "http-auth"
bad = [
  '^<HOST> \S+ \S+ \[[^\]]+\] "(?:[^"\\]|\\.)*" 401 ',
  '^\[[^\]]+\] \[auth_basic:error\] \[pid \d+(?::tid \d+)?\] \[client <HOST>(?::\d+)?\] AH0161[78]: user .*$',
]
[[rule.stages]]
name = "ban"
count = 10
within = "10m"
ban = "1h"

[[rule]]
name = "http-scan"
bad = [
  '^<HOST> \S+ \S+ \[[^\]]+\] "[A-Z]{3,10} (?:https?://[^/" ]+)?/(?:[^" ]*/)?(?i:wp-login\.php|xmlrpc\.php|\.env|\.git/|phpmyadmin|pma/|myadmin/|wp-admin/setup-config\.php|cgi-bin/|\.aws/|config\.json|server-status|boaform|hnap1|actuator/|vendor/phpunit|\.ds_store|owa/auth|setup\.cgi|shell\?|\.svn/|adminer\.php|solr/admin)[^" ]* HTTP/[0-9.]+" (?:4\d\d) ',
]
[[rule.stages]]
name = "ban"
count = 3
within = "10m"
ban = "1d"

# Port probes: kernel LOG lines (iptables -j LOG, nftables `log`) arriving
# through syslog or the journal, and NFLOG packets (the nflog source writes
# the same format, without a syslog header, so the program filter lets it
# through). A probe of a port that is open right now is not counted.
[[rule]]
name = "port-probe"
program = "kernel"
closed_ports_only = true
# A SYN can carry any source address: these bans are forgeable.
forgeable = true
bad = [
  '^(?:\[\s*\d+\.\d+\]\s*)?(?:NFLOG )?.*?IN=\S* OUT=\S* (?:MAC=\S* )?SRC=<HOST> DST=\S+ (?:.* )?PROTO=(?:TCP|UDP|SCTP|tcp|udp|sctp) SPT=\d+ DPT=(?P<port>\d+)(?: .*)?$',
]
[[rule.stages]]
name = "ban"
count = 3
within = "10m"
ban = "1d"

# Honeyports: a completed handshake with a decoy port palisade listens on
# (a `honeyport` source). The peer's address is verified by the handshake.
[[rule]]
name = "honeyport"
sources = ["honeyport"]
bad = ['^palisade-honeyport: handshake from <HOST> to port \d+$']
[[rule.stages]]
name = "ban"
count = 1
within = "10m"
ban = "1d"
"#####;

/// `configured` followed by the built-in rules that no configured rule
/// replaces (a configured rule with a built-in rule's name replaces it).
pub fn with_builtin(mut configured: Vec<RuleConfig>) -> Vec<RuleConfig> {
    let builtin: Vec<RuleConfig> = rules()
        .into_iter()
        .filter(|b| !configured.iter().any(|r| r.name == b.name))
        .collect();
    configured.extend(builtin);
    configured
}

/// The built-in rules.
pub fn rules() -> Vec<RuleConfig> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Pack {
        rule: Vec<RuleConfig>,
    }
    toml::from_str::<Pack>(BUILTIN_TOML)
        .expect("the built-in rules parse")
        .rule
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, HitKind};

    fn engine() -> Engine {
        let mut e = Engine::compile(&rules()).unwrap();
        e.check_open_ports(false);
        e
    }

    /// (rule, kind, address) for a line, or None.
    fn verdict(e: &mut Engine, line: &str) -> Option<(String, HitKind, String)> {
        let mut out = Vec::new();
        e.check("test", line, &mut out);
        assert!(out.len() <= 1, "{line}: {out:?}");
        out.first().map(|h| {
            (
                e.rules()[h.rule].name.clone(),
                h.kind,
                h.address.map(|a| a.to_string()).unwrap_or_default(),
            )
        })
    }

    fn bad(e: &mut Engine, rule: &str, addr: &str, line: &str) {
        assert_eq!(
            verdict(e, line),
            Some((rule.to_string(), HitKind::Bad, addr.to_string())),
            "{line}"
        );
    }

    #[test]
    fn sshd() {
        let e = &mut engine();
        let p = "Mar  3 12:00:01 web1 sshd[4242]: ";
        for (addr, msg) in [
            (
                "198.51.100.7",
                "Failed password for root from 198.51.100.7 port 52144 ssh2",
            ),
            (
                "198.51.100.7",
                "Failed password for invalid user admin from 198.51.100.7 port 52144 ssh2",
            ),
            (
                "2001:db8::7",
                "Failed password for invalid user oracle from 2001:db8::7 port 22 ssh2",
            ),
            (
                "198.51.100.7",
                "Failed none for invalid user  from 198.51.100.7 port 22 ssh2",
            ),
            (
                "198.51.100.7",
                "Failed keyboard-interactive/pam for root from ::ffff:198.51.100.7 port 22 ssh2",
            ),
            (
                "198.51.100.7",
                "Invalid user test from 198.51.100.7 port 40000",
            ),
            ("198.51.100.7", "Invalid user  from 198.51.100.7"),
            (
                "198.51.100.7",
                "User root from 198.51.100.7 not allowed because not listed in AllowUsers",
            ),
            (
                "198.51.100.7",
                "error: maximum authentication attempts exceeded for root from 198.51.100.7 port 1 ssh2 [preauth]",
            ),
            (
                "198.51.100.7",
                "Connection closed by authenticating user root 198.51.100.7 port 5 [preauth]",
            ),
            (
                "198.51.100.7",
                "Connection closed by 198.51.100.7 port 5 [preauth]",
            ),
            (
                "198.51.100.7",
                "Connection reset by invalid user x y 198.51.100.7 port 5 [preauth]",
            ),
            (
                "198.51.100.7",
                "Disconnected from invalid user admin 198.51.100.7 port 5 [preauth]",
            ),
            (
                "198.51.100.7",
                "Did not receive identification string from 198.51.100.7 port 61000",
            ),
            (
                "198.51.100.7",
                "Bad protocol version identification 'GET / HTTP/1.1' from 198.51.100.7 port 1",
            ),
            (
                "198.51.100.7",
                "banner exchange: Connection from 198.51.100.7 port 1: invalid format",
            ),
            (
                "198.51.100.7",
                "Unable to negotiate with 198.51.100.7 port 1: no matching key exchange method found. Their offer: diffie-hellman-group1-sha1",
            ),
            (
                "198.51.100.7",
                "Unable to negotiate with 198.51.100.7 port 1: no matching host key type found. Their offer: ssh-dss",
            ),
            (
                "198.51.100.7",
                "error: PAM: Authentication failure for root from 198.51.100.7",
            ),
            (
                "198.51.100.7",
                "ssh_dispatch_run_fatal: Connection from 198.51.100.7 port 1: message authentication code incorrect [preauth]",
            ),
            (
                "198.51.100.7",
                "Timeout before authentication for 198.51.100.7 port 1",
            ),
        ] {
            bad(e, "sshd", addr, &format!("{p}{msg}"));
        }
        // OpenSSH 9.8+ logs from sshd-session.
        bad(
            e,
            "sshd",
            "198.51.100.7",
            "Mar  3 12:00:01 web1 sshd-session[1]: Invalid user x from 198.51.100.7 port 1",
        );
        // The journal's RFC 3339 form.
        bad(
            e,
            "sshd",
            "198.51.100.7",
            "2024-03-03T12:00:01.000000Z web1 sshd[1]: Invalid user x from 198.51.100.7 port 1",
        );
        assert_eq!(
            verdict(
                e,
                &format!(
                    "{p}Accepted publickey for deploy from 198.51.100.8 port 1 ssh2: ED25519 SHA256:abc"
                )
            ),
            Some(("sshd".into(), HitKind::Good, "198.51.100.8".into()))
        );
        for ok in [
            "Failed publickey for git from 198.51.100.7 port 1 ssh2: RSA SHA256:x",
            "Connection closed by 198.51.100.7 port 5",
            "Received disconnect from 198.51.100.7 port 5:11: disconnected by user",
            "pam_unix(sshd:session): session opened for user root(uid=0) by (uid=0)",
            "Server listening on 0.0.0.0 port 22.",
        ] {
            assert_eq!(verdict(e, &format!("{p}{ok}")), None, "{ok}");
        }
        // Not from sshd: no sshd rule.
        assert_eq!(
            verdict(
                e,
                "Mar  3 12:00:01 web1 cron[1]: Invalid user x from 198.51.100.7 port 1"
            ),
            None
        );
    }

    #[test]
    fn postfix() {
        let e = &mut engine();
        let p = "Mar  3 12:00:01 mx postfix/smtpd[777]: ";
        for (addr, msg) in [
            (
                "198.51.100.7",
                "warning: unknown[198.51.100.7]: SASL LOGIN authentication failed: UGFzc3dvcmQ6",
            ),
            (
                "198.51.100.7",
                "warning: host.example.net[198.51.100.7]: SASL PLAIN authentication failed: authentication failure",
            ),
            (
                "2001:db8::7",
                "warning: unknown[2001:db8::7]: SASL LOGIN authentication failed: UGFzc3dvcmQ6",
            ),
            (
                "198.51.100.7",
                "NOQUEUE: reject: RCPT from unknown[198.51.100.7]: 554 5.7.1 Service unavailable; Client host [198.51.100.7] blocked using zen.spamhaus.org; from=<a@b> to=<c@d> proto=ESMTP helo=<x>",
            ),
            (
                "198.51.100.7",
                "NOQUEUE: reject: RCPT from unknown[198.51.100.7]: 554 5.7.1 <c@d>: Relay access denied; from=<a@b> to=<c@d> proto=SMTP helo=<x>",
            ),
            (
                "198.51.100.7",
                "NOQUEUE: reject: RCPT from x.example[198.51.100.7]: 550 5.1.1 <nobody@d>: Recipient address rejected: User unknown in local recipient table; from=<> to=<nobody@d> proto=ESMTP helo=<x>",
            ),
            (
                "198.51.100.7",
                "too many errors after AUTH from unknown[198.51.100.7]",
            ),
        ] {
            bad(e, "postfix", addr, &format!("{p}{msg}"));
        }
        bad(
            e,
            "postfix",
            "198.51.100.7",
            "Mar  3 12:00:01 mx postfix/submission/smtpd[1]: warning: unknown[198.51.100.7]: SASL LOGIN authentication failed: x",
        );
        assert_eq!(
            verdict(e, &format!("{p}connect from unknown[198.51.100.7]")),
            None
        );
    }

    #[test]
    fn dovecot() {
        let e = &mut engine();
        let p = "Mar  3 12:00:01 mx dovecot: ";
        for msg in [
            "imap-login: Disconnected (auth failed, 1 attempts in 2 secs): user=<bob>, method=PLAIN, rip=198.51.100.7, lip=192.0.2.1, TLS, session=<AbCd>",
            "pop3-login: Aborted login (auth failed, 3 attempts in 12 secs): user=<bob>, method=LOGIN, rip=198.51.100.7, lip=192.0.2.1, session=<x>",
            "imap-login: Disconnected: Connection closed (auth failed, 3 attempts in 15 secs): user=<bob>, method=PLAIN, rip=198.51.100.7, lip=192.0.2.1, TLS, session=<q>",
            "imap-login: Disconnected (auth failed, 1 attempts in 2 secs): user=<bob>, method=PLAIN, rip=::ffff:198.51.100.7, lip=192.0.2.1, session=<x>",
        ] {
            bad(e, "dovecot", "198.51.100.7", &format!("{p}{msg}"));
        }
        assert_eq!(
            verdict(
                e,
                &format!(
                    "{p}imap-login: Login: user=<bob>, method=PLAIN, rip=198.51.100.7, lip=192.0.2.1, mpid=1, TLS"
                )
            ),
            None
        );
    }

    #[test]
    fn web() {
        let e = &mut engine();
        bad(
            e,
            "http-auth",
            "198.51.100.7",
            r#"198.51.100.7 - admin [03/Mar/2024:12:00:00 +0000] "GET /private/ HTTP/1.1" 401 179 "-" "curl/8.0""#,
        );
        bad(
            e,
            "http-auth",
            "2001:db8::7",
            r#"2001:db8::7 - - [03/Mar/2024:12:00:00 +0000] "GET /a\"b HTTP/1.1" 401 179 "-" "x""#,
        );
        bad(
            e,
            "http-auth",
            "198.51.100.7",
            "[Sun Mar 03 12:00:00.123456 2024] [auth_basic:error] [pid 123] [client 198.51.100.7:50000] AH01617: user admin: authentication failure for \"/private\": Password Mismatch",
        );
        for path in [
            "/wp-login.php",
            "/.env",
            "/phpMyAdmin/index.php",
            "/blog/wp-login.php",
            "/.git/config",
            "http://x.example/cgi-bin/luci",
            "/vendor/phpunit/phpunit/src/Util/PHP/eval-stdin.php",
        ] {
            bad(
                e,
                "http-scan",
                "198.51.100.7",
                &format!(
                    r#"198.51.100.7 - - [03/Mar/2024:12:00:00 +0000] "GET {path} HTTP/1.1" 404 153 "-" "Mozilla/5.0""#
                ),
            );
        }
        assert_eq!(
            verdict(
                e,
                r#"198.51.100.7 - - [03/Mar/2024:12:00:00 +0000] "GET /wp-login.php HTTP/1.1" 200 153 "-" "Mozilla/5.0""#
            ),
            None
        );
        assert_eq!(
            verdict(
                e,
                r#"198.51.100.7 - - [03/Mar/2024:12:00:00 +0000] "GET /index.html HTTP/1.1" 404 153 "-" "x""#
            ),
            None
        );
    }

    #[test]
    fn port_probes() {
        let e = &mut engine();
        let mut out = Vec::new();
        for line in [
            "Mar  3 12:00:01 fw kernel: [12345.678901] PROBE IN=eth0 OUT= MAC=52:54:00:12:34:56:52:54:00:65:43:21:08:00 SRC=198.51.100.7 DST=192.0.2.1 LEN=60 TOS=0x00 PREC=0x00 TTL=52 ID=54321 DF PROTO=TCP SPT=40000 DPT=23 WINDOW=64240 RES=0x00 SYN URGP=0",
            "Mar  3 12:00:01 fw kernel: drop IN=eth0 OUT= SRC=2001:db8::7 DST=2001:db8::1 LEN=80 TC=0 HOPLIMIT=50 FLOWLBL=0 PROTO=UDP SPT=5353 DPT=161 LEN=40",
            "NFLOG probe IN=veth0 OUT= SRC=198.51.100.7 DST=192.0.2.1 PROTO=TCP SPT=40000 DPT=3389",
        ] {
            out.clear();
            e.check("t", line, &mut out);
            assert_eq!(out.len(), 1, "{line}");
            assert_eq!(e.rules()[out[0].rule].name, "port-probe");
            assert_eq!(out[0].kind, HitKind::Bad);
            assert!(out[0].port.is_some());
        }
        // With the open-ports check on, a listening port is not a probe.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        e.check_open_ports(true);
        out.clear();
        e.check(
            "t",
            &format!("NFLOG IN=lo OUT= SRC=198.51.100.7 DST=127.0.0.1 PROTO=TCP SPT=1 DPT={port}"),
            &mut out,
        );
        assert_eq!(out[0].kind, HitKind::Ignored);
    }
}
