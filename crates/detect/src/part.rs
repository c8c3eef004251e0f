//! A part of a pattern searched alone: its groups numbered for the
//! search, where they sit when that is a fixed distance from the part's
//! ends, and the bounded backtracker that finds them otherwise. Both ways
//! of placing parts (`split.rs` from the end, `walk.rs` from the start)
//! find groups inside a placed part with these.

use std::sync::LazyLock;

use regex_automata::util::captures::Captures;
use regex_syntax::hir::{Capture, Hir, HirKind, Look, Repetition};

use crate::backtrack::Backtrack;
use crate::dfa;
use crate::host::{HostGroup, f2b_host, f2b_host_group};
use crate::linear::Spans;

/// A part alone, its groups numbered from 1, with the pattern's group
/// index of each of them (its group `n` is `map[n - 1]`); searched
/// anchored at the part's start by a bounded backtracker: the part is
/// small and its place a few bytes, where the `regex` crate's usual way
/// (a DFA search for the match, then the backtracker over it) costs half
/// as much again.
pub(crate) struct PartRe {
    re: Backtrack,
    map: Vec<usize>,
    /// Whether the part is fail2ban's `<HOST>` followed by `\z`: then
    /// which of its groups the address fills is mostly plain from its
    /// bytes (see [`f2b_host_group`]).
    host: bool,
}

impl PartRe {
    /// `part` alone, followed by `\z` if `to_end`.
    pub(crate) fn new(part: &Hir, to_end: bool) -> Option<PartRe> {
        // Compared without names: a part rewritten from a conditional has
        // its groups numbered only.
        static HOST: LazyLock<Option<Hir>> = LazyLock::new(|| {
            Some(unnamed(&renumber(
                &dfa::parse(&f2b_host())?,
                &mut Vec::new(),
            )))
        });
        let mut map = Vec::new();
        let mut numbered = renumber(part, &mut map);
        let host = to_end && HOST.as_ref() == Some(&unnamed(&numbered));
        if to_end {
            numbered = Hir::concat(vec![numbered, Hir::look(Look::End)]);
        }
        Some(PartRe {
            re: Backtrack::new(std::slice::from_ref(&numbered))?,
            map,
            host,
        })
    }

    /// Whether the part is fail2ban's `<HOST>` (see [`PartRe::captures`]).
    pub(crate) fn is_host(&self) -> bool {
        self.host
    }

    /// Sets in `spans` the groups of fail2ban's `<HOST>` (a part that
    /// [`is_host`](Self::is_host)) whose address, held by `group`, is at
    /// `addr`: the other groups take no part.
    pub(crate) fn place_host(&self, group: HostGroup, addr: (usize, usize), spans: &mut Spans) {
        // `ip4`, `ip6`, `dns`.
        let holds = [group == HostGroup::Ip4, group == HostGroup::Ip6, false];
        for (&g, holds) in self.map.iter().zip(holds) {
            spans[g] = holds.then_some(addr);
        }
    }

    /// Sets in `spans` the groups of the part's first match in `hay[..end]`
    /// that starts at `i`, and returns where that match ends; `None` if
    /// there is none or the place is too long for the backtracker.
    pub(crate) fn captures(
        &mut self,
        hay: &[u8],
        i: usize,
        end: usize,
        spans: &mut Spans,
    ) -> Option<usize> {
        if self.host
            && let Some(group) = f2b_host_group(&hay[i..end], false)
        {
            // The whole place is the address's group.
            self.place_host(group, (i, end), spans);
            return Some(end);
        }
        let caps = self.re.captures(&hay[..end], i..end, 0)?;
        spread(caps, &self.map, spans);
        caps.get_match().map(|m| m.end())
    }
}

