//! Plain names: what operators and programs call nodes, groups, tokens,
//! administrators, rules and jails. A plain name is safe as one argument
//! of a command, one component of a path and one word of a log line.

/// Longest plain name.
pub const MAX_NAME: usize = 64;

/// Whether `name` is 1 to [`MAX_NAME`] of `A-Z a-z 0-9 . _ -`, and neither
/// `.` nor `..` (which are paths, not names, wherever a name ends up in
/// one).
pub fn is_plain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// What a plain name is, for error messages.
pub const PLAIN: &str = "1 to 64 letters, digits, '.', '_' or '-', and not . or ..";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names() {
        for ok in [
            "web1",
            "f2b-sshd_2.x",
            "a",
            ".hidden",
            "a..b",
            &"x".repeat(64),
        ] {
            assert!(is_plain(ok), "{ok:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a b",
            "$(id)",
            "x\n",
            "é",
            "a\0",
            &"x".repeat(65),
        ] {
            assert!(!is_plain(bad), "{bad:?}");
        }
    }
}
