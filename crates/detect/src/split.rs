//! The groups of a match found with DFAs instead of a backtracking search.
//!
//! Finding where each group of a match lies takes the `regex` crate a
//! bounded backtracking search over the match, which on a log line costs
//! several times the DFA search that found the match (fail2ban's `<HOST>`
//! alone is an alternation of three address forms). Most fail2ban
//! failregexes are a sequence whose groups sit in a few of its top-level
//! parts: `^... client: <HOST>, server: ...` has one such part, the host.
//!
//! For such a pattern, given the end of its match (one forward DFA search),
//! each part holding groups is placed as the engine's `HostSplit` places a
//! rule's host: with reverse DFAs of what comes before it, of it, and of
//! what comes after. When every such part has exactly one place, that is
//! the place any regex engine reports, and the groups inside the part are
//! found by the part alone, anchored at both ends of its place: a search
//! over a few bytes of a small pattern. Anything less certain (two places,
//! an empty part, a DFA that gives up) answers [`Found::Unsure`], and the
//! caller asks the `regex` crate.
//!
//! A part that is one group with none inside needs no search: its place is
//! the group. Nor does a part whose groups are reached through sequences
//! whose other members each match a fixed number of bytes
//! (`(?P<nofail>Received (?P<mlfforget>disconnect))`): in every way the
//! part matches its place, each group starts and ends the same number of
//! bytes from the place's ends. For the others, why the part alone finds
//! the same groups:
//! with every group-holding part's place fixed, the parts match
//! independently of each other (no back references; such a part with
//! look-around assertions is not split, since cutting the text at its end
//! would change what they see), and the leftmost-first choice within a part
//! is its highest-priority way of matching exactly its place, which is what
//! a search of the part anchored at both ends of that place returns.
//!
//! The parts are placed last first: a part's place is the same in every
//! way the pattern matches, so what lies between a part and the next one
//! holding groups must fill exactly the gap up to that one's place, which
//! keeps the candidate places few (an address after a user name would
//! otherwise offer one candidate end per character).
//!
//! A part followed by something that can take part of it (dovecot's
//! `rip=<HOST>(?:[^>]*…)`: every shorter host name leaves a tail that
//! `[^>]*` takes) has several places, and which one a regex engine reports
//! is a matter of priority. Such a part, without look-around assertions, is
//! placed by the first way it matches, when what comes before it ends in
//! one place only (a forward DFA reporting every match tells): that place
//! `i` is the part's start in every way the pattern matches. A backtracking
//! search tries the part's ways of matching at `i` in priority order, and
//! for each the rest of the pattern; the first of them, which the part
//! alone searched anchored at `i` returns, is the one it reports if the
//! rest matches after it. The rest is what follows the part up to the
//! place of the next part holding groups, which is fixed, so a reverse DFA
//! of it over exactly that gap decides. If it does not match, the answer
//! is [`Found::Unsure`].

use regex_syntax::hir::{Hir, HirKind, Look};

use crate::dfa::{self, Dfas, HostSplit, RuleDfa};
use crate::linear::Spans;
use crate::part::{PartRe, fixed_layout, place_fixed};
use crate::walk::Walk;

/// A pattern whose groups are found by splitting it (see the module docs).
pub(crate) struct GroupSplit {
    walk: Option<Walk>,
    rule: RuleDfa,
    parts: Vec<Part>,
    /// Groups of the whole pattern, group 0 included.
    groups: usize,
    /// Searches so far, and how many of them were unsure (see
    /// [`gave_up`](Self::gave_up)).
    tries: u32,
    unsure: u32,
}

/// Searches after which a split that is often unsure gives up.
const TRIAL: u32 = 1024;

/// One top-level part holding groups.
struct Part {
    split: HostSplit,
    groups: PartGroups,
    /// The way to place it when the DFAs find several places, if the part
    /// has no look-around assertions.
    first: Option<FirstPath>,
}

/// A part placed by the first way it matches (see the module docs): what
/// comes before it must end in one place, the part's start.
struct FirstPath {
    /// A forward DFA of what comes before the part, reporting every match.
    before: usize,
    /// The part alone, anchored at its start only.
    re: PartRe,
}