/// Where each group of `part` sits in any text `part` matches, when that
/// is a fixed number of bytes from the text's start and from its end (see
/// `split.rs`): as in `(?P<nofail>Received (?P<mlfforget>disconnect))`.
pub(crate) fn fixed_layout(part: &Hir) -> Option<Vec<(usize, usize, usize)>> {
    fn fixed_len(h: &Hir) -> Option<usize> {
        let p = h.properties();
        p.maximum_len().filter(|&max| Some(max) == p.minimum_len())
    }
    fn place(
        h: &Hir,
        from_start: usize,
        to_end: usize,
        out: &mut Vec<(usize, usize, usize)>,
    ) -> Option<()> {
        match h.kind() {
            _ if h.properties().explicit_captures_len() == 0 => Some(()),
            HirKind::Capture(c) => {
                out.push((c.index as usize, from_start, to_end));
                place(&c.sub, from_start, to_end, out)
            }
            HirKind::Concat(subs) => {
                for (k, sub) in subs.iter().enumerate() {
                    if sub.properties().explicit_captures_len() == 0 {
                        continue;
                    }
                    let before = subs[..k].iter().map(fixed_len).sum::<Option<usize>>()?;
                    let after = subs[k + 1..].iter().map(fixed_len).sum::<Option<usize>>()?;
                    place(sub, from_start + before, to_end + after, out)?;
                }
                Some(())
            }
            _ => None,
        }
    }
    let mut out = Vec::new();
    place(part, 0, 0, &mut out)?;
    Some(out)
}

/// Sets in `spans` the groups of a part placed at `i..j` whose groups sit
/// at fixed distances from its ends (`layout`, from [`fixed_layout`]);
/// `None` if the place is too short for them (a place the part matches
/// never is).
pub(crate) fn place_fixed(
    layout: &[(usize, usize, usize)],
    i: usize,
    j: usize,
    spans: &mut Spans,
) -> Option<()> {
    for &(g, from_start, to_end) in layout {
        let (s, e) = (i.checked_add(from_start)?, j.checked_sub(to_end)?);
        if s > e {
            return None;
        }
        spans[g] = Some((s, e));
    }
    Some(())
}

/// Sets in `spans` (the pattern's groups) those of a match of a part
/// [`renumber`]ed with `map`.
pub(crate) fn spread(caps: &Captures, map: &[usize], spans: &mut Spans) {
    for (n, &g) in map.iter().enumerate() {
        spans[g] = caps.get_group(n + 1).map(|s| (s.start, s.end));
    }
}

/// `hir` with its groups numbered from 1 in order, the pattern's index of
/// each pushed onto `map`.
pub(crate) fn renumber(hir: &Hir, map: &mut Vec<usize>) -> Hir {
    map_groups(hir, &mut |c| {
        map.push(c.index as usize);
        (map.len() as u32, c.name.clone())
    })
}

/// `hir` without the names of its groups: what it matches and where its
/// groups lie, whatever a translation named them.
fn unnamed(hir: &Hir) -> Hir {
    map_groups(hir, &mut |c| (c.index, None))
}

/// `hir` with each group given the index and name `f` gives it (outer
/// groups first).
fn map_groups(hir: &Hir, f: &mut impl FnMut(&Capture) -> (u32, Option<Box<str>>)) -> Hir {
    match hir.kind() {
        HirKind::Capture(c) => {
            let (index, name) = f(c);
            Hir::capture(Capture {
                index,
                name,
                sub: Box::new(map_groups(&c.sub, f)),
            })
        }
        HirKind::Repetition(r) => Hir::repetition(Repetition {
            sub: Box::new(map_groups(&r.sub, f)),
            ..r.clone()
        }),
        HirKind::Concat(subs) => Hir::concat(subs.iter().map(|s| map_groups(s, f)).collect()),
        HirKind::Alternation(subs) => {
            Hir::alternation(subs.iter().map(|s| map_groups(s, f)).collect())
        }
        _ => hir.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// fail2ban's `<HOST>` is known by what it matches and where its groups
    /// lie, with its groups named or only numbered (as a conditional's
    /// rewriting leaves them), and nothing else is taken for it.
    #[test]
    fn the_host_is_known_without_its_names() {
        let named = dfa::parse(&f2b_host()).unwrap();
        assert!(PartRe::new(&named, true).unwrap().is_host());
        assert!(PartRe::new(&unnamed(&named), true).unwrap().is_host());
        let numbered_only = dfa::parse(
            &f2b_host()
                .replace("?P<ip4>", "")
                .replace("?P<ip6>", "")
                .replace("?P<dns>", ""),
        )
        .unwrap();
        assert!(PartRe::new(&numbered_only, true).unwrap().is_host());
        // Not followed by the end of its place, or another shape.
        assert!(!PartRe::new(&named, false).unwrap().is_host());
        let other = dfa::parse(&f2b_host().replace(r"\w)", r"\w+)")).unwrap();
        assert!(!PartRe::new(&other, true).unwrap().is_host());
    }
}
