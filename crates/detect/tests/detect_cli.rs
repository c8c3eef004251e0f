//! `palisade detect` (built as the `detect` example from the same source
//! file) on real-looking logs: report, `--json`, fail2ban filters, errors.

use std::path::PathBuf;
use std::process::Command;

fn bin() -> PathBuf {
    // target/<profile>/deps/<test> -> target/<profile>/examples/detect
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let p = dir.join("examples").join("detect");
    assert!(
        p.exists(),
        "{} not built (cargo test builds examples)",
        p.display()
    );
    p
}

fn log(dir: &tempfile::TempDir) -> PathBuf {
    let p = dir.path().join("auth.log");
    let mut s = String::new();
    for i in 0..6 {
        s.push_str(&format!(
            "Mar  3 12:00:0{i} web1 sshd[10{i}]: Failed password for invalid user u{i} from 198.51.100.7 port 4{i} ssh2\n"
        ));
    }
    s.push_str("Mar  3 12:00:09 web1 sshd[99]: Accepted publickey for ops from 192.0.2.5 port 1 ssh2: ED25519 SHA256:x\n");
    s.push_str("Mar  3 12:00:10 web1 cron[9]: noise\n");
    std::fs::write(&p, s).unwrap();
    p
}

#[test]
fn report_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let p = log(&dir);
    let out = Command::new(bin()).arg(&p).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Lines: 8"), "{text}");
    assert!(text.contains("198.51.100.7"), "{text}");
    assert!(text.contains("stage ban (5 failures) ban 1h"), "{text}");
    assert!(text.contains("at line 5"), "{text}");
    assert!(text.contains("lines/s"), "{text}");
    assert!(text.contains("Evicted: 0"), "{text}");
    assert!(text.contains("1 address, 0 prefixes"), "{text}");
    assert!(text.contains("verified"), "{text}");

    let out = Command::new(bin())
        .args(["--json"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(out.status.success());
    let objs: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objs.len(), 8, "6 failures, 1 success and the summary");
    let summary = &objs[7]["summary"];
    assert_eq!(summary["lines"], 8);
    assert_eq!(summary["bans"], 1);
    assert_eq!(summary["banned_hosts"], 1);
    assert_eq!(summary["evicted"], 0);
    assert!(summary["lines_per_second"].as_f64().unwrap() > 0.0);
    let sshd = summary["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == "sshd")
        .unwrap();
    assert_eq!((&sshd["matched"], &sshd["good"]), (&6.into(), &1.into()));
    assert_eq!(objs[0]["line"], 1);
    assert_eq!(objs[0]["rule"], "sshd");
    assert_eq!(objs[0]["address"], "198.51.100.7");
    assert_eq!(objs[4]["stage"]["name"], "ban");
    assert_eq!(objs[4]["stage"]["target"], "198.51.100.7");
    assert_eq!(objs[4]["stage"]["trust"], "verified");
    assert!(objs[3].get("stage").is_none());
    assert_eq!(objs[6]["kind"], "good");
    assert_eq!(objs[6]["line"], 7);
}

#[test]
fn stdin_and_fail2ban_filter() {
    let dir = tempfile::tempdir().unwrap();
    let p = log(&dir);
    if !std::path::Path::new("/etc/fail2ban/filter.d/sshd.conf").exists() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("fail2ban is not installed (apt-get install fail2ban)");
        }
        println!("SKIPPED stdin_and_fail2ban_filter: fail2ban is not installed");
        return;
    }
    let out = Command::new(bin())
        .args([
            "--json",
            "--fail2ban-filter",
            "/etc/fail2ban/filter.d/sshd.conf[mode=aggressive]",
            "-",
        ])
        .stdin(std::fs::File::open(&p).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let n = text
        .lines()
        .filter(|l| l.starts_with("{\"line\"") && l.contains("\"rule\":\"fail2ban/sshd\""))
        .count();
    assert_eq!(n, 6, "{text}");
}

#[test]
fn errors_exit_non_zero() {
    let out = Command::new(bin())
        .arg("/nonexistent/log")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/log"));
    let dir = tempfile::tempdir().unwrap();
    let p = log(&dir);
    let bad = dir.path().join("bad.conf");
    std::fs::write(&bad, "[Definition]\nfailregex = ^oops (<HOST>\n").unwrap();
    let out = Command::new(bin())
        .arg("--fail2ban-filter")
        .arg(&bad)
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.conf") && err.contains("failregex"),
        "{err}"
    );
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, "[[rule]]\nname = \"x\"\nbad = ['from <HOST>']\n").unwrap();
    let out = Command::new(bin())
        .arg("--rules")
        .arg(&rules)
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 3") && err.contains("must start with ^"),
        "{err}"
    );
}
