//! Several enforcers at once, built from `[[enforcer]]` tables as the
//! agent's configuration will hold them, each applying only what its filter
//! passes: nftables for everything, an ipset for IPv4 host bans, and a
//! command for the bans of sshd rules. Real kernel, one namespace. Root
//! only.

use std::time::Duration;

use palisade_enforce::{Change, Enforcer, EnforcerConfig, Entry, build};
use palisade_lab::{Netns, require_root_and};
use palisade_model::{Action, Timestamp};
use serde::Deserialize;

#[derive(Deserialize)]
struct Doc {
    enforcer: Vec<EnforcerConfig>,
}

fn entry(action: Action, n: &str, rule: Option<&str>) -> Entry {
    Entry {
        action,
        net: n.parse().unwrap(),
        expires: Some(Timestamp::now().saturating_add(Duration::from_secs(3600))),
        comment: None,
        rule: rule.map(str::to_string),
        list: None,
    }
}

fn nft_elements(ns: &Netns, set: &str) -> String {
    ns.exec("nft", &["list", "set", "inet", "several", set])
}

#[test]
fn each_enforcer_applies_what_its_filter_passes() {
    if !require_root_and(&["nft", "ipset"]) {
        return;
    }
    let ns = Netns::new();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[[enforcer]]
kind = "nftables"
table = "several"

[[enforcer]]
kind = "ipset"
filter = {{ actions = ["ban"], families = ["ipv4"], hosts_only = true }}
[[enforcer.set]]
name = "bl"
action = "ban"
create = {{ type = "hash:ip", timeout = 86400 }}

[[enforcer]]
kind = "command"
name = "recorder"
ban = "touch {dir}/ban-{{rule}}-{{ip}}"
unban = "touch {dir}/unban-{{rule}}-{{ip}}"
filter = {{ rules = ["sshd*"], hosts_only = true }}
"#,
        dir = dir.path().display()
    );
    let doc: Doc = toml::from_str(&config).expect("config");
    let mut enforcers: Vec<Box<dyn Enforcer>> =
        ns.run(|| doc.enforcer.iter().map(|c| build(c).unwrap()).collect());
    let changes = [
        Change::Put(entry(Action::Ban, "198.18.0.7", Some("sshd"))),
        Change::Put(entry(Action::Ban, "198.18.1.0/24", Some("sshd"))),
        Change::Put(entry(Action::Ban, "2001:db8::7", Some("sshd-password"))),
        Change::Put(entry(Action::Ban, "198.18.0.8", Some("web"))),
        Change::Put(entry(Action::Allow, "198.51.100.0/24", None)),
    ];
    ns.run(|| {
        for e in enforcers.iter_mut() {
            e.replace_all(&mut std::iter::empty()).unwrap();
            e.apply(&changes).unwrap();
        }
    });
    // nftables: everything.
    let b4 = nft_elements(&ns, "block4");
    assert!(
        b4.contains("198.18.0.7") && b4.contains("198.18.0.8"),
        "{b4}"
    );
    let b4_net = nft_elements(&ns, "block4_net");
    assert!(b4_net.contains("198.18.1.0/24"), "{b4_net}");
    assert!(nft_elements(&ns, "block6").contains("2001:db8::7"));
    assert!(nft_elements(&ns, "allow4").contains("198.51.100.0/24"));
    // ipset: IPv4 host bans only.
    let bl = ns.exec("ipset", &["list", "bl"]);
    let members: Vec<&str> = bl
        .split("Members:\n")
        .nth(1)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut members = members;
    members.sort();
    assert_eq!(members, ["198.18.0.7", "198.18.0.8"]);
    // The command: host bans of sshd rules, and the unban of one of them
    // only (198.18.0.8 of rule `web` never reached it).
    ns.run(|| {
        for e in enforcers.iter_mut() {
            e.apply(&[
                Change::Remove {
                    action: Action::Ban,
                    net: "198.18.0.7".parse().unwrap(),
                },
                Change::Remove {
                    action: Action::Ban,
                    net: "198.18.0.8".parse().unwrap(),
                },
            ])
            .unwrap();
        }
    });
    assert_eq!(enforcers[2].name(), "recorder");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let files = || {
        let mut f: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        f.sort();
        f
    };
    while files().len() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        files(),
        [
            "ban-sshd-198.18.0.7",
            "ban-sshd-password-2001:db8::7",
            "unban-sshd-198.18.0.7"
        ]
    );
    let st = ns.run(|| enforcers[1].status(true)).unwrap();
    assert_eq!(st.objects[0].in_kernel, Some(0), "{st:?}");
}
