//! Finding the parts of a translated pattern (see `pyre::translate`)
//! without parsing it: where a class or group ends, which groups capture,
//! what a quantifier says; and copying one with some groups rewritten.

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

/// A quantifier: `*`, `+`, `?`, `{m}`, `{m,}` or `{m,n}`, maybe followed by
/// `?` (lazy) or `+` (possessive).
pub struct Quantifier {
    pub min: usize,
    /// `None`: unbounded.
    pub max: Option<usize>,
    pub braces: bool,
    pub lazy: bool,
    pub possessive: bool,
    /// Its length in bytes.
    pub len: usize,
}

/// The quantifier at byte `at` of `p`, if one is there.
pub fn quantifier(p: &str, at: usize) -> Option<Quantifier> {
    let rest = p.get(at..)?;
    let (min, max, braces, n) = match rest.as_bytes().first()? {
        b'*' => (0, None, false, 1),
        b'+' => (1, None, false, 1),
        b'?' => (0, Some(1), false, 1),
        b'{' => {
            let close = rest.find('}')?;
            let (min, max) = match rest[1..close].split_once(',') {
                Some((m, "")) => (m.parse().ok()?, None),
                Some((m, n)) => (m.parse().ok()?, Some(n.parse().ok()?)),
                None => {
                    let m = rest[1..close].parse().ok()?;
                    (m, Some(m))
                }
            };
            (min, max, true, close + 1)
        }
        _ => return None,
    };
    let lazy = rest[n..].starts_with('?');
    let possessive = rest[n..].starts_with('+');
    Some(Quantifier {
        min,
        max,
        braces,
        lazy,
        possessive,
        len: n + usize::from(lazy || possessive),
    })
}

/// `p` copied, with each `(` offered first to `group` (its index, and the
/// copy so far), which either writes what stands for the text there and
/// returns that text's length, or returns `None` to have the `(` copied.
/// Escapes and classes are copied as they are.
pub fn rewrite_groups(
    p: &str,
    mut group: impl FnMut(usize, &mut String) -> Option<usize>,
) -> String {
    let mut out = String::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        let len = match escape_or_class(p, i) {
            Some(len) => {
                out.push_str(&p[i..i + len]);
                len
            }
            None => match p.as_bytes()[i] {
                b'(' => group(i, &mut out).unwrap_or_else(|| {
                    out.push('(');
                    1
                }),
                _ => {
                    let len = p[i..].chars().next().map_or(1, char::len_utf8);
                    out.push_str(&p[i..i + len]);
                    len
                }
            },
        };
        i += len;
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantifiers() {
        let q = |p: &str| quantifier(p, 1).map(|q| (q.min, q.max, q.lazy, q.possessive, q.len));
        assert_eq!(q("a*b"), Some((0, None, false, false, 1)));
        assert_eq!(q("a+?"), Some((1, None, true, false, 2)));
        assert_eq!(q("a?+"), Some((0, Some(1), false, true, 2)));
        assert_eq!(q("a{2}"), Some((2, Some(2), false, false, 3)));
        assert_eq!(q("a{2,}?"), Some((2, None, true, false, 5)));
        assert_eq!(q("a{0,4}x"), Some((0, Some(4), false, false, 5)));
        assert_eq!(q("ab"), None);
        assert_eq!(q("a{x}"), None);
        assert_eq!(q("a{2"), None);
    }

    #[test]
    fn groups_are_rewritten_escapes_and_classes_copied() {
        let p = r"a\(b[(]c(?:d)(e)é";
        let out = rewrite_groups(p, |i, out| {
            p[i..].starts_with("(e").then(|| {
                out.push_str("<E>");
                3
            })
        });
        assert_eq!(out, r"a\(b[(]c(?:d)<E>é");
    }
}
