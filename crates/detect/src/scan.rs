//! Finding the parts of a translated pattern (see `pyre::translate`)
//! without parsing it: where a class or group ends, which groups capture.

/// Index of the `]` closing the class opened at `open`.
pub fn class_end(b: &[u8], open: usize) -> Option<usize> {
    let mut i = open + 1;
    if b.get(i) == Some(&b'^') {
        i += 1;
    }
    if b.get(i) == Some(&b']') {
        i += 1;
    }
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b']' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// The length of the escape (`\\x`) or class (`[...]`) at byte `i` of
/// `p`, which a rewrite copies as it is (for a class that does not close,
/// the rest of `p`: the rewritten pattern then fails to compile, as the
/// original would); `None` at anything else.
pub fn escape_or_class(p: &str, i: usize) -> Option<usize> {
    match p.as_bytes().get(i)? {
        b'\\' => Some(1 + p[i + 1..].chars().next().map_or(0, char::len_utf8)),
        b'[' => Some(class_end(p.as_bytes(), i).map_or(p.len() - i, |e| e + 1 - i)),
        _ => None,
    }
}

/// Index of the `)` closing the group opened at `open`.
pub fn group_end(b: &[u8], open: usize) -> Option<usize> {
    let mut depth = 0;
    let mut i = open;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'[' => i = class_end(b, i)?,
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Whether the `(` at byte `i` of `p` opens a capturing group: a plain
/// one or a named one (not a look-behind, which also starts `(?<`).
pub fn opens_capture(p: &str, i: usize) -> bool {
    let rest = &p[i..];
    !rest.starts_with("(?")
        || rest.starts_with("(?P<")
        || (rest.starts_with("(?<") && !rest.starts_with("(?<=") && !rest.starts_with("(?<!"))
}

/// How many capturing groups open in `p`.
pub fn count_captures(p: &str) -> usize {
    let b = p.as_bytes();
    let mut n = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'[' => match class_end(b, i) {
                Some(e) => i = e,
                None => return n,
            },
            b'(' if opens_capture(p, i) => n += 1,
            _ => {}
        }
        i += 1;
    }
    n
}