/// How the groups inside a placed part are found.
enum PartGroups {
    /// Each group sits a fixed number of bytes after the part's start and
    /// before its end (the part is one group with none inside, or its
    /// groups are reached through sequences whose other members each
    /// match a fixed length): by group index, those two numbers.
    Fixed(Vec<(usize, usize, usize)>),
    /// The part alone, followed by `\z`.
    Alone(PartRe),
}

/// What a split search found.
#[derive(Debug, PartialEq)]
pub(crate) enum Found {
    /// The pattern does not match.
    NoMatch,
    /// The pattern matches, with the group spans set in the caller's.
    Matched,
    /// The DFAs could not tell: ask the `regex` crate.
    Unsure,
}

impl GroupSplit {
    /// Splits a translated pattern (see `pyre::translate`), if it is a
    /// sequence anchored at the start of the text whose groups sit in
    /// top-level parts without look-around assertions. The DFAs go into
    /// `dfas`, which every search must be given.
    pub(crate) fn new(dfas: &mut Dfas, translated: &str) -> Option<GroupSplit> {
        let hir = dfa::parse(translated)?;
        if !hir.properties().look_set_prefix().contains(Look::Start) {
            return None;
        }
        let groups = hir.properties().explicit_captures_len() + 1;
        let HirKind::Concat(parts) = hir.kind() else {
            return None;
        };
        let holding: Vec<usize> = (0..parts.len())
            .filter(|&k| parts[k].properties().explicit_captures_len() > 0)
            .collect();
        let mut found = Vec::new();
        for (n, &k) in holding.iter().enumerate() {
            let part = &parts[k];
            // A group with none inside: its place is the group's, and the
            // DFAs see the text around it (assertions inside are no
            // obstacle).
            let whole = match part.kind() {
                HirKind::Capture(c) if c.sub.properties().explicit_captures_len() == 0 => {
                    Some(c.index as usize)
                }
                _ => None,
            };
            if whole.is_none() && !part.properties().look_set().is_empty() {
                return None;
            }
            // What follows the part up to the next part holding groups:
            // that one is placed first (see `captures`).
            let next = holding.get(n + 1).copied().unwrap_or(parts.len());
            let split = dfas.split_at(&parts[..k], part, &parts[k + 1..next])?;
            let groups = match whole
                .map(|g| vec![(g, 0, 0)])
                .or_else(|| fixed_layout(part))
            {
                Some(layout) => PartGroups::Fixed(layout),
                None => PartGroups::Alone(PartRe::new(part, true)?),
            };
            let first = if part.properties().look_set().is_empty() {
                first_path(dfas, &parts[..k], part)
            } else {
                None
            };
            found.push(Part {
                split,
                groups,
                first,
            });
        }
        if found.is_empty() {
            return None;
        }
        let rule = dfas.rule(std::slice::from_ref(&hir))?;
        Some(GroupSplit {
            walk: Walk::new(&hir).filter(Walk::beats_placing_from_the_end),
            rule,
            parts: found,
            groups,
            tries: 0,
            unsure: 0,
        })
    }

    /// Groups of the whole pattern, group 0 included.
    pub(crate) fn groups(&self) -> usize {
        self.groups
    }

    /// Whether the split was unsure of more than a quarter of its first
    /// [`TRIAL`] searches (a pattern whose parts the text seldom places
    /// alone, such as one where `[^>]*` follows the host): each unsure
    /// search costs more than asking the `regex` crate at once.
    pub(crate) fn gave_up(&self) -> bool {
        self.tries >= TRIAL && self.unsure > self.tries / 4
    }

    /// The group spans of the pattern's match in `text` (which must be all
    /// ASCII: the DFAs read classes as ASCII), set in `spans` when
    /// [`Found::Matched`] (their room serves line after line); `end` is
    /// where the match ends, when the caller's own DFA search found that
    /// already.
    pub(crate) fn captures(
        &mut self,
        dfas: &mut Dfas,
        text: &str,
        end: Option<usize>,
        spans: &mut Spans,
    ) -> Found {
        let found = self.find(dfas, text, end, spans);
        if self.tries < TRIAL {
            self.tries += 1;
            self.unsure += u32::from(found == Found::Unsure);
        }
        found
    }

