//! Conditionals rewritten away: the rest of the pattern is distributed over
//! the choice that decides each one.
//!
//! A conditional `(?(<g>)A|B)` matches `A` if group `g` took part in the
//! path so far and `B` if not. Neither `regex` crate engine has them, so a
//! pattern with one (sshd.conf's "Failed password" and "Failed publickey"
//! failregexes) used to run on fancy-regex's backtracking engine for every
//! line.
//!
//! Whether `g` took part is decided by one choice earlier in the pattern:
//! an optional group holding `g` (`(?P<g>invalid user )?`: taken or not),
//! or an alternation with `g` in one of its branches
//! (`(?P<user>(?P<g>\S+)|.*?)`). [`unconditional`] writes that choice as an
//! alternation of its outcomes, each followed by its own copy of the rest
//! of the sequence, in which the conditional is then known and replaced by
//! its branch:
//!
//! ```text
//! P (?P<u>(?P<g>X)|Y) R (?(<g>)A|B)  =>  P (?:(?P<u>(?P<g>X)) R A|(?P<u'>Y) R' B)
//! ```
//!
//! Why the matches are the same, groups included: the new alternation sits
//! where the choice was, so a backtracking engine tries the same paths in
//! the same order (for each path through `P`, the first outcome with every
//! path of the rest after it, then the next outcome), and the `regex`
//! crate's leftmost-first search reports the first path a backtracking
//! engine accepts. A group copied into several outcomes takes part in at
//! most one of them (they are alternatives), and its span is that copy's.
//!
//! Each decided condition doubles (or more) what follows it, so a pattern
//! whose rewritten form would be longer than [`MAX_REWRITTEN`] is left
//! as it is.
//!
//! Refused (the pattern stays on fancy-regex): a conditional inside a
//! repeated group (a group keeps its capture from an earlier repetition,
//! which the copies cannot know), a condition decided by anything other
//! than the two choices above, back references (copies would make their
//! target ambiguous), and conditionals with more than two branches.

use std::collections::HashMap;

use crate::scan::{class_end, opens_capture, quantifier};

/// The longest rewritten pattern, in bytes: sshd.conf's longest is under
/// 1 KiB; a pattern of many conditionals would otherwise grow
/// exponentially.
const MAX_REWRITTEN: usize = 64 * 1024;

/// `translated` without conditionals, and for each capturing group of the
/// result (index 1 on; index 0 is the whole match), the index of the
/// original group it copies. `None` when the pattern has no conditional or
/// one that cannot be rewritten (see the module docs).
pub(crate) fn unconditional(translated: &str) -> Option<(String, Vec<usize>)> {
    if !translated.contains("(?(") {
        return None;
    }
    let mut parser = Parser {
        p: translated,
        b: translated.as_bytes(),
        captures: 0,
        names: HashMap::new(),
    };
    let (tree, end) = parser.alternation(0, false)?;
    if end != translated.len() {
        return None;
    }
    let names = parser.names;
    let tree = resolve_names(tree, &names)?;
    let mut out = Emitter {
        text: String::with_capacity(translated.len() * 4),
        copies: vec![0],
    };
    out.alternation(&tree, &Known::new())?;
    Some((out.text, out.copies))
}

/// A parsed pattern: alternatives of sequences.
type Alternation = Vec<Vec<Node>>;

#[derive(Debug, Clone)]
enum Node {
    /// Anything that needs no understanding here (a literal, a class, an
    /// escape, `.`, an anchor, a flag setting), with its quantifier.
    Text(String),
    Group {
        /// What opens it (`(?:`, `(?=`, `(?i:`, ...); for a capturing group,
        /// empty: the emitter writes a plain `(` (copies are told apart by
        /// their index).
        open: String,
        /// The original index of a capturing group.
        capture: Option<usize>,
        body: Alternation,
        quantifier: String,
    },
    Conditional {
        group: Condition,
        yes: Vec<Node>,
        no: Vec<Node>,
        quantifier: String,
    },
}

#[derive(Debug, Clone)]
enum Condition {
    Name(String),
    Index(usize),
}

/// Which groups are known to have taken part (true) or not (false) at the
/// current place of the pattern.
type Known = HashMap<usize, bool>;

struct Parser<'a> {
    p: &'a str,
    b: &'a [u8],
    /// Capturing groups opened so far.
    captures: usize,
    names: HashMap<String, usize>,
}

