use std::path::Path;

/// True when the test may run: the process is root and every tool in `tools`
/// (plus `ip`, which every lab uses) is an executable on `PATH`.
///
/// Otherwise a test is never skipped silently: with `CI=true` in the
/// environment this panics naming what is missing (CI must run every test);
/// elsewhere it prints `SKIPPED <test>: <reason>` to stderr and returns
/// false, and the test should return early:
///
/// ```no_run
/// if !palisade_lab::require_root_and(&["nft", "ping"]) {
///     return;
/// }
/// ```
pub fn require_root_and(tools: &[&str]) -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root (the test creates network namespaces)".to_string());
    }
    let mut wanted = vec!["ip"];
    wanted.extend(tools.iter().copied().filter(|t| *t != "ip"));
    for tool in wanted {
        if !on_path(tool) {
            missing.push(format!("`{tool}` on PATH"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_string();
    let reason = format!("needs {}", missing.join(", "));
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test} cannot run: it {reason}, and CI=true forbids skipping it");
    }
    eprintln!("SKIPPED {test}: {reason}");
    false
}

fn on_path(tool: &str) -> bool {
    if tool.contains('/') {
        return is_executable(Path::new(tool));
    }
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| is_executable(&dir.join(tool)))
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tools_on_path() {
        assert!(on_path("sh"));
        assert!(!on_path("palisade-no-such-tool-xyz"));
        assert!(on_path("/bin/sh"));
    }
}