    fn find(
        &mut self,
        dfas: &mut Dfas,
        text: &str,
        end: Option<usize>,
        spans: &mut Spans,
    ) -> Found {
        let hay = text.as_bytes();
        // Checked in every test that reaches here with an end given
        // (fail2ban's sample logs through every shipped filter).
        debug_assert!(
            end.is_none_or(|e| dfas.search(&mut self.rule, hay) == Ok(Some((0, e)))),
            "the end given is where this pattern's own search ends"
        );
        // Placed from the start when the end is known and the parts allow
        // it: cheaper than the reverse DFAs below.
        if let (Some(e), Some(walk)) = (end, &mut self.walk)
            && walk.captures(hay, e, spans).is_some()
        {
            debug_assert!(
                {
                    let mut placed = Spans::new();
                    match self.placed(dfas, hay, end, &mut placed) {
                        Found::Matched => placed == *spans,
                        found => found == Found::Unsure,
                    }
                },
                "the walk finds the groups the split finds in {text:?}"
            );
            return Found::Matched;
        }
        self.placed(dfas, hay, end, spans)
    }

    /// [`find`](Self::find) by the reverse DFAs (see the module docs).
    fn placed(
        &mut self,
        dfas: &mut Dfas,
        hay: &[u8],
        end: Option<usize>,
        spans: &mut Spans,
    ) -> Found {
        let end = match end.map_or_else(|| dfas.search(&mut self.rule, hay), |e| Ok(Some((0, e)))) {
            Ok(Some((_, end))) => end,
            Ok(None) => return Found::NoMatch,
            Err(()) => return Found::Unsure,
        };
        spans.clear();
        spans.resize(self.groups, None);
        spans[0] = Some((0, end));
        // The last part first (see the module docs).
        let mut next = end;
        for part in self.parts.iter_mut().rev() {
            let Some((i, j)) = dfas.host(&part.split, hay, next) else {
                let Some(i) = part
                    .first
                    .as_mut()
                    .and_then(|f| f.place(dfas, &part.split, hay, next, spans))
                else {
                    return Found::Unsure;
                };
                next = i;
                continue;
            };
            next = i;
            match &mut part.groups {
                PartGroups::Fixed(layout) => {
                    if place_fixed(layout, i, j, spans).is_none() {
                        return Found::Unsure;
                    }
                }
                PartGroups::Alone(re) => {
                    if re.captures(hay, i, j, spans).is_none() {
                        return Found::Unsure;
                    }
                }
            }
        }
        Found::Matched
    }
}

/// The first-path placing of `part`, which follows `before`, if its DFA
/// and regex can be built.
fn first_path(dfas: &mut Dfas, before: &[Hir], part: &Hir) -> Option<FirstPath> {
    let before = dfas.forward_all(&Hir::concat(before.to_vec()))?;
    Some(FirstPath {
        before,
        re: PartRe::new(part, false)?,
    })
}

