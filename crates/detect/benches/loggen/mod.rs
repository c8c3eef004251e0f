//! Realistic logs, generated with a fixed seed.
//!
//! - [`write_auth_log`]: an sshd auth.log under attack: failed passwords
//!   (root and invalid users), invalid users, pre-auth disconnects,
//!   banner/kex probes, successful logins, PAM and session noise, cron and
//!   systemd lines; 80% IPv4 and 20% IPv6 peers (each IPv6 attacker
//!   rotating through its /64).
//! - [`write_quiet_log`]: a server's syslog on an ordinary day: 2% sshd
//!   attack lines, 28% ordinary sshd lines, 70% other daemons (cron,
//!   systemd, logind, chronyd, kernel).
//! - [`write_mail_web_log`]: nginx (error log), postfix and dovecot
//!   failures among their ordinary lines, for fail2ban's filters.

use std::io::Write;

/// xorshift64*: deterministic, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const USERS: &[&str] = &[
    "admin", "test", "oracle", "ubuntu", "postgres", "git", "user", "ftpuser", "guest", "pi",
    "deploy", "support", "mysql", "hadoop", "jenkins", "www-data", "nagios", "tomcat",
];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn addr(r: &mut Rng) -> String {
    // Attackers come from a pool, so some addresses repeat (and get banned).
    let pool = r.below(50_000);
    if r.below(5) == 0 {
        format!(
            "2001:db8:{:x}:{:x}::{:x}",
            pool >> 8,
            pool & 0xff,
            r.below(0xffff) + 1
        )
    } else {
        let v = 0xC633_6400u32.wrapping_add((pool as u32).wrapping_mul(2_654_435_761) >> 8);
        let o = v.to_be_bytes();
        format!("{}.{}.{}.{}", o[0].max(1), o[1], o[2], o[3].max(1))
    }
}

/// Writes `lines` lines of an sshd log under attack to `out`.
pub fn write_auth_log(out: &mut impl Write, lines: usize, seed: u64) -> std::io::Result<()> {
    let mut r = Rng::new(seed);
    let mut clock = Clock::default();
    for _ in 0..lines {
        let head = clock.head(&mut r);
        writeln!(out, "{}", auth_line(&mut r, &head, None))?;
    }
    Ok(())
}

/// The kinds of [`auth_line`] that are attacks (what the built-in sshd rule
/// counts), and the ordinary sshd ones.
const ATTACK_KINDS: [std::ops::RangeInclusive<u64>; 2] = [0..=53, 99..=99];
const ORDINARY_SSHD_KINDS: [std::ops::RangeInclusive<u64>; 2] = [54..=60, 65..=84];