impl Parser<'_> {
    /// The alternatives from `i` up to the `)` closing the enclosing group
    /// (`inner`) or the end: the tree and where it stopped.
    fn alternation(&mut self, mut i: usize, inner: bool) -> Option<(Alternation, usize)> {
        let mut alts = vec![Vec::new()];
        while i < self.b.len() {
            match self.b[i] {
                b')' if inner => return Some((alts, i)),
                b')' => return None,
                b'|' => {
                    alts.push(Vec::new());
                    i += 1;
                }
                _ => {
                    let (node, next) = self.node(i)?;
                    alts.last_mut()?.push(node);
                    i = next;
                }
            }
        }
        (!inner).then_some((alts, i))
    }

    fn node(&mut self, i: usize) -> Option<(Node, usize)> {
        let (p, b) = (self.p, self.b);
        let atom_end = match b[i] {
            b'\\' => {
                let c = p[i + 1..].chars().next()?;
                // Back references: copies would make them ambiguous.
                if c.is_ascii_digit() && c != '0' || c == 'k' {
                    return None;
                }
                let mut e = i + 1 + c.len_utf8();
                if matches!(c, 'x' | 'p' | 'P' | 'u') && b.get(e) == Some(&b'{') {
                    e = e + p[e..].find('}')? + 1;
                } else if matches!(c, 'p' | 'P') {
                    e += 1;
                }
                e
            }
            b'[' => class_end(b, i)? + 1,
            b'(' => return self.group(i),
            _ => i + p[i..].chars().next()?.len_utf8(),
        };
        let q = quantifier_len(p, atom_end);
        Some((Node::Text(p[i..atom_end + q].to_string()), atom_end + q))
    }

    fn group(&mut self, i: usize) -> Option<(Node, usize)> {
        let (p, b) = (self.p, self.b);
        let rest = &p[i..];
        if rest.starts_with("(?P=") {
            return None;
        }
        if let Some(cond) = rest.strip_prefix("(?(") {
            let close = cond.find(')')?;
            let name = cond[..close].trim_start_matches('<').trim_end_matches('>');
            let group = match name.parse::<usize>() {
                Ok(n) => Condition::Index(n),
                Err(_) => Condition::Name(name.to_string()),
            };
            let (mut alts, end) = self.alternation(i + 3 + close + 1, true)?;
            if alts.len() > 2 {
                return None;
            }
            let no = if alts.len() == 2 {
                alts.pop()?
            } else {
                Vec::new()
            };
            let yes = alts.pop()?;
            let q = quantifier_len(p, end + 1);
            return Some((
                Node::Conditional {
                    group,
                    yes,
                    no,
                    quantifier: p[end + 1..end + 1 + q].to_string(),
                },
                end + 1 + q,
            ));
        }
        let (open, capture, body_start) = if opens_capture(p, i) {
            self.captures += 1;
            let n = self.captures;
            if rest.starts_with("(?") {
                let name_start = i + if rest.starts_with("(?P<") { 4 } else { 3 };
                let name_end = name_start + p[name_start..].find('>')?;
                self.names.insert(p[name_start..name_end].to_string(), n);
                (String::new(), Some(n), name_end + 1)
            } else {
                (String::new(), Some(n), i + 1)
            }
        } else if rest.starts_with("(?") {
            // `(?:`, look-arounds, `(?>`, flags `(?i:` or `(?i)`.
            let head = ["(?:", "(?=", "(?!", "(?<=", "(?<!", "(?>"]
                .into_iter()
                .find(|h| rest.starts_with(h));
            match head {
                Some(h) => (h.to_string(), None, i + h.len()),
                None => {
                    let flags_end = i + rest.find([':', ')'])?;
                    if b[flags_end] == b')' {
                        // A flag setting for the rest of the group: text.
                        return Some((Node::Text(p[i..=flags_end].to_string()), flags_end + 1));
                    }
                    (p[i..=flags_end].to_string(), None, flags_end + 1)
                }
            }
        } else {
            return None;
        };
        let (body, end) = self.alternation(body_start, true)?;
        let q = quantifier_len(p, end + 1);
        Some((
            Node::Group {
                open,
                capture,
                body,
                quantifier: p[end + 1..end + 1 + q].to_string(),
            },
            end + 1 + q,
        ))
    }
}

/// The length of the quantifier at `i`, 0 if none.
fn quantifier_len(p: &str, i: usize) -> usize {
    quantifier(p, i).map_or(0, |q| q.len)
}