impl FirstPath {
    /// Places the part in a match whose rest after the part starts at
    /// `next`, by the first way the part matches at its only start, and
    /// sets its groups in `spans`; the part's start, or `None` if that way
    /// does not hold (see the module docs).
    fn place(
        &mut self,
        dfas: &mut Dfas,
        split: &HostSplit,
        hay: &[u8],
        next: usize,
        spans: &mut Spans,
    ) -> Option<usize> {
        let i = dfas.only_end(self.before, hay, next)?;
        // Where the way does not hold, the caller drops `spans`.
        let j = self.re.captures(hay, i, next, spans)?;
        dfas.after_matches(split, hay, j, next)?.then_some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pattern's split and the `regex` crate's form of it.
    struct Both {
        dfas: Dfas,
        split: GroupSplit,
        re: regex::bytes::Regex,
    }

    fn both(p: &str) -> Both {
        let mut dfas = Dfas::default();
        let split = GroupSplit::new(&mut dfas, p).expect("splits");
        let re = regex::bytes::RegexBuilder::new(p)
            .unicode(false)
            .build()
            .unwrap();
        Both { dfas, split, re }
    }

    impl Both {
        /// The split's answer on `line`, checked against the `regex`
        /// crate's groups when it is sure.
        fn agreed(&mut self, line: &str) -> Found {
            let mut spans = Spans::new();
            let found = self.split.captures(&mut self.dfas, line, None, &mut spans);
            let want = self.re.captures(line.as_bytes()).map(|c| {
                c.iter()
                    .map(|m| m.map(|m| (m.start(), m.end())))
                    .collect::<Spans>()
            });
            match (&found, want) {
                (Found::Matched, Some(want)) => assert_eq!(spans, want, "on {line:?}"),
                (Found::NoMatch, None) | (Found::Unsure, _) => {}
                (got, want) => panic!("on {line:?}: {got:?}, the regex crate {want:?}"),
            }
            found
        }
    }

    /// fail2ban's `<HOST>`, as its filters are translated.
    const HOST: &str = r"(?:\[?(?:(?:::f{4,6}:)?(?P<ip4>(?:\d{1,3}\.){3}\d{1,3})|(?P<ip6>(?:[0-9a-fA-F]{1,4}::?|::){1,7}(?:[0-9a-fA-F]{1,4}|:)))\]?|(?P<dns>[\w\-.^_]*\w))";

    #[test]
    fn the_host_is_fail2bans() {
        assert_eq!(HOST, crate::host::f2b_host());
        // Its part is known as the host, and its groups are the regex
        // crate's for every kind of host text.
        let p = format!(r"^a (?P<user>\S+) from {HOST} port \d+$");
        let mut b = both(&p);
        let hosts = b
            .split
            .parts
            .iter()
            .filter(|part| matches!(&part.groups, PartGroups::Alone(re) if re.is_host()))
            .count();
        assert_eq!(hosts, 1);
        for host in [
            "198.51.100.7",
            "1.2.3.4",
            "999.999.999.999",
            "2001:db8::7",
            "::1",
            "::",
            "fe80::1:2:3:4:5:6",
            "1:2:3:4:5:6:7:8",
            "1:2:3:4:5:6:7:8:9",
            "::ffff:198.51.100.7",
            "[2001:db8::7]",
            "[198.51.100.7]",
            "1.2.3.4.5",
            "1.2.3",
            "host-1.example",
            "abc",
            "a:b",
            "12345::",
        ] {
            b.agreed(&format!("a u from {host} port 22"));
        }
    }

    #[test]
    fn groups_of_one_part() {
        let p = format!(
            r"^\s*\[error\] \d+#\d+: \*\d+ user (?:[^ ]+|.*?):? password mismatch, client: {HOST}, server: \S*(?:\n?\z)"
        );
        let mut b = both(&p);
        for line in [
            "[error] 1#0: *5 user git: password mismatch, client: 198.51.100.7, server: a\n",
            "[error] 1#0: *5 user git: password mismatch, client: 2001:db8::1, server: a\n",
            "[error] 1#0: *5 user git: password mismatch, client: [::ffff:198.51.100.7], server: \n",
            "[error] 1#0: *5 user git: password mismatch, client: 1.2.3.4.example, server: a\n",
            "[error] 1#0: *5 user g, client: x: password mismatch, client: host-1, server: a\n",
        ] {
            assert!(matches!(b.agreed(line), Found::Matched), "{line:?}");
        }
        assert_eq!(
            b.agreed("[error] 1#0: *5 user git: password ok, client: 1.2.3.4\n"),
            Found::NoMatch
        );
    }

    #[test]
    fn groups_of_several_parts() {
        let p = format!(
            r"^(?P<nofail>Connection closed|Disconnected) (?:by|from) (?:user (?P<user>\S+) )?{HOST} port \d+(?:\n?\z)"
        );
        let mut b = both(&p);
        for line in [
            "Disconnected from user root 198.51.100.7 port 22\n",
            "Connection closed by 2001:db8::7 port 22\n",
            "Connection closed by user user 2001:db8::7 port 22\n",
        ] {
            b.agreed(line);
        }
        assert!(matches!(
            b.agreed("Disconnected from user root 198.51.100.7 port 22\n"),
            Found::Matched
        ));
    }

    #[test]
    fn groups_at_fixed_distances_from_their_parts_ends() {
        let patterns = [
            // sshd.conf's: nested groups, and a group after a fixed text.
            format!(
                r"^(?P<mlfforget>(?P<mlfgained>Accepted \w+)) for (?P<user>\S+) from {HOST}(?:\s|$)"
            ),
            format!(
                r"^(?P<nofail>Received (?P<mlfforget>disconnect)) from {HOST}(?: port \d+)?:\s*11:"
            ),
            // A group between pieces of fixed lengths, inside another.
            r"^x (?P<a>a\d(?P<b>\w+)c{2}f) (?P<z>\S+)$".to_string(),
        ];
        for p in &patterns {
            let mut dfas = Dfas::default();
            let split = GroupSplit::new(&mut dfas, p).expect("splits");
            let fixed = split
                .parts
                .iter()
                .filter(|part| matches!(&part.groups, PartGroups::Fixed(l) if l.len() > 1))
                .count();
            assert_eq!(fixed, 1, "{p}");
        }
        let lines = [
            "Accepted publickey for git from 198.51.100.7 port 22 ssh2",
            "Accepted password for r from 2001:db8::7",
            "Accepted password for r from host-1.example ",
            "Received disconnect from 198.51.100.7 port 22:11: Bye",
            "Received disconnect from 2001:db8::7: 11: x",
            "x a1bbbccf y",
            "x a1ccccf y",
            "x a1ccf y",
            "x a1bccf",
        ];
        let mut sure = 0;
        for p in &patterns {
            let mut b = both(p);
            for line in lines {
                if matches!(b.agreed(line), Found::Matched) {
                    sure += 1;
                }
            }
        }
        assert_eq!(sure, 7);
    }

    #[test]
    fn parts_with_several_places_by_their_first_way() {
        // dovecot's failregex: every shorter host name leaves a tail that
        // `[^>]*` takes.
        let p = format!(
            r"^(?:Aborted login|Disconnected)(?:: (?:\w+\([^\):]*\) \w+|[^\(]+))* \((?:auth failed, \d+ attempts(?: in \d+ secs)?)\):(?: user=<(?P<user>[^>]*)>,)?(?: method=\S+,)? rip={HOST}(?:[^>]*(?:, session=<\S+>)?)\s*$"
        );
        let mut b = both(&p);
        for line in [
            "Disconnected (auth failed, 1 attempts in 2 secs): user=<git>, method=PLAIN, rip=198.51.100.7, lip=192.0.2.1, TLS, session=<LgDI>",
            "Aborted login (auth failed, 3 attempts): user=<>, rip=2001:db8::7, lip=2001:db8::1",
            "Aborted login: x(y) z (auth failed, 3 attempts): rip=[::ffff:198.51.100.7], session=<a>",
            "Disconnected (auth failed, 1 attempts): user=<a b>, rip=mail-1.example, lip=1",
            "Disconnected (auth failed, 1 attempts): rip=198.51.100.7.example",
            "Disconnected (auth failed, 1 attempts): rip=1.2.3.4.5.6",
        ] {
            assert!(matches!(b.agreed(line), Found::Matched), "{line:?}");
        }
        // The first `rip=` is the only place what comes before the host
        // can end; the second is taken by `[^>]*`.
        assert!(matches!(
            b.agreed("Disconnected (auth failed, 1 attempts): rip=1.2.3.4 rip=5.6.7.8"),
            Found::Matched
        ));
        assert_eq!(
            b.agreed("Disconnected (auth failed): rip=1.2.3.4"),
            Found::NoMatch
        );
    }

    /// Lines an attacker shapes so that the part's first way reads far, or
    /// what comes before it ends in many places: answered as the `regex`
    /// crate answers them (each search is a DFA's or the `regex` crate's,
    /// linear in the line).
    #[test]
    fn crafted_lines_are_answered_as_the_regex_crate_does() {
        let p = format!(r"^a(?: u=(?P<user>[^>]*)>)? h={HOST}(?:[^>]*(?:, s=<\S+>)?)\s*$");
        let mut b = both(&p);
        let n = 16 * 1024;
        for line in [
            format!("a h={}1", "1.".repeat(n)),
            format!("a h={}", "a-".repeat(n) + "b"),
            format!("a h=1.2.3.4{}", " h=".repeat(n)),
            format!("a u={} h=1.2.3.4", " h=".repeat(n)),
            format!("a h={}:1", "1:".repeat(n)),
            format!("a h=1.2.3.4{}>", ", s=<q".repeat(n)),
        ] {
            b.agreed(&line);
        }
    }

    /// Random lines over the pattern's own words, through patterns whose
    /// parts have several places: every sure answer is the `regex` crate's.
    #[test]
    fn first_ways_agree_on_random_lines() {
        // Each pattern with the starts of lines it matches.
        let patterns = [
            (
                format!(r"^a(?: u=(?P<user>[^>]*)>)? h={HOST}(?:[^>]*(?:, s=<\S+>)?)\s*$"),
                &["a h=", "a u=x> h=", "a u=> h="][..],
            ),
            (
                r"^a h=(?P<h>\w+|\w+\.\w+)[^>]*x(?P<tail>\d*)\d*$".to_string(),
                &["a h="][..],
            ),
            (
                r"^a h=(?P<h>(?:\d+\.)*\d+|\w+)(?:\.\w*)*$".to_string(),
                &["a h="][..],
            ),
            (
                r"^a (?P<x>b+|b+c)\w* (?P<y>c|cc)c*$".to_string(),
                &["a b", "a bc"][..],
            ),
            (
                r"^x (?P<a>a\d(?P<b>\w+)c{2}f) (?P<z>\S+)$".to_string(),
                &["x a1", "x a1b", "x a1bccf ", "x a1ccccf "][..],
            ),
        ];
        let words = [
            " ",
            "x",
            "b",
            "c",
            "1",
            ".",
            "2001:db8::1",
            "198.51.100.7",
            ", s=<q>",
            ":",
            "-",
            "ffff",
            "[",
            "]",
            "9",
            ">",
            "h=",
            "ccf",
        ];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut sure = 0;
        for (p, starts) in &patterns {
            let mut b = both(p);
            for _ in 0..4000 {
                let mut line = starts[(next() % starts.len() as u64) as usize].to_string();
                for _ in 0..(next() % 6) {
                    line.push_str(words[(next() % words.len() as u64) as usize]);
                }
                if matches!(b.agreed(&line), Found::Matched) {
                    sure += 1;
                }
            }
        }
        assert!(sure > 3000, "{sure} sure answers");
    }

    #[test]
    fn what_is_not_split() {
        let mut dfas = Dfas::default();
        // Not anchored at the start, a look-around inside a part whose
        // groups the part alone must find, no groups.
        for p in [
            r"user (?P<user>\S+)",
            r"^user (?:\b(?P<user>\S+)|-)",
            r"^user \S+",
        ] {
            assert!(GroupSplit::new(&mut dfas, p).is_none(), "{p}");
        }
    }

    /// Lines edited at random against the `regex` crate: whatever the split
    /// is sure of, it agrees with.
    #[test]
    fn edited_lines_agree() {
        let p = format!(
            r"^\s*\[error\] \d+#\d+: \*\d+ user (?:[^ ]+|.*?):? password mismatch, client: {HOST}, server: \S*(?:\n?\z)"
        );
        let base = "[error] 1#0: *5 user git: password mismatch, client: 198.51.100.7, server: a\n";
        let alphabet = b" :.,[]*#0123456789abcdefx-_\n";
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut b = both(&p);
        let (mut sure, mut total) = (0, 0);
        for _ in 0..5000 {
            let mut line = base.as_bytes().to_vec();
            for _ in 0..(next() % 3 + 1) {
                let at = (next() as usize) % line.len();
                let b = alphabet[(next() as usize) % alphabet.len()];
                match next() % 3 {
                    0 => line[at] = b,
                    1 => line.insert(at, b),
                    _ => {
                        line.remove(at);
                    }
                }
            }
            let line = String::from_utf8(line).unwrap();
            total += 1;
            if !matches!(b.agreed(&line), Found::Unsure) {
                sure += 1;
            }
        }
        assert!(sure * 2 > total, "sure of {sure} of {total}");
    }
}
