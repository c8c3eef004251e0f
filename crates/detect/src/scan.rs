//! Finding the parts of a pattern (one `pyre::translate` wrote, or one of
//! palisade's own rules) without parsing it: where a class or group ends,
//! which groups capture, what a quantifier says; and copying one with some
//! groups rewritten.

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

/// One piece of a pattern as the scanners here read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// A byte outside escapes and classes: where groups, alternations and
    /// quantifiers are.
    Byte(u8),
    /// An escape (`\` and the character after it) or a class (`[` to its
    /// `]`), taken whole.
    Atom,
    /// A class that does not close: the rest of the pattern (a regex
    /// engine refuses it; the pieces end there).
    Unclosed,
}

/// The pieces of `p` from byte `from` on, each with the byte it starts at:
/// the one walk over escapes and classes that finding groups, captures and
/// quantifiers shares.
pub fn pieces(p: &str, from: usize) -> impl Iterator<Item = (usize, Piece)> + '_ {
    let mut i = from;
    std::iter::from_fn(move || {
        let &c = p.as_bytes().get(i)?;
        let at = i;
        let piece = match c {
            b'[' if class_end(p.as_bytes(), i).is_none() => {
                i = p.len();
                Piece::Unclosed
            }
            _ => match escape_or_class(p, i) {
                Some(len) => {
                    i += len;
                    Piece::Atom
                }
                None => {
                    i += p[i..].chars().next().map_or(1, char::len_utf8);
                    Piece::Byte(c)
                }
            },
        };
        Some((at, piece))
    })
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
pub fn group_end(p: &str, open: usize) -> Option<usize> {
    let mut depth = 0;
    for (i, piece) in pieces(p, open) {
        match piece {
            Piece::Byte(b'(') => depth += 1,
            Piece::Byte(b')') => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            Piece::Unclosed => return None,
            _ => {}
        }
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
    pieces(p, 0)
        .filter(|&(i, piece)| piece == Piece::Byte(b'(') && opens_capture(p, i))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_take_escapes_and_classes_whole() {
        use Piece::*;
        let all = |p: &str| pieces(p, 0).collect::<Vec<_>>();
        assert_eq!(
            all(r"a\(é[(]x"),
            [
                (0, Byte(b'a')),
                (1, Atom),
                (3, Byte(0xc3)),
                (5, Atom),
                (8, Byte(b'x'))
            ]
        );
        // A `]` first in a class is one of its members; an escaped one too.
        assert_eq!(
            all(r"[]a]*[^]]+[\]]?"),
            [
                (0, Atom),
                (4, Byte(b'*')),
                (5, Atom),
                (9, Byte(b'+')),
                (10, Atom),
                (14, Byte(b'?'))
            ]
        );
        assert_eq!(all(r"a[b(c"), [(0, Byte(b'a')), (1, Unclosed)]);
        assert_eq!(all("\\"), [(0, Atom)]);
        assert_eq!(all("\\é"), [(0, Atom)]);
        assert_eq!(pieces("ab(c)", 2).count(), 3);
    }

    #[test]
    fn groups_end_where_they_close() {
        let p = r"(a(b)[)]\)c)d";
        assert_eq!(group_end(p, 0), Some(11));
        assert_eq!(group_end(p, 2), Some(4));
        assert_eq!(group_end("(a[)", 0), None);
        assert_eq!(group_end("(a(b)", 0), None);
        assert_eq!(
            count_captures(r"(a)(?:b)(?P<x>c)(?<y>d)(?<=e)(?<!f)[(]\(g"),
            3
        );
        assert_eq!(count_captures("(a)[(b"), 1);
    }

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
