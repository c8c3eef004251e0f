//! A realistic sshd auth.log, generated with a fixed seed: failed
//! passwords (root and invalid users), invalid users, pre-auth
//! disconnects, banner/kex probes, successful logins, PAM and session
//! noise, cron and systemd lines; 80% IPv4 and 20% IPv6 peers.

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

/// Writes `lines` lines to `out`.
pub fn write_auth_log(out: &mut impl Write, lines: usize, seed: u64) -> std::io::Result<()> {
    let mut r = Rng::new(seed);
    let mut secs: u64 = 0;
    for _ in 0..lines {
        secs += r.below(3);
        let day = 1 + (secs / 86_400) % 28;
        let month = MONTHS[((secs / (86_400 * 28)) % 12) as usize];
        let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
        let pid = 1000 + r.below(60_000);
        let head = format!("{month} {day:>2} {h:02}:{m:02}:{s:02} web1");
        let a = addr(&mut r);
        let port = 1024 + r.below(64_000);
        let user = USERS[r.below(USERS.len() as u64) as usize];
        let line = match r.below(100) {
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
            75..=79 => format!(
                "{head} sshd[{pid}]: pam_unix(sshd:session): session closed for user deploy"
            ),
            80..=84 => format!("{head} sshd[{pid}]: Disconnected from user deploy {a} port {port}"),
            85..=89 => format!(
                "{head} CRON[{pid}]: pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)"
            ),
            90..=93 => format!("{head} systemd-logind[412]: New session {pid} of user deploy."),
            94..=96 => format!(
                "{head} sudo:   deploy : TTY=pts/0 ; PWD=/home/deploy ; USER=root ; COMMAND=/usr/bin/systemctl status nginx"
            ),
            _ => format!("{head} sshd[{pid}]: Connection closed by {a} port {port} [preauth]"),
        };
        writeln!(out, "{line}")?;
    }
    Ok(())
}
