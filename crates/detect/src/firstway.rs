//! The first way a small pattern matches from a place, told piece by piece
//! where each piece's way is the only one that can lead on.
//!
//! A walk (`walk.rs`) asks where a part of a failregex ends, such as sshd's
//! `(?: (?:port \d+|on \S+)){0,2}(?: ssh\d*)?` after the address, on nearly
//! every line. A lazy DFA answers in a dozen instructions a byte, but each
//! part's DFA has tables of its own, and a line that asks a few of them
//! loads their states from beyond the processor's first-level cache. Most
//! such parts need no search at all: read from the left, each of their
//! pieces can be taken one way only, and that way is the first.
//!
//! [`FirstWay::new`] keeps a pattern only when that holds, judged by what
//! can come after each piece (`Follow`: the bytes it can begin with, and
//! whether it can be nothing):
//! - a literal or a class has one way;
//! - a greedy run takes the most it can when what follows can be nothing
//!   (the most is the first way, and the rest then matches) or cannot
//!   begin with a byte of its class (then no shorter run could be followed
//!   at all);
//! - a choice takes its first branch that matches, when what follows can be
//!   nothing, or when no two branches begin with a common byte (then only
//!   one can match);
//! - a greedy repetition of something that cannot match nothing goes round
//!   while its body matches, under the same two conditions on its body and
//!   what follows the repetition;
//! - a sequence is each of its pieces in turn, each judged by what follows
//!   it, and `\A` holds at the text's start.
//!
//! Anything else (lazy repetitions, other look-arounds, Unicode classes, a
//! piece that could be taken two ways) is left to the DFA. Nothing is
//! tried again once passed: a byte is read once by each branch that begins
//! with it, so a crafted line costs a few times its length at most.

use regex_syntax::hir::{Hir, HirKind, Look};

use crate::dfa::{byte_set, has};
use crate::wordcmp::Literal;

/// Most nodes a pattern may have: beyond, its DFA answers.
const MAX_NODES: usize = 64;

/// A pattern's syntax tree, in the shapes kept.
#[derive(Debug)]
enum Node {
    Empty,
    /// `\A`.
    Start,
    Literal(Literal),
    /// One byte of a class.
    Class([u64; 4]),
    /// A greedy run of bytes of one class.
    Run {
        class: [u64; 4],
        min: usize,
        max: usize,
    },
    /// A greedy repetition of something that cannot match nothing.
    Repeat {
        body: Box<Node>,
        min: usize,
        max: usize,
    },
    Concat(Vec<Node>),
    /// Branches, each with the bytes it can begin with (`None`: it can
    /// match nothing), so that those that cannot are passed over at once.
    Choice(Vec<(Option<[u64; 4]>, Node)>),
}

/// What can come after a piece: the bytes it can begin with, and whether
/// it can be nothing.
#[derive(Clone, Copy)]
struct Follow {
    first: [u64; 4],
    empty: bool,
}

const ANY: [u64; 4] = [u64::MAX; 4];

fn disjoint(a: &[u64; 4], b: &[u64; 4]) -> bool {
    a.iter().zip(b).all(|(x, y)| x & y == 0)
}

fn union(a: &[u64; 4], b: &[u64; 4]) -> [u64; 4] {
    [a[0] | b[0], a[1] | b[1], a[2] | b[2], a[3] | b[3]]
}

impl Node {
    /// The bytes a match can begin with, and whether it can be empty.
    fn follow(&self) -> Follow {
        match self {
            Node::Empty | Node::Start => Follow {
                first: [0; 4],
                empty: true,
            },
            Node::Literal(lit) => {
                let b = lit.bytes()[0];
                let mut first = [0; 4];
                first[usize::from(b >> 6)] |= 1 << (b & 63);
                Follow {
                    first,
                    empty: false,
                }
            }
            Node::Class(c) => Follow {
                first: *c,
                empty: false,
            },
            Node::Run { class, min, .. } => Follow {
                first: *class,
                empty: *min == 0,
            },
            Node::Repeat { body, min, .. } => Follow {
                first: body.follow().first,
                empty: *min == 0,
            },
            Node::Concat(parts) => then_all(
                parts,
                Follow {
                    first: [0; 4],
                    empty: true,
                },
            ),
            Node::Choice(branches) => branches.iter().map(|(_, b)| b).fold(
                Follow {
                    first: [0; 4],
                    empty: false,
                },
                |acc, b| {
                    let f = b.follow();
                    Follow {
                        first: union(&acc.first, &f.first),
                        empty: acc.empty || f.empty,
                    }
                },
            ),
        }
    }

