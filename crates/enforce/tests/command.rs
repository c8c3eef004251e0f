//! The command enforcer driving real programs: a real fail2ban-server with a
//! private socket and configuration (its jail's action adds iptables rules
//! in the victim's namespace, so real traffic shows the ban), and small
//! commands that prove no shell ever sees a substituted value.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use palisade_enforce::command::{CommandConfig, CommandEnforcer, Template};
use palisade_enforce::{Change, Enforcer, Entry};
use palisade_lab::{Lab, Netns, Proc, TcpServer, require_root_and, tcp_connect, wait_until};
use palisade_model::{Action, Timestamp};

const PORT: u16 = 8080;

fn entry(n: &str, rule: Option<&str>) -> Entry {
    Entry {
        action: Action::Ban,
        net: n.parse().unwrap(),
        expires: Some(Timestamp::now().saturating_add(Duration::from_secs(3600))),
        comment: None,
        rule: rule.map(str::to_string),
        list: None,
    }
}

fn unban(n: &str) -> Change {
    Change::Remove {
        action: Action::Ban,
        net: n.parse().unwrap(),
    }
}

fn tpl(s: &str) -> Template {
    Template::parse(s).unwrap()
}

/// A fail2ban-server in `ns` with one jail `pal` whose action drops the
/// banned address with iptables, configured in a private directory.
struct Fail2ban {
    dir: tempfile::TempDir,
    _proc: Proc,
}

impl Fail2ban {
    fn start(ns: &Netns) -> Fail2ban {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("filter.d")).unwrap();
        std::fs::create_dir_all(d.join("action.d")).unwrap();
        std::fs::write(d.join("auth.log"), "").unwrap();
        let p = d.display();
        std::fs::write(
            d.join("fail2ban.conf"),
            format!(
                "[Definition]\nloglevel = INFO\nlogtarget = {p}/f2b.log\nsocket = {p}/f2b.sock\npidfile = {p}/f2b.pid\ndbfile = :memory:\n"
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("jail.conf"),
            format!(
                "[DEFAULT]\nbackend = polling\nbantime = 1h\n[pal]\nenabled = true\nfilter = pal\nlogpath = {p}/auth.log\naction = pal-iptables\n"
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("filter.d/pal.conf"),
            "[Definition]\nfailregex = ^fail <HOST>$\n",
        )
        .unwrap();
        std::fs::write(
            d.join("action.d/pal-iptables.conf"),
            "[Definition]\nactionstart =\nactionstop =\nactioncheck =\nactionban = iptables -I INPUT -s <ip> -j DROP\nactionunban = iptables -D INPUT -s <ip> -j DROP\n",
        )
        .unwrap();
        let mut cmd = ns.command("fail2ban-server");
        cmd.args(["-f", "-x", "-c"])
            .arg(d)
            .arg("-s")
            .arg(d.join("f2b.sock"));
        cmd.arg("-p").arg(d.join("f2b.pid"));
        let proc = Proc::spawn(cmd).expect("start fail2ban-server");
        let f = Fail2ban { dir, _proc: proc };
        assert!(
            wait_until(Duration::from_secs(20), || f.client(&["ping"]).0),
            "fail2ban-server did not come up: {}",
            f._proc.describe()
        );
        f
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("f2b.sock")
    }

    fn client(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("fail2ban-client")
            .arg("-s")
            .arg(self.socket())
            .args(args)
            .output()
            .expect("run fail2ban-client");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn banned(&self) -> String {
        let (_, out) = self.client(&["status", "pal"]);
        out.lines()
            .find_map(|l| l.split("Banned IP list:").nth(1))
            .unwrap_or("")
            .trim()
            .to_string()
    }
}

impl Drop for Fail2ban {
    fn drop(&mut self) {
        let _ = self.client(&["stop"]);
    }
}

fn reachable(from: &Netns, to: IpAddr) -> bool {
    tcp_connect(from, SocketAddr::new(to, PORT), Duration::from_millis(700))
}

#[test]
fn bans_and_unbans_go_through_a_real_fail2ban_jail() {
    if !require_root_and(&["fail2ban-server", "fail2ban-client", "iptables"]) {
        return;
    }
    let lab = Lab::new();
    let (attacker, victim) = (lab.attacker(), lab.victim());
    let _server = TcpServer::start(victim, PORT);
    let f2b = Fail2ban::start(victim);
    let sock = f2b.socket().display().to_string();
    let mut config = CommandConfig::new(tpl(&format!(
        "fail2ban-client -s {sock} set {{jail}} banip {{ip}}"
    )));
    config.unban = Some(tpl(&format!(
        "fail2ban-client -s {sock} set {{jail}} unbanip {{ip}}"
    )));
    config.jail = Some("pal".into());
    let mut e = CommandEnforcer::new(config).unwrap();
    let me = attacker.v4().to_string();
    let to: IpAddr = victim.v4().into();
    assert!(reachable(attacker, to));

    // An operator's ban carries rule `ban`: the configured jail takes it.
    let started = Instant::now();
    e.apply(&[Change::Put(entry(&me, Some("ban")))]).unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "apply only queues"
    );
    assert!(e.wait_idle(Duration::from_secs(20)));
    assert_eq!(f2b.banned(), me);
    assert!(
        !reachable(attacker, to),
        "fail2ban's action drops the attacker"
    );

    e.apply(&[unban(&me)]).unwrap();
    assert!(e.wait_idle(Duration::from_secs(20)));
    assert_eq!(f2b.banned(), "");
    assert!(reachable(attacker, to));

    // Without a configured jail, the decision's rule names the jail
    // (`fail2ban/pal`: jail `pal`); a wrong jail fails visibly after its
    // retries, with fail2ban's own message.
    let mut config = CommandConfig::new(tpl(&format!(
        "fail2ban-client -s {sock} set {{jail}} banip {{ip}}"
    )));
    config.retries = 1;
    let mut e = CommandEnforcer::new(config).unwrap();
    e.apply(&[Change::Put(entry("203.0.113.5", Some("fail2ban/pal")))])
        .unwrap();
    e.apply(&[Change::Put(entry("203.0.113.6", Some("nojail")))])
        .unwrap();
    assert!(e.wait_idle(Duration::from_secs(30)));
    assert_eq!(f2b.banned(), "203.0.113.5");
    let st = e.status(true).unwrap();
    assert!(!st.in_sync);
    let line = &st.objects[0].name;
    assert!(
        line.contains("1 failed") && line.contains("exit status: 255") && line.contains("nojail"),
        "{line}"
    );
}

#[test]
fn no_shell_sees_a_value_and_hostile_rules_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    // `touch` gets the canonical address and the rule as parts of one
    // argument each. The `;` in the template's own text is literal too.
    let mut config = CommandConfig::new(tpl(&format!("touch {d}/ban-{{rule}}-{{ip}} '{d}/x;y'")));
    config.jail = Some("sshd".into());
    let mut e = CommandEnforcer::new(config).unwrap();
    e.apply(&[
        Change::Put(entry("198.18.0.7", None)),
        Change::Put(entry("::ffff:198.18.0.8", Some("web.1_a-b"))),
        Change::Put(entry("2001:DB8:0::7", None)),
    ])
    .unwrap();
    for hostile in [
        "sshd;touch /tmp/palisade-pwned",
        "$(touch x)",
        "-rf",
        "a b",
        "`id`",
    ] {
        let err = e
            .apply(&[Change::Put(entry("198.18.0.9", Some(hostile)))])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("refused") && err.contains("cannot be passed"),
            "{err}"
        );
    }
    // A network cannot be given to an {ip} command.
    let err = e
        .apply(&[Change::Put(entry("198.18.1.0/24", None))])
        .unwrap_err()
        .to_string();
    assert!(err.contains("takes single addresses"), "{err}");
    assert!(e.wait_idle(Duration::from_secs(10)));
    // Refused decisions keep the enforcer out of sync until they go.
    let st = e.status(false).unwrap();
    assert!(
        !st.in_sync && st.objects[0].name.contains("2 refused"),
        "{st:?}"
    );
    let gone = |n: &str| Change::Remove {
        action: Action::Ban,
        net: n.parse().unwrap(),
    };
    e.apply(&[gone("198.18.1.0/24"), gone("198.18.0.9")])
        .unwrap();
    assert!(e.status(false).unwrap().in_sync);
    let mut files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "ban-sshd-198.18.0.7",
            "ban-sshd-2001:db8::7",
            "ban-web.1_a-b-198.18.0.8",
            "x;y"
        ]
    );
    assert!(!Path::new("/tmp/palisade-pwned").exists());
}

