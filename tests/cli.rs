//! The CLI on its own: help, configuration, and errors when no agent runs.
//! None of these need root or a kernel.

mod support;

use std::process::Command;

use support::BIN;

fn palisade(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env_remove("PALISADE_CONFIG")
        .env_remove("PALISADE_SOCKET")
        .output()
        .expect("run palisade")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn config_init_prints_a_file_that_config_check_accepts() {
    let out = palisade(&["config", "init"]);
    assert!(out.status.success());
    let template = text(&out.stdout);
    assert!(template.contains("[agent]") && template.contains("default_ban = \"1d\""));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("palisade.toml");
    std::fs::write(&path, &template).unwrap();
    let out = palisade(&["config", "check", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(": ok"));
}

#[test]
fn config_check_points_at_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[agent]\nlocal_only = true\n\n[[allow]]\nnet = \"10.1.2.3/8\"\n",
    )
    .unwrap();
    let out = palisade(&["--config", path.to_str().unwrap(), "config", "check"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let expected = format!("{}:5:7: ", path.display());
    assert!(err.starts_with(&expected), "{err}");
    assert!(err.contains("did you mean 10.0.0.0/8"), "{err}");
    assert!(err.contains("net = \"10.1.2.3/8\""), "{err}");

    let out = palisade(&["config", "check", "/nonexistent/palisade.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot read the configuration file"));
}

#[test]
fn commands_explain_a_missing_agent() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("palisade.sock");
    for args in [
        vec!["ban", "198.51.100.1"],
        vec!["list"],
        vec!["status"],
        vec!["explain", "198.51.100.1"],
    ] {
        let mut all = vec!["--socket", sock.to_str().unwrap()];
        all.extend(args.iter());
        let out = palisade(&all);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains("the palisade agent is not running"), "{err}");
        assert!(err.contains("palisade agent --local-only"), "{err}");
    }
}