    /// Whether the piece's first way can be told without a search when
    /// `after` can follow it (see the module docs).
    fn one_way(&self, after: Follow) -> bool {
        match self {
            Node::Empty | Node::Start | Node::Literal(_) | Node::Class(_) => true,
            Node::Run { class, .. } => after.empty || disjoint(class, &after.first),
            Node::Choice(branches) => {
                let branches: Vec<&Node> = branches.iter().map(|(_, b)| b).collect();
                let alone = after.empty
                    || branches.iter().enumerate().all(|(i, a)| {
                        let fa = a.follow();
                        !fa.empty
                            && branches[i + 1..].iter().all(|b| {
                                let fb = b.follow();
                                !fb.empty && disjoint(&fa.first, &fb.first)
                            })
                    });
                alone && branches.iter().all(|b| b.one_way(after))
            }
            Node::Repeat { body, min, .. } => {
                let round = body.follow();
                // After a round: another, or what follows the repetition
                // (only once the least rounds are done).
                let next = Follow {
                    first: union(&round.first, &after.first),
                    empty: after.empty && *min == 0,
                };
                (after.empty || disjoint(&round.first, &after.first)) && body.one_way(next)
            }
            Node::Concat(parts) => {
                (0..parts.len()).all(|i| parts[i].one_way(then_all(&parts[i + 1..], after)))
            }
        }
    }

    /// Where the piece's way from `at` ends in `hay`, if it matches.
    #[inline(never)]
    fn end(&self, hay: &[u8], at: usize) -> Option<usize> {
        match self {
            Node::Empty => Some(at),
            Node::Start => (at == 0).then_some(at),
            Node::Literal(lit) => lit.end(hay, at),
            Node::Class(c) => hay.get(at).is_some_and(|&b| has(c, b)).then_some(at + 1),
            Node::Run { class, min, max } => {
                let room = hay[at..]
                    .iter()
                    .take(*max)
                    .position(|&b| !has(class, b))
                    .unwrap_or((hay.len() - at).min(*max));
                (room >= *min).then_some(at + room)
            }
            Node::Repeat { body, min, max } => {
                let (mut e, mut rounds) = (at, 0);
                while rounds < *max {
                    match body.end(hay, e) {
                        Some(next) => e = next,
                        None => break,
                    }
                    rounds += 1;
                }
                (rounds >= *min).then_some(e)
            }
            Node::Concat(parts) => parts.iter().try_fold(at, |e, p| p.end(hay, e)),
            Node::Choice(branches) => {
                let next = hay.get(at).copied();
                branches
                    .iter()
                    .filter(|(first, _)| match (first, next) {
                        (None, _) => true,
                        (Some(f), Some(b)) => has(f, b),
                        (Some(_), None) => false,
                    })
                    .find_map(|(_, b)| b.end(hay, at))
            }
        }
    }
}

/// What can follow a piece that `parts` follow, then `after`.
fn then_all(parts: &[Node], after: Follow) -> Follow {
    let mut first = [0; 4];
    for p in parts {
        let f = p.follow();
        first = union(&first, &f.first);
        if !f.empty {
            return Follow {
                first,
                empty: false,
            };
        }
    }
    Follow {
        first: union(&first, &after.first),
        empty: after.empty,
    }
}

/// Patterns searched in order, anchored, each read from the left without a
/// search.
#[derive(Debug)]
pub(crate) struct FirstWay {
    patterns: Vec<Node>,
}

impl FirstWay {
    /// `hirs` as trees to read, or `None` if one is not of a shape whose
    /// first way its pieces tell alone (see the module docs).
    pub(crate) fn new(hirs: &[Hir]) -> Option<FirstWay> {
        let mut nodes = 0;
        let patterns = hirs
            .iter()
            .map(|h| node(h, &mut nodes))
            .collect::<Option<Vec<_>>>()?;
        // After the pattern, anything: its first way is wanted, wherever
        // it ends.
        let end = Follow {
            first: ANY,
            empty: true,
        };
        patterns
            .iter()
            .all(|p| p.one_way(end))
            .then_some(FirstWay { patterns })
    }

    /// The first pattern that matches `hay` from `at`, reading no byte at
    /// or after `end`, and where its first way ends.
    pub(crate) fn first_end(&self, hay: &[u8], at: usize, end: usize) -> Option<(usize, usize)> {
        let hay = &hay[..end];
        self.patterns
            .iter()
            .enumerate()
            .find_map(|(k, p)| Some((k, p.end(hay, at)?)))
    }
}