/// Conditions by name turned into group indexes.
fn resolve_names(tree: Alternation, names: &HashMap<String, usize>) -> Option<Alternation> {
    tree.into_iter()
        .map(|seq| resolve_seq(seq, names))
        .collect()
}

fn resolve_seq(seq: Vec<Node>, names: &HashMap<String, usize>) -> Option<Vec<Node>> {
    seq.into_iter()
        .map(|node| {
            Some(match node {
                Node::Text(t) => Node::Text(t),
                Node::Group {
                    open,
                    capture,
                    body,
                    quantifier,
                } => Node::Group {
                    open,
                    capture,
                    body: resolve_names(body, names)?,
                    quantifier,
                },
                Node::Conditional {
                    group,
                    yes,
                    no,
                    quantifier,
                } => Node::Conditional {
                    group: match group {
                        Condition::Name(n) => Condition::Index(*names.get(&n)?),
                        i => i,
                    },
                    yes: resolve_seq(yes, names)?,
                    no: resolve_seq(no, names)?,
                    quantifier,
                },
            })
        })
        .collect()
}

/// The group a condition asks about (0, the whole match, which no
/// condition can be decided on, for a name not resolved).
fn condition(group: &Condition) -> usize {
    match group {
        Condition::Index(i) => *i,
        Condition::Name(_) => 0,
    }
}

fn repeats(quantifier: &str) -> bool {
    !quantifier.is_empty() && !quantifier.starts_with('?')
}

/// Every capturing group in `node`.
fn captures_in(node: &Node, out: &mut Vec<usize>) {
    match node {
        Node::Text(_) => {}
        Node::Group { capture, body, .. } => {
            out.extend(*capture);
            for n in body.iter().flatten() {
                captures_in(n, out);
            }
        }
        Node::Conditional { yes, no, .. } => {
            for n in yes.iter().chain(no) {
                captures_in(n, out);
            }
        }
    }
}

/// The groups that conditionals in `nodes` ask about.
fn conditions_in(nodes: &[Node], out: &mut Vec<usize>) {
    for node in nodes {
        match node {
            Node::Text(_) => {}
            Node::Group { body, .. } => {
                for seq in body {
                    conditions_in(seq, out);
                }
            }
            Node::Conditional { group, yes, no, .. } => {
                out.push(condition(group));
                conditions_in(yes, out);
                conditions_in(no, out);
            }
        }
    }
}

/// Whether `g` takes part whenever `seq` matches: it is one of its
/// unquantified groups, or in one's only alternative, and so on down.
fn always_in(seq: &[Node], g: usize) -> bool {
    seq.iter().any(|node| match node {
        Node::Group {
            capture,
            body,
            quantifier,
            ..
        } => {
            quantifier.is_empty()
                && (*capture == Some(g) || (body.len() == 1 && always_in(&body[0], g)))
        }
        _ => false,
    })
}

/// One outcome of the choice that decides a condition: the node as it is
/// when that outcome is taken, and what that tells of the groups in it.
struct Outcome {
    node: Option<Node>,
    known: Vec<(usize, bool)>,
}