#[test]
fn slow_and_failing_commands_never_block_and_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    // Too slow: killed at the timeout, retried once, then given up.
    let mut config = CommandConfig::new(tpl("sleep 30"));
    config.timeout = Duration::from_millis(300);
    config.retries = 1;
    let mut slow = CommandEnforcer::new(config).unwrap();
    let started = Instant::now();
    slow.apply(&[Change::Put(entry("198.18.0.1", None))])
        .unwrap();
    assert!(started.elapsed() < Duration::from_millis(100));
    assert!(slow.wait_idle(Duration::from_secs(10)));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let line = slow.status(true).unwrap().objects[0].name.clone();
    assert!(
        line.contains("was killed") && line.contains("1 failed"),
        "{line}"
    );

    // Failing: the exit status and stderr are reported; a retry that
    // succeeds clears the failure.
    let flag = dir.path().join("ok");
    let script = format!(
        "if test -e {f}; then exit 0; fi; touch {f}; echo \"no such jail\" >&2; exit 3",
        f = flag.display()
    );
    let mut config =
        CommandConfig::new(Template::parse(&format!("sh -c '{script}' sh {{ip}}")).unwrap());
    config.retries = 2;
    let mut flaky = CommandEnforcer::new(config).unwrap();
    flaky
        .apply(&[Change::Put(entry("198.18.0.2", None))])
        .unwrap();
    assert!(flaky.wait_idle(Duration::from_secs(10)));
    let st = flaky.status(true).unwrap();
    assert!(st.in_sync, "{st:?}");
    assert!(st.objects[0].name.contains("2 run, 0 failed"), "{st:?}");

    let mut config = CommandConfig::new(tpl("sh -c 'echo oops >&2; exit 3'"));
    config.retries = 0;
    let mut bad = CommandEnforcer::new(config).unwrap();
    bad.apply(&[Change::Put(entry("198.18.0.3", None))])
        .unwrap();
    assert!(bad.wait_idle(Duration::from_secs(10)));
    let line = bad.status(true).unwrap().objects[0].name.clone();
    assert!(
        line.contains("exit status: 3") && line.contains("stderr: oops"),
        "{line}"
    );
}