/// Writes `lines` lines of a quiet server's syslog to `out`.
pub fn write_quiet_log(out: &mut impl Write, lines: usize, seed: u64) -> std::io::Result<()> {
    let mut r = Rng::new(seed);
    let mut clock = Clock::default();
    let pick = |r: &mut Rng, kinds: &[std::ops::RangeInclusive<u64>]| -> u64 {
        let total: u64 = kinds.iter().map(|k| k.end() - k.start() + 1).sum();
        let mut n = r.below(total);
        for k in kinds {
            let len = k.end() - k.start() + 1;
            if n < len {
                return k.start() + n;
            }
            n -= len;
        }
        unreachable!()
    };
    for _ in 0..lines {
        let head = clock.head(&mut r);
        let line = match r.below(100) {
            0..=1 => {
                let kind = pick(&mut r, &ATTACK_KINDS);
                auth_line(&mut r, &head, Some(kind))
            }
            2..=29 => {
                let kind = pick(&mut r, &ORDINARY_SSHD_KINDS);
                auth_line(&mut r, &head, Some(kind))
            }
            n => other_daemon_line(&mut r, &head, n),
        };
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// Writes `lines` lines of nginx, postfix and dovecot logs to `out`: 30%
/// failures (as fail2ban's `nginx-http-auth`, `postfix` and `dovecot`
/// filters count them), the rest ordinary lines of the same daemons.
pub fn write_mail_web_log(out: &mut impl Write, lines: usize, seed: u64) -> std::io::Result<()> {
    let mut r = Rng::new(seed);
    let mut clock = Clock::default();
    for _ in 0..lines {
        let head = clock.head(&mut r);
        let a = addr(&mut r);
        let pid = 1000 + r.below(60_000);
        let user = USERS[r.below(USERS.len() as u64) as usize];
        let s = clock.secs;
        let (h, m, sec) = ((s / 3600) % 24, (s / 60) % 60, s % 60);
        let day = 1 + (s / 86_400) % 28;
        let nginx_time = format!("2024/03/{day:02} {h:02}:{m:02}:{sec:02}");
        let line = match r.below(100) {
            0..=9 => format!(
                "{nginx_time} [error] 2865#0: *{pid} user \"{user}\": password mismatch, client: {a}, server: www.example.com, request: \"GET /admin HTTP/1.1\", host: \"www.example.com\""
            ),
            10..=19 => format!(
                "{head} postfix/smtpd[{pid}]: warning: unknown[{a}]: SASL LOGIN authentication failed: UGFzc3dvcmQ6"
            ),
            20..=24 => format!(
                "{head} postfix/smtpd[{pid}]: NOQUEUE: reject: RCPT from unknown[{a}]: 554 5.7.1 <{user}@example.org>: Relay access denied; from=<{user}@example.com> to=<{user}@example.org> proto=ESMTP helo=<example.com>"
            ),
            25..=29 => format!(
                "{head} dovecot: imap-login: Disconnected (auth failed, 1 attempts in 2 secs): user=<{user}>, method=PLAIN, rip={a}, lip=198.51.100.1, TLS, session=<LgDINsQCkttVIMPg>"
            ),
            30..=49 => format!(
                "{nginx_time} [error] 2865#0: *{pid} open() \"/var/www/html/favicon.ico\" failed (2: No such file or directory), client: {a}, server: www.example.com, request: \"GET /favicon.ico HTTP/1.1\", host: \"www.example.com\""
            ),
            50..=64 => format!("{head} postfix/smtpd[{pid}]: connect from mail.example.net[{a}]"),
            65..=74 => format!(
                "{head} postfix/qmgr[{pid}]: 4BC8E2A0F1: from=<{user}@example.com>, size=2231, nrcpt=1 (queue active)"
            ),
            75..=84 => format!(
                "{head} dovecot: imap-login: Login: user=<{user}>, method=PLAIN, rip={a}, lip=198.51.100.1, mpid={pid}, TLS, session=<NyKM0cQCkttVIMPg>"
            ),
            _ => format!(
                "{head} dovecot: imap({user})<{pid}><NyKM0cQCkttVIMPg>: Disconnected: Logged out in=72 out=1337"
            ),
        };
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// The syslog header's time, moving on 0 to 2 seconds a line.
#[derive(Default)]
struct Clock {
    secs: u64,
}

impl Clock {
    fn head(&mut self, r: &mut Rng) -> String {
        self.secs += r.below(3);
        let secs = self.secs;
        let day = 1 + (secs / 86_400) % 28;
        let month = MONTHS[((secs / (86_400 * 28)) % 12) as usize];
        let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
        format!("{month} {day:>2} {h:02}:{m:02}:{s:02} web1")
    }
}

/// A line of another daemon than sshd.
fn other_daemon_line(r: &mut Rng, head: &str, n: u64) -> String {
    let pid = 1000 + r.below(60_000);
    match n % 7 {
        0 => format!(
            "{head} CRON[{pid}]: pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)"
        ),
        1 => format!(
            "{head} CRON[{pid}]: (root) CMD (command -v debian-sa1 > /dev/null && debian-sa1 1 1)"
        ),
        2 => format!(
            "{head} systemd[1]: Started session-{pid}.scope - Session {pid} of User deploy."
        ),
        3 => format!("{head} systemd[1]: logrotate.service: Deactivated successfully."),
        4 => format!(
            "{head} systemd-logind[412]: Session {pid} logged out. Waiting for processes to exit."
        ),
        5 => format!(
            "{head} chronyd[633]: Selected source 192.0.2.{} (2.debian.pool.ntp.org)",
            1 + r.below(250)
        ),
        _ => format!(
            "{head} kernel: [{}.{:06}] EXT4-fs (sda1): re-mounted. Opts: errors=remount-ro",
            r.below(900_000),
            r.below(1_000_000)
        ),
    }
}

/// One auth.log line of `kind` (0 to 99: mostly attacks, then ordinary
/// lines; drawn at random when `None`).
fn auth_line(r: &mut Rng, head: &str, kind: Option<u64>) -> String {
    let pid = 1000 + r.below(60_000);
    let a = addr(r);
    let port = 1024 + r.below(64_000);
    let user = USERS[r.below(USERS.len() as u64) as usize];
    match kind.unwrap_or_else(|| r.below(100)) {
        0..=24 => format!(
            "{head} sshd[{pid}]: Failed password for invalid user {user} from {a} port {port} ssh2"
        ),
        25..=34 => {
            format!("{head} sshd[{pid}]: Failed password for root from {a} port {port} ssh2")
        }
        35..=42 => format!("{head} sshd[{pid}]: Invalid user {user} from {a} port {port}"),
        43..=47 => format!(
            "{head} sshd[{pid}]: Connection closed by invalid user {user} {a} port {port} [preauth]"
        ),
        48..=50 => format!(
            "{head} sshd[{pid}]: Disconnected from authenticating user root {a} port {port} [preauth]"
        ),
        51..=52 => format!(
            "{head} sshd[{pid}]: Unable to negotiate with {a} port {port}: no matching key exchange method found. Their offer: diffie-hellman-group1-sha1 [preauth]"
        ),
        53 => format!(
            "{head} sshd[{pid}]: banner exchange: Connection from {a} port {port}: invalid format"
        ),
        54..=55 => format!(
            "{head} sshd[{pid}]: error: kex_exchange_identification: Connection closed by remote host"
        ),
        56..=60 => format!(
            "{head} sshd[{pid}]: Received disconnect from {a} port {port}:11: Bye Bye [preauth]"
        ),
        61..=64 => format!(
            "{head} sshd[{pid}]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost={a}  user=root"
        ),
        65..=69 => format!(
            "{head} sshd[{pid}]: Accepted publickey for deploy from {a} port {port} ssh2: ED25519 SHA256:Qm9vQmF6UXV4cXV4cXV4cXV4cXV4cXV4"
        ),
        70..=74 => format!(
            "{head} sshd[{pid}]: pam_unix(sshd:session): session opened for user deploy(uid=1000) by (uid=0)"
        ),
        75..=79 => {
            format!("{head} sshd[{pid}]: pam_unix(sshd:session): session closed for user deploy")
        }
        80..=84 => format!("{head} sshd[{pid}]: Disconnected from user deploy {a} port {port}"),
        85..=89 => format!(
            "{head} CRON[{pid}]: pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)"
        ),
        90..=93 => format!("{head} systemd-logind[412]: New session {pid} of user deploy."),
        94..=96 => format!(
            "{head} sudo:   deploy : TTY=pts/0 ; PWD=/home/deploy ; USER=root ; COMMAND=/usr/bin/systemctl status nginx"
        ),
        _ => format!("{head} sshd[{pid}]: Connection closed by {a} port {port} [preauth]"),
    }
}