/// The outcomes of `node` that decide whether `g` takes part, in the order
/// a backtracking engine tries them, or `None` if `node` is not such a
/// choice.
fn outcomes(node: &Node, g: usize) -> Option<Vec<Outcome>> {
    let Node::Group {
        open,
        capture,
        body,
        quantifier,
    } = node
    else {
        return None;
    };
    let all = |n: &Node| {
        let mut v = Vec::new();
        captures_in(n, &mut v);
        v
    };
    let wrap = |alt: Vec<Node>| Node::Group {
        open: open.clone(),
        capture: *capture,
        body: vec![alt],
        quantifier: String::new(),
    };
    // Look-arounds and atomic groups do not choose the way an ordinary
    // group does.
    if !open.is_empty() && !open.starts_with("(?:") && !open.ends_with(':') {
        return None;
    }
    // A condition on `g` inside the choice itself may come before `g`
    // (`(?:(?(<g>)x)(?P<g>a))?`), where what the outcome tells is not yet
    // true.
    let mut asked = Vec::new();
    for seq in body {
        conditions_in(seq, &mut asked);
    }
    if asked.contains(&g) {
        return None;
    }
    match quantifier.as_str() {
        "?" | "??" if body.len() == 1 && (*capture == Some(g) || always_in(&body[0], g)) => {
            let present = Outcome {
                node: Some(wrap(body[0].clone())),
                known: vec![(g, true)],
            };
            let absent = Outcome {
                node: None,
                known: all(node).into_iter().map(|c| (c, false)).collect(),
            };
            Some(if quantifier == "?" {
                vec![present, absent]
            } else {
                vec![absent, present]
            })
        }
        "" if body.len() > 1 => {
            let holding: Vec<usize> = (0..body.len())
                .filter(|&k| {
                    let mut v = Vec::new();
                    for n in &body[k] {
                        captures_in(n, &mut v);
                    }
                    v.contains(&g)
                })
                .collect();
            let &[k] = holding.as_slice() else {
                return None;
            };
            if !always_in(&body[k], g) {
                return None;
            }
            Some(
                body.iter()
                    .enumerate()
                    .map(|(n, alt)| {
                        let mut known = vec![(g, n == k)];
                        for (m, other) in body.iter().enumerate() {
                            if m != n {
                                for node in other {
                                    known.extend(all(node).into_iter().map(|c| (c, false)));
                                }
                            }
                        }
                        Outcome {
                            node: Some(wrap(alt.clone())),
                            known,
                        }
                    })
                    .collect(),
            )
        }
        "" if body.len() == 1 && body[0].len() == 1 => {
            // A group around the choice: each outcome keeps the group.
            let inner = outcomes(&body[0][0], g)?;
            Some(
                inner
                    .into_iter()
                    .map(|o| Outcome {
                        node: Some(wrap(o.node.into_iter().collect())),
                        known: o.known,
                    })
                    .collect(),
            )
        }
        _ => None,
    }
}

struct Emitter {
    text: String,
    /// For each capturing group written, the original group it copies.
    copies: Vec<usize>,
}

impl Emitter {
    fn alternation(&mut self, alts: &Alternation, known: &Known) -> Option<()> {
        for (n, seq) in alts.iter().enumerate() {
            if n > 0 {
                self.text.push('|');
            }
            self.sequence(seq, known)?;
        }
        Some(())
    }

    /// Writes `seq`, branching at the first node that decides a condition
    /// asked after it.
    fn sequence(&mut self, seq: &[Node], known: &Known) -> Option<()> {
        for d in 0..seq.len() {
            let mut asked = Vec::new();
            conditions_in(&seq[d + 1..], &mut asked);
            asked.retain(|g| !known.contains_key(g));
            let mut defined = Vec::new();
            captures_in(&seq[d], &mut defined);
            let Some(&g) = asked.iter().find(|g| defined.contains(g)) else {
                continue;
            };
            let outcomes = outcomes(&seq[d], g)?;
            for node in &seq[..d] {
                self.node(node, known)?;
            }
            self.text.push_str("(?:");
            for (n, outcome) in outcomes.iter().enumerate() {
                if n > 0 {
                    self.text.push('|');
                }
                let mut k = known.clone();
                k.extend(outcome.known.iter().copied());
                if let Some(node) = &outcome.node {
                    self.node(node, &k)?;
                }
                self.sequence(&seq[d + 1..], &k)?;
            }
            self.text.push(')');
            return Some(());
        }
        for node in seq {
            self.node(node, known)?;
        }
        Some(())
    }

