//! Literal prefilter: the strings one of which every match of a filter
//! or rule must contain, so that a line with none of them (found at once
//! for all of them by SIMD searches) is rejected without running any regex.
//!
//! For a pattern, [`required`] walks its syntax tree: a literal requires
//! itself; a sequence requires what its most selective required part
//! requires (the set whose shortest string is longest); an alternation
//! requires one of what each branch requires (nothing, if one branch
//! requires nothing); a repetition at least once requires what its body
//! requires. Classes, optional parts and assertions require nothing.

use memchr::memmem;
use regex_syntax::hir::{Class, Hir, HirKind};

/// Most strings searched one by one with `memmem` (SIMD, a few bytes per
/// cycle): a third string costs as much as one SIMD search of all of them.
const MAX_MEMMEM: usize = 2;

/// A compiled set of strings: does a line hold one of them?
pub enum AnyOf {
    Few(Vec<memmem::Finder<'static>>),
    /// Teddy, which looks for up to 64 strings at once with SIMD: on the
    /// bench's logs 3 to 8 times faster than Aho-Corasick's automaton for
    /// 3 to 23 strings, and 2 to 4 times faster than one `memmem` search
    /// per string for 8 or more.
    Packed(aho_corasick::packed::Searcher),
    /// Where Teddy cannot run.
    Many(aho_corasick::AhoCorasick),
}

impl AnyOf {
    pub fn new(set: Vec<Vec<u8>>) -> Option<AnyOf> {
        let set = minimal(set);
        if set.len() <= MAX_MEMMEM {
            let finders = set
                .iter()
                .map(|s| memmem::Finder::new(s).into_owned())
                .collect();
            return Some(AnyOf::Few(finders));
        }
        if let Some(packed) = aho_corasick::packed::Searcher::new(set.iter()) {
            return Some(AnyOf::Packed(packed));
        }
        aho_corasick::AhoCorasick::new(set).ok().map(AnyOf::Many)
    }