#[test]
fn bad_arguments_are_named() {
    let out = palisade(&["ban", "1.2.3.4/24"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("did you mean 1.2.3.0/24"));
    let out = palisade(&["ban", "198.51.100.1", "--for", "ten minutes"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("such as 90s, 10m, 1h, 2d"));
    let out = palisade(&["ban"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_agent_needs_a_mode() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("p.toml");
    std::fs::write(&cfg, "").unwrap();
    let out = palisade(&["--config", cfg.to_str().unwrap(), "agent"]);
    // EX_CONFIG: the systemd unit does not restart on it.
    assert_eq!(out.status.code(), Some(78));
    assert!(
        text(&out.stderr).contains("--local-only"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn help_teaches() {
    let out = palisade(&["--help"]);
    let help = text(&out.stdout);
    for cmd in [
        "agent", "ban", "unban", "allow", "unallow", "list", "explain", "status", "config",
    ] {
        assert!(help.contains(cmd), "--help lacks {cmd}");
    }
    let ban = text(&palisade(&["ban", "--help"]).stdout);
    assert!(ban.contains("Examples:") && ban.contains("--for"), "{ban}");
    let agent = text(&palisade(&["agent", "--help"]).stdout);
    assert!(
        agent.contains("PALISADE_STATE_DIR") && agent.contains("--remove-rules"),
        "{agent}"
    );
}

#[test]
fn install_lays_out_the_package_and_its_units_start_with_no_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let out = palisade(&["install", "--package", "--root", root.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/palisade.service")).unwrap();
    // With no network configured the agent protects this server alone
    // instead of failing and looping on Restart=on-failure.
    assert!(
        unit.contains("ExecStart=/usr/bin/palisade agent --local-only-unless-joined"),
        "{unit}"
    );
    assert!(unit.contains("RestartPreventExitStatus=78"), "{unit}");
    assert!(unit.contains("LimitNOFILE="), "{unit}");
    assert!(unit.contains("Documentation=man:palisade(8)"), "{unit}");
    let up = std::fs::read_to_string(root.join("lib/systemd/system/palisade-up.service")).unwrap();
    assert!(
        up.contains("Conflicts=palisade.service palisade-hub.service"),
        "{up}"
    );
    for page in [
        "palisade.8",
        "palisade-agent.8",
        "palisade-hub-token-create.8",
        "palisade-sources.8",
    ] {
        let text = std::fs::read_to_string(root.join("usr/share/man/man8").join(page)).unwrap();
        assert!(text.starts_with(".ie"), "{page} is not roff");
    }
    for completion in [
        "usr/share/bash-completion/completions/palisade",
        "usr/share/zsh/vendor-completions/_palisade",
        "usr/share/fish/vendor_completions.d/palisade.fish",
    ] {
        let text = std::fs::read_to_string(root.join(completion)).unwrap();
        assert!(text.contains("local-only-unless-joined"), "{completion}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(root.join("etc/palisade/palisade.toml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let action = std::fs::read_to_string(root.join("etc/fail2ban/action.d/palisade.conf")).unwrap();
    assert!(
        action.contains("actionban = /usr/bin/palisade report fail2ban"),
        "{action}"
    );
}

#[test]
fn sources_lists_configured_sources_or_none_when_finding_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("p.toml");
    std::fs::write(
        &cfg,
        "[[source]]\nkind = \"file\"\npath = \"/srv/app.log\"\n",
    )
    .unwrap();
    let out = palisade(&["--config", cfg.to_str().unwrap(), "sources", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listing["origin"], "configured");
    assert_eq!(listing["sources"][0]["path"], "/srv/app.log");
    assert!(
        listing["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "sshd")
    );

    std::fs::write(&cfg, "[detect]\ndetect_sources = false\n").unwrap();
    let out = palisade(&["--config", cfg.to_str().unwrap(), "sources"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("detect_sources = false"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn a_created_token_is_shown_once_and_joins_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("p.toml");
    std::fs::write(&cfg, "").unwrap();
    let state = dir.path().join("hub");
    let create = |args: &[&str]| {
        let mut all = vec![
            "--config",
            cfg.to_str().unwrap(),
            "hub",
            "token",
            "create",
            "--hub-state-dir",
            state.to_str().unwrap(),
            "--hub-socket",
            dir.path().join("hub.sock").to_str().unwrap(),
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        all.extend(args.iter().map(|a| a.to_string()));
        Command::new(BIN)
            .args(&all)
            .env_remove("PALISADE_CONFIG")
            .output()
            .expect("run palisade")
    };
    let out = create(&["web7"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_string();
    assert!(token.starts_with("palisade1.node."), "{token}");
    // The secret is printed once, on stdout only; the advice joins from a
    // root-only file.
    let err = text(&out.stderr);
    assert!(!err.contains(&token), "{err}");
    assert!(
        err.contains(
            "palisade agent --join https://HUB:PORT --token-file /etc/palisade/join.token"
        ),
        "{err}"
    );
    // A read token cannot join: no join command.
    let out = create(&["--kind", "read", "export"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        !err.contains("--join") && err.contains("cannot join"),
        "{err}"
    );
    // `.` and `..` are paths, not names.
    for bad in [".", ".."] {
        let out = create(&[bad]);
        assert_eq!(out.status.code(), Some(1), "{bad}");
        assert!(text(&out.stderr).contains("not a valid token name"));
    }
}

#[test]
fn hub_options_go_before_or_after_its_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("palisade.toml");
    std::fs::write(&config, "").unwrap();
    let state = dir.path().join("hub").display().to_string();
    let socket = dir.path().join("hub.sock").display().to_string();
    let config = config.display().to_string();
    for args in [
        vec![
            "hub",
            "--config",
            &config,
            "token",
            "list",
            "--hub-state-dir",
            &state,
        ],
        vec![
            "hub",
            "--hub-state-dir",
            &state,
            "--hub-socket",
            &socket,
            "token",
            "list",
        ],
        vec![
            "--config",
            &config,
            "hub",
            "token",
            "list",
            "--hub-state-dir",
            &state,
        ],
    ] {
        let out = palisade(&args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    }
    // The hub's options before `token create` too; the secret is printed
    // once, on stdout.
    let out = palisade(&[
        "hub",
        "--config",
        &config,
        "--hub-state-dir",
        &state,
        "--hub-socket",
        &socket,
        "token",
        "create",
        "web9",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_string();
    assert!(token.starts_with("palisade1.node."), "{token}");
    assert!(!text(&out.stderr).contains(&token));
    let help = text(&palisade(&["hub", "--help"]).stdout);
    assert!(help.contains("the hub's is --hub-socket"), "{help}");
}