/// `hir` as a tree, counting its nodes in `nodes`.
fn node(hir: &Hir, nodes: &mut usize) -> Option<Node> {
    *nodes += 1;
    if *nodes > MAX_NODES {
        return None;
    }
    Some(match hir.kind() {
        HirKind::Empty => Node::Empty,
        HirKind::Look(Look::Start) => Node::Start,
        HirKind::Look(_) => return None,
        HirKind::Literal(lit) => Node::Literal(Literal::new(&lit.0)),
        HirKind::Class(_) => Node::Class(byte_set(hir)?),
        HirKind::Capture(c) => node(&c.sub, nodes)?,
        HirKind::Repetition(r) => {
            if !r.greedy {
                return None;
            }
            let (min, max) = (r.min as usize, r.max.map_or(usize::MAX, |m| m as usize));
            match node(&r.sub, nodes)? {
                Node::Class(class) => Node::Run { class, min, max },
                Node::Literal(lit) if lit.bytes().len() == 1 => Node::Run {
                    class: byte_set(&r.sub)?,
                    min,
                    max,
                },
                body if r.sub.properties().minimum_len().is_some_and(|n| n > 0) => Node::Repeat {
                    body: Box::new(body),
                    min,
                    max,
                },
                _ => return None,
            }
        }
        HirKind::Concat(subs) => {
            Node::Concat(subs.iter().map(|s| node(s, nodes)).collect::<Option<_>>()?)
        }
        HirKind::Alternation(subs) => Node::Choice(
            subs.iter()
                .map(|s| {
                    let b = node(s, nodes)?;
                    let f = b.follow();
                    Some(((!f.empty).then_some(f.first), b))
                })
                .collect::<Option<_>>()?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dfa::parse;
    use regex_automata::hybrid::dfa::DFA;
    use regex_automata::nfa::thompson;
    use regex_automata::{Anchored, Input, MatchKind};

    /// The DFA's answer: the first of `hirs` to match `hay[at..end]`
    /// anchored, leftmost-first, and where.
    fn by_dfa(hirs: &[Hir], hay: &[u8], at: usize, end: usize) -> Option<(usize, usize)> {
        let nfa = thompson::Compiler::new()
            .configure(crate::dfa::nfa_config(false))
            .build_many_from_hir(hirs)
            .unwrap();
        let dfa = DFA::builder()
            .configure(DFA::config().match_kind(MatchKind::LeftmostFirst))
            .build_from_nfa(nfa)
            .unwrap();
        let input = Input::new(&hay[..end]).range(at..).anchored(Anchored::Yes);
        dfa.try_search_fwd(&mut dfa.create_cache(), &input)
            .unwrap()
            .map(|m| (m.pattern().as_usize(), m.offset()))
    }

    /// Every pattern kept finds what its DFA finds, at every place of
    /// texts made of the bytes the patterns read.
    #[test]
    fn first_ways_are_the_dfas() {
        let sets: &[&[&str]] = &[
            &[r"(?: (?:port \d+|on \S+)){0,2}(?: ssh\d*)?"],
            &[r"(?: (?:port \d+|on \S+|\[preauth\])){0,3}\s*"],
            &[r"(?:(?: (?:port \d+|on \S+|\[preauth\])){0,3}\s*)|\s*"],
            &[r"(?: (?:port \d+)){0,2}:\s*11:"],
            &[r"(?:Connection (?:closed|reset))", r"Disconnected"],
            &[r" (?:by|from)"],
            &[r" (?:invalid|authenticating) user "],
            &[r"\A[Ii](?:llegal|nvalid) user "],
            &[r"pam_[a-z]+\(sshd:auth\):\s+authentication failure;"],
            &[r"Accepted \w+"],
            &[r"(?:ab){2,3}x?", r"(?:ab)*"],
            &[r"x{2,4}"],
            &[r"(?:a|ab)"],
            &[r"(publickey)|\S+"],
        ];
        let texts = [
            " port 22 ssh2",
            " port 22 on eth0 ssh2: x",
            " on eth0 port 22 port 23",
            " port ssh2",
            " port 22 [preauth]  ",
            " port 22: 11: x",
            " port 22:11:",
            "Connection closed by x",
            "Connection reset",
            "Disconnected from",
            " by x",
            " from",
            " invalid user x",
            " authenticating user ",
            "Illegal user x",
            "invalid user",
            "pam_unix(sshd:auth): \tauthentication failure; x",
            "pam_(sshd:auth): authentication failure;",
            "Accepted publickey for",
            "ababababx",
            "abax",
            "xxxxxyx",
            "abc",
            "publickey x",
            "",
        ];
        for set in sets {
            let hirs: Vec<Hir> = set.iter().map(|p| parse(p).unwrap()).collect();
            let fw = FirstWay::new(&hirs).expect(set[0]);
            for text in texts {
                let hay = text.as_bytes();
                for at in 0..=hay.len() {
                    for end in [hay.len(), (at + 5).min(hay.len())] {
                        assert_eq!(
                            fw.first_end(hay, at, end),
                            by_dfa(&hirs, hay, at, end),
                            "{set:?} {text:?} {at} {end}"
                        );
                    }
                }
            }
        }
    }

    /// Crafted lines of 60 KiB, a run or a repetition as long as the line
    /// and cut short at its end, are read once and answered as the DFA
    /// answers: no piece is tried again however long the line.
    #[test]
    fn crafted_lines_are_read_once() {
        let sets: &[&[&str]] = &[
            &[r"(?: (?:port \d+|on \S+)){0,2}(?: ssh\d*)?"],
            &[r"(?: (?:port \d+|on \S+|\[preauth\])){0,3}\s*"],
            &[r"pam_[a-z]+\(sshd:auth\):\s+authentication failure;"],
            &[r"(?:ab){2,}x"],
        ];
        let texts = [
            format!(" port {}", "1".repeat(60_000)),
            format!(" on {} ssh2", "x".repeat(60_000)),
            format!(" port 1{}", " port 1".repeat(9_000)),
            " ".repeat(60_000),
            format!(
                "pam_{}(sshd:auth):{}x",
                "u".repeat(30_000),
                " ".repeat(30_000)
            ),
            format!("{}a", "ab".repeat(30_000)),
        ];
        for set in sets {
            let hirs: Vec<Hir> = set.iter().map(|p| parse(p).unwrap()).collect();
            let fw = FirstWay::new(&hirs).expect(set[0]);
            for text in &texts {
                let hay = text.as_bytes();
                assert_eq!(
                    fw.first_end(hay, 0, hay.len()),
                    by_dfa(&hirs, hay, 0, hay.len()),
                    "{set:?}"
                );
            }
        }
    }

    /// Patterns drawn at random from literals, classes, runs, choices and
    /// repetitions of a few bytes: each one kept answers as its DFA does on
    /// texts of those bytes, and enough are kept to tell.
    #[test]
    fn random_patterns_kept_answer_as_their_dfas() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        fn piece(next: &mut dyn FnMut(u64) -> u64, depth: u32) -> String {
            let atoms = ["a", "b", "ab", " ", "[ab]", "[^ ]", r"\d", "ba"];
            let atom = atoms[next(atoms.len() as u64) as usize].to_string();
            if depth == 0 {
                return atom;
            }
            match next(6) {
                0 => format!("{}{}", piece(next, depth - 1), piece(next, depth - 1)),
                1 => format!("(?:{}|{})", piece(next, depth - 1), piece(next, depth - 1)),
                2 => format!("(?:{})*", piece(next, depth - 1)),
                3 => format!("(?:{})?", piece(next, depth - 1)),
                4 => format!("(?:{}){{1,2}}", piece(next, depth - 1)),
                _ => format!("{atom}+"),
            }
        }
        let texts: Vec<String> = (0..40)
            .map(|_| {
                (0..next(9))
                    .map(|_| ["a", "b", " ", "1", "x"][next(5) as usize])
                    .collect()
            })
            .collect();
        let mut kept = 0;
        for _ in 0..1500 {
            let p = piece(&mut next, 3);
            let Some(hir) = parse(&p) else { continue };
            let hirs = [hir];
            let Some(fw) = FirstWay::new(&hirs) else {
                continue;
            };
            kept += 1;
            for text in &texts {
                let hay = text.as_bytes();
                for at in 0..=hay.len() {
                    assert_eq!(
                        fw.first_end(hay, at, hay.len()),
                        by_dfa(&hirs, hay, at, hay.len()),
                        "{p} {text:?} {at}"
                    );
                }
            }
        }
        assert!(kept > 150, "{kept}");
    }

    /// What a piece's first way alone cannot tell is left to the DFA:
    /// a run whose bytes what follows could begin with, choices whose
    /// branches begin alike before more text, repetitions a later piece
    /// could take part of, and shapes not kept at all.
    #[test]
    fn what_one_way_cannot_tell_is_left_to_the_dfa() {
        for p in [
            r"\S+ from",
            r"(?:a|ab)c",
            r"(?:ab)*a",
            r"(?:\s+(?:(?:logname|e?uid|tty)=\S*)){0,4}\s+ruser=",
            r"(?: (?:port \d+|on \S+)){0,2}:\s*11:",
            r"a*?b",
            r"\bx",
            r"x$",
            r"(?:a?)*",
            r"(?u:\w)",
        ] {
            let hir = regex_syntax::ParserBuilder::new()
                .utf8(false)
                .build()
                .parse(p)
                .unwrap();
            assert!(FirstWay::new(&[hir]).is_none(), "{p}");
        }
    }
}