    fn node(&mut self, node: &Node, known: &Known) -> Option<()> {
        if self.text.len() > MAX_REWRITTEN {
            return None;
        }
        match node {
            Node::Text(t) => self.text.push_str(t),
            Node::Group {
                open,
                capture,
                body,
                quantifier,
            } => {
                if repeats(quantifier) {
                    let mut asked = Vec::new();
                    for seq in body {
                        conditions_in(seq, &mut asked);
                    }
                    if !asked.is_empty() {
                        return None;
                    }
                }
                match capture {
                    Some(c) => {
                        self.copies.push(*c);
                        self.text.push('(');
                    }
                    None => self.text.push_str(open),
                }
                self.alternation(body, known)?;
                self.text.push(')');
                self.text.push_str(quantifier);
            }
            Node::Conditional {
                group,
                yes,
                no,
                quantifier,
            } => {
                let taken = *known.get(&condition(group))?;
                if repeats(quantifier) {
                    return None;
                }
                self.text.push_str("(?:");
                self.sequence(if taken { yes } else { no }, known)?;
                self.text.push(')');
                self.text.push_str(quantifier);
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(re: &fancy_regex::Regex, text: &str) -> Option<Vec<Option<(usize, usize)>>> {
        re.captures(text)
            .unwrap()
            .map(|c| c.iter().map(|m| m.map(|m| (m.start(), m.end()))).collect())
    }

    /// The rewritten pattern's groups, projected on the original's, equal
    /// fancy-regex's answer on the original.
    fn agree(p: &str, texts: &[&str]) {
        let (rewritten, copies) = unconditional(p).unwrap_or_else(|| panic!("{p}"));
        assert!(!rewritten.contains("(?("), "{rewritten}");
        let original = fancy_regex::Regex::new(p).unwrap();
        let linear = regex::Regex::new(&rewritten).unwrap();
        let groups = original.captures_len();
        for text in texts {
            let want = spans(&original, text);
            let got = linear.captures(text).map(|c| {
                let mut s = vec![None; groups];
                for (i, &orig) in copies.iter().enumerate() {
                    if s[orig].is_none() {
                        s[orig] = c.get(i).map(|m| (m.start(), m.end()));
                    }
                }
                s
            });
            assert_eq!(got, want, "{p} on {text:?} (as {rewritten})");
        }
    }

    #[test]
    fn conditionals_on_an_optional_group() {
        agree(
            r"^a (?P<inv>invalid )?user (?(<inv>)\d+|\w+)$",
            &[
                "a invalid user 12",
                "a user bob",
                "a invalid user bob",
                "a user 12",
                "a user ",
            ],
        );
        agree(r"^(x)??x(?(1)y|z)", &["xxy", "xz", "xxz", "xy"]);
    }

    #[test]
    fn conditionals_on_an_alternation() {
        // sshd.conf's shape: the user is one word, then ": " follows, or
        // anything up to " from ", then only the end.
        let p = r"^Failed (?P<user>(?P<word>\S+)|(?:.)*?) from (?P<host>\S+)(?: port \d+)?(?(<word>): |(?:.)*$)";
        agree(
            p,
            &[
                "Failed root from 1.2.3.4 port 22: x",
                "Failed root from 1.2.3.4 port 22",
                "Failed a b from 1.2.3.4 port 22",
                "Failed a b from 1.2.3.4: y",
                "Failed  from x",
            ],
        );
        // Two conditions, one inside the other's choice.
        let p = r"^F (?P<inv>inv )?(?P<user>(?P<word>\S+)|(?(<inv>)\d+|[^:]+)) at(?(<word>)!|\?)";
        agree(
            p,
            &[
                "F inv bob at!",
                "F inv 12 x at?",
                "F bob at!",
                "F a b at?",
                "F inv a b at?",
                "F a:b at!",
            ],
        );
    }

    #[test]
    fn what_cannot_be_rewritten_is_refused() {
        for p in [
            r"^(?:(?P<a>x)?(?(<a>)y|z))+$",        // inside a repetition
            r"^(?P<a>x)?(?(<a>)y|z|w)",            // three branches
            r"^(?P<a>x)?\1(?(<a>)y|z)",            // a back reference
            r"^(?:(?P<a>x)|y)*(?(<a>)y|z)",        // decided by a repetition
            r"^(?(<a>)y|z)(?P<a>x)",               // asked before it is decided
            r"^(?(<zz>)y|z)",                      // no such group
            r"^(?:(?(<a>)x)(?P<a>a))?(?(<a>)y|z)", // asked inside its own choice
            r"^plain",                             // nothing to do
        ] {
            assert!(unconditional(p).is_none(), "{p}");
        }
    }

    /// Attack: a filter with many conditionals, each doubling the rest of
    /// the pattern, is refused quickly instead of growing to 2^40 copies.
    #[test]
    fn an_exponential_rewrite_is_refused() {
        let n = 40;
        let mut p = String::from("^");
        for i in 1..=n {
            p.push_str(&format!("(x{i} )?"));
        }
        for i in 1..=n {
            p.push_str(&format!("(?({i})a|b)"));
        }
        let started = std::time::Instant::now();
        assert!(unconditional(&p).is_none());
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    /// Broken patterns are refused, never a panic.
    #[test]
    fn broken_patterns_are_refused() {
        for p in [
            "(?(",
            "(?(<a>",
            "(?(<a>)x",
            "(?P<a>x)(?(<a>)",
            "((?(1)a|b)",
            "(?(1)a|b))",
            "[(?(1)",
            r"\",
            "(?P<a",
            "(?(1)a|b){",
            "(?(é)a)",
        ] {
            let _ = unconditional(p);
        }
    }
}