    pub fn is_match(&self, line: &str) -> bool {
        match self {
            AnyOf::Few(finders) => finders.iter().any(|f| f.find(line.as_bytes()).is_some()),
            AnyOf::Packed(packed) => packed.find(line).is_some(),
            AnyOf::Many(ac) => ac.is_match(line),
        }
    }
}

/// `set` without the strings that hold another of them (sshd's "Failed
/// publickey for invalid user " holds "Failed "): a text that holds one
/// holds the other, so a search for the rest answers the same, with fewer
/// strings to tell apart.
fn minimal(mut set: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    set.sort_by_key(Vec::len);
    set.dedup();
    let mut kept: Vec<Vec<u8>> = Vec::new();
    for s in set {
        if !kept.iter().any(|k| memmem::find(&s, k).is_some()) {
            kept.push(s);
        }
    }
    kept
}

/// Most strings in one set (beyond, the set is not worth it).
const MAX_SET: usize = 64;
/// Shortest string worth looking for.
const MIN_LEN: usize = 3;

/// Strings one of which every match of `pattern` (Rust regex syntax)
/// contains, or `None` when no useful set is found.
pub fn required(pattern: &str) -> Option<Vec<Vec<u8>>> {
    let hir = regex_syntax::ParserBuilder::new()
        .build()
        .parse(pattern)
        .ok()?;
    required_in(&hir)
}

/// [`required`] of a parsed pattern.
pub fn required_in(hir: &Hir) -> Option<Vec<Vec<u8>>> {
    let set = of(hir)?;
    (shortest(&set) >= MIN_LEN).then_some(set)
}

/// Strings one of which every match of any of several patterns contains,
/// from each pattern's [`required`] set: `None` when one of them requires
/// nothing.
pub fn union(sets: impl IntoIterator<Item = Option<Vec<Vec<u8>>>>) -> Option<Vec<Vec<u8>>> {
    let mut all = Vec::new();
    for set in sets {
        all.extend(set?);
    }
    all.sort();
    all.dedup();
    Some(all)
}

/// Whether a search for `pattern` from the start of a line may read
/// arbitrarily far through any text before it meets a literal (a leading
/// `.*?` or `\S+`, not `\d+`, whose first byte already rules most lines
/// out): a DFA then reads most of every line it does not match, and
/// looking for the pattern's [`required`] strings first costs less.
pub fn reads_far_first(hir: &Hir) -> bool {
    // Searched from every position: as good as a leading `.*?`.
    if !hir
        .properties()
        .look_set_prefix()
        .contains(regex_syntax::hir::Look::Start)
    {
        return true;
    }
    let parts = match hir.kind() {
        HirKind::Concat(parts) => parts.as_slice(),
        _ => std::slice::from_ref(hir),
    };
    for part in parts {
        match part.kind() {
            HirKind::Literal(_) => return false,
            HirKind::Repetition(r) if r.max.is_none() && wide(&r.sub) => return true,
            _ => {}
        }
    }
    false
}

/// A class holding at least half of ASCII (`.`, `\S`, `[^"]`; not `\d`,
/// however many digits Unicode has).
fn wide(hir: &Hir) -> bool {
    let ascii = |start: u32, end: u32| (end.min(127) + 1).saturating_sub(start) as usize;
    let covered: usize = match hir.kind() {
        HirKind::Class(Class::Bytes(c)) => c
            .ranges()
            .iter()
            .map(|r| ascii(u32::from(r.start()), u32::from(r.end())))
            .sum(),
        HirKind::Class(Class::Unicode(c)) => c
            .ranges()
            .iter()
            .map(|r| ascii(u32::from(r.start()), u32::from(r.end())))
            .sum(),
        _ => 0,
    };
    covered >= 64
}

fn shortest(set: &[Vec<u8>]) -> usize {
    set.iter().map(Vec::len).min().unwrap_or(0)
}

fn of(hir: &Hir) -> Option<Vec<Vec<u8>>> {
    match hir.kind() {
        HirKind::Literal(l) => Some(vec![l.0.to_vec()]),
        HirKind::Capture(c) => of(&c.sub),
        HirKind::Repetition(r) if r.min >= 1 => of(&r.sub),
        HirKind::Concat(parts) => parts
            .iter()
            .filter_map(of)
            .max_by_key(|s| (shortest(s), std::cmp::Reverse(s.len()))),
        HirKind::Alternation(branches) => {
            let mut all = Vec::new();
            for b in branches {
                all.extend(of(b)?);
                if all.len() > MAX_SET {
                    return None;
                }
            }
            all.sort();
            all.dedup();
            Some(all)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(p: &str) -> Option<Vec<String>> {
        required(p).map(|s| {
            s.into_iter()
                .map(|b| String::from_utf8(b).unwrap())
                .collect()
        })
    }

    #[test]
    fn any_of_small_and_large_sets() {
        let few = AnyOf::new(vec![b"reject:".to_vec(), b"too many errors".to_vec()]).unwrap();
        assert!(matches!(few, AnyOf::Few(_)));
        assert!(few.is_match("x: NOQUEUE: reject: RCPT"));
        assert!(few.is_match("too many errors after DATA"));
        assert!(!few.is_match("connect from x[1.2.3.4]"));
        let set: Vec<Vec<u8>> = (0..20).map(|i| format!("word{i}").into_bytes()).collect();
        let many = AnyOf::new(set).unwrap();
        assert!(matches!(many, AnyOf::Packed(_) | AnyOf::Many(_)));
        assert!(many.is_match("a word7 b"));
        assert!(!many.is_match("a word b"));
    }

    /// Every way of searching answers as `contains` does, on lines of every
    /// length (Teddy needs a few bytes; shorter lines are searched another
    /// way).
    #[test]
    fn every_search_agrees_with_contains() {
        let words = [
            "auth failed, ",
            "reject:",
            "nknown user",
            "from ",
            "Failed ",
            "x",
        ];
        let set: Vec<Vec<u8>> = words[..5].iter().map(|w| w.as_bytes().to_vec()).collect();
        let ways = [
            AnyOf::Few(
                set.iter()
                    .map(|s| memmem::Finder::new(s).into_owned())
                    .collect(),
            ),
            AnyOf::new(set.clone()).unwrap(),
            AnyOf::Many(aho_corasick::AhoCorasick::new(&set).unwrap()),
            // Strings that hold one of the set change nothing.
            AnyOf::new(
                [
                    &set[..],
                    &[b"Failed publickey ".to_vec(), b"xfrom x".to_vec()],
                ]
                .concat(),
            )
            .unwrap(),
        ];
        let held = [&set[..], &[b"from x".to_vec(), b"from ".to_vec()]].concat();
        assert_eq!(minimal(held), minimal(set.clone()));
        assert_eq!(minimal(set.clone()).len(), 5);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut line = String::new();
            for k in 0..(x % 7) {
                let w = words[((x >> (8 * k)) % words.len() as u64) as usize];
                // Whole words, and their tails (a string cut short).
                line.push_str(&w[((x >> (4 * k)) % 3) as usize % w.len()..]);
            }
            let want = words[..5].iter().any(|w| line.contains(w));
            for way in &ways {
                assert_eq!(way.is_match(&line), want, "{line:?}");
            }
        }
    }

    #[test]
    fn sets() {
        assert_eq!(req(r"^Failed \S+ for"), Some(vec!["Failed ".into()]));
        assert_eq!(
            req(r"^(?:Connection (?:closed|reset)|Disconnected) by"),
            Some(vec!["Connection ".into(), "Disconnected".into()])
        );
        assert_eq!(
            req(r"^(?:Connection closed|Disconnected)x?"),
            Some(vec!["Connection closed".into(), "Disconnected".into()])
        );
        assert_eq!(req(r"^(?:abc|\S+) "), None);
        assert_eq!(req(r"^(?:foo)? \d+"), None);
        assert_eq!(req(r"(?i)^failed"), None);
        let (a, b) = (b"abc".to_vec(), b"xyz".to_vec());
        assert_eq!(
            union([Some(vec![b.clone(), a.clone()]), Some(vec![a.clone()])]),
            Some(vec![a.clone(), b])
        );
        assert_eq!(union([Some(vec![a]), None]), None);
    }

    fn reads_far_first(pattern: &str) -> bool {
        regex_syntax::ParserBuilder::new()
            .build()
            .parse(pattern)
            .is_ok_and(|hir| super::reads_far_first(&hir))
    }

    #[test]
    fn patterns_that_read_far_first() {
        assert!(reads_far_first(r"^(?:\[\s*\d+\.\d+\]\s*)?.*?IN=\S* OUT="));
        assert!(reads_far_first(r"^.*? from \S+$"));
        assert!(reads_far_first(r"^\S+ y"));
        assert!(reads_far_first(r"^[^\]]* y"));
        assert!(!reads_far_first(r"^x+ y"));
        assert!(!reads_far_first(r"^\d+ y"));
        assert!(!reads_far_first(r"^(?:[0-9a-f:.]+) \S+ \[[^\]]+\] 401"));
        assert!(reads_far_first(r"Failed password"));
        assert!(!reads_far_first(r"^(?:error: )?Failed .* for"));
        assert!(!reads_far_first(r"^Accepted \S+ for"));
        assert!(!reads_far_first(r"^\d{1,3} \S+ "));
        assert!(!reads_far_first(r"^(?:a|b"));
    }
}
