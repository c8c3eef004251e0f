//! External blocklists pulled over HTTP(S): maltrail's `/fail2ban` list,
//! FireHOL `.netset`/`.ipset`, Spamhaus DROP, or any list of one address or
//! network per line.
//!
//! [`pull`] fetches a feed with a conditional request (`If-None-Match`,
//! `If-Modified-Since`), reads the body as it arrives (the text is never
//! held whole: lines are parsed one by one, so memory is bounded by the
//! entries, at most `max_entries`), and keeps the result in the feed's
//! directory: the last good list (`NAME.list`, one canonical network per
//! line) and its state (`NAME.json`: validators, counts, the last error).
//! A feed that fails (unreachable, an HTTP error, too many or no usable
//! entries) leaves the last good list as it was and says why.
//!
//! [`spawn_all`] runs each feed's pulling task in the agent or the hub,
//! and [`PullNow`] asks one of them to pull at once (`palisade feed pull`
//! over the control socket).
//!
//! Applying a list is the caller's: the agent and the hub replace a feed's
//! entries with a new list in one store transaction and one kernel
//! transaction (removals and additions together), never leaving a moment
//! without them.

mod crowdsec;
mod schedule;

pub use schedule::{ApplyError, PullFailed, PullNow, PullNowError, spawn_all};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use palisade_model::{Net, NetError, Timestamp};
use serde::{Deserialize, Serialize};

/// Longest line read (longer ones are malformed and skipped).
const MAX_LINE: usize = 4096;
/// Malformed lines kept as examples in the state.
const EXAMPLES: usize = 5;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence while reading a body.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// One feed, as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct Feed {
    /// The feed's name: its files are `NAME.list` and `NAME.json`.
    pub name: String,
    /// `http://` or `https://` address of the list (a CrowdSec LAPI's base
    /// address for a CrowdSec feed).
    pub url: String,
    /// The most entries taken: a list with more is refused and the last
    /// good one kept.
    pub max_entries: usize,
    /// The most bytes read from one answer: an endless body is cut off.
    pub max_bytes: u64,
    /// The longest one pull may take: a body trickled byte by byte is cut
    /// off.
    pub deadline: Duration,
    /// Take entries in private, shared (CGNAT), unique-local and other
    /// non-public ranges (`palisade_model::guard::NON_PUBLIC`). Off by
    /// default: a third party's list naming them is wrong or hostile.
    pub allow_non_public: bool,
    /// Set for a CrowdSec Local API (`kind = "crowdsec"`): its bouncer key.
    pub crowdsec_key: Option<String>,
}

/// What is known about a feed, kept next to its last good list.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FeedState {
    /// The address the state is for: after a change of address the list
    /// is pulled without validators.
    pub url: String,
    /// The server's `ETag` for the last good list, sent back as
    /// `If-None-Match`.
    #[serde(default)]
    pub etag: Option<String>,
    /// The server's `Last-Modified` for the last good list, sent back as
    /// `If-Modified-Since`.
    #[serde(default)]
    pub last_modified: Option<String>,
    /// When the last good list was fetched.
    #[serde(default)]
    pub fetched: Option<Timestamp>,
    /// When the feed was last asked (successfully or not).
    #[serde(default)]
    pub checked: Option<Timestamp>,
    /// Entries in the last good list.
    #[serde(default)]
    pub entries: u64,
    /// Lines of the last good list that were not addresses or networks.
    #[serde(default)]
    pub malformed: u64,
    /// A few of them, with their line numbers.
    #[serde(default)]
    pub malformed_examples: Vec<String>,
    /// Why the last pull failed (the last good list was kept).
    #[serde(default)]
    pub last_error: Option<String>,
}

/// How far a pull has come (for progress bars).
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Body bytes read so far.
    pub bytes: u64,
    /// The body's length, when the server said.
    pub total: Option<u64>,
    /// Lines read so far.
    pub lines: u64,
    /// Addresses and networks taken so far.
    pub entries: u64,
}

/// A feed's list: what to ban, and the rules of the entries that name
/// their own (a CrowdSec decision's `crowdsec:<scenario>`); the others'
/// bans carry the feed's rule, [`rule`]. Plain lists name none, so a
/// million entries cost a million networks, nothing more.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct List {
    /// Sorted, each once.
    pub nets: Vec<Net>,
    /// The entries that name their own rule; most lists have none.
    pub rules: HashMap<Net, String>,
}

impl List {
    /// Number of networks in the list.
    pub fn len(&self) -> usize {
        self.nets.len()
    }

    /// True if the list has no network.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// The rule the ban of `net` carries: its own, else `feed_rule`.
    pub fn rule_of<'a>(&'a self, net: &Net, feed_rule: &'a str) -> &'a str {
        self.rules.get(net).map_or(feed_rule, String::as_str)
    }
}

impl From<Vec<Net>> for List {
    fn from(nets: Vec<Net>) -> List {
        List {
            nets,
            rules: HashMap::new(),
        }
    }
}

/// What a pull brought.
#[derive(Debug)]
pub enum Pulled {
    /// The server says the list did not change (304).
    NotModified,
    /// A new list, stored as the last good one.
    Updated {
        /// What to ban.
        entries: List,
        /// Lines that were not addresses or networks, skipped.
        malformed: u64,
        /// A few of them, with their line numbers.
        examples: Vec<String>,
    },
}

/// Why a pull failed; the last good list is kept.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The configured address is not `http://` or `https://`.
    #[error("{0:?} is not an http:// or https:// address")]
    BadUrl(String),
    /// No connection: DNS, routing, refused, TLS or a timeout.
    #[error("cannot reach {url}: {detail}")]
    Unreachable {
        /// The feed's address.
        url: String,
        /// The connection error.
        detail: String,
    },
    /// The server answered with an HTTP error.
    #[error("{url} answered {status}")]
    Status {
        /// The feed's address.
        url: String,
        /// The HTTP status.
        status: StatusCode,
    },
    /// The body stopped arriving for a minute.
    #[error("{url} went silent while sending the list")]
    Silent {
        /// The feed's address.
        url: String,
    },
    /// The body was longer than `max_bytes`.
    #[error("{url} sent more than {max} bytes; raise max_bytes if that is right")]
    TooBig {
        /// The feed's address.
        url: String,
        /// The configured `max_bytes`.
        max: u64,
    },
    /// The whole pull took longer than `timeout`.
    #[error("{url} took longer than {}s to send the list; raise timeout if that is right", .deadline.as_secs())]
    TooSlow {
        /// The feed's address.
        url: String,
        /// The configured `timeout`.
        deadline: Duration,
    },
    /// The list had more than `max_entries` entries.
    #[error("{url} has more than {max} entries; raise max_entries if that is right")]
    TooMany {
        /// The feed's address.
        url: String,
        /// The configured `max_entries`.
        max: usize,
    },
    /// The list had no usable entry (an error page, the wrong file).
    #[error("{url} sent no address or network ({malformed} malformed line(s), e.g. {example:?})")]
    Empty {
        /// The feed's address.
        url: String,
        /// Lines that were not addresses or networks.
        malformed: u64,
        /// The first of them.
        example: Option<String>,
    },
    /// The list or its state could not be written to the feed directory.
    #[error("cannot keep the list in {path}: {detail}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        detail: String,
    },
}

/// The feeds' directory inside a state directory.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("feeds")
}

/// The feed's last good list: one canonical network per line.
pub fn list_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.list"))
}

/// The feed's [`FeedState`], as JSON.
pub fn state_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.json"))
}

/// The feed's state, or a fresh one.
pub fn state(dir: &Path, name: &str) -> FeedState {
    std::fs::read(state_path(dir, name))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The last good list, if there is one. Each line is a canonical network,
/// then, for entries with a rule of their own, a space and the rule (kept
/// clean of control characters when written, so it is one line).
pub fn last_good(dir: &Path, name: &str) -> Option<List> {
    let text = std::fs::read_to_string(list_path(dir, name)).ok()?;
    let mut list = List::default();
    for line in text.lines() {
        let (net, rule) = match line.split_once(' ') {
            Some((net, rule)) => (net, Some(rule)),
            None => (line, None),
        };
        let Ok(net) = net.parse() else { continue };
        list.nets.push(net);
        if let Some(rule) = rule {
            list.rules.insert(net, rule.to_string());
        }
    }
    Some(list)
}

/// A list as [`last_good`] reads it back.
fn list_text(list: &List) -> String {
    let mut text = String::with_capacity(list.len() * 16);
    for net in &list.nets {
        text.push_str(&net.to_string());
        if let Some(rule) = list.rules.get(net) {
            text.push(' ');
            text.push_str(rule);
        }
        text.push('\n');
    }
    text
}

/// Records a failure in the feed's state (its last good list stays).
pub fn record_error(dir: &Path, feed: &Feed, error: &str) {
    let mut s = state(dir, &feed.name);
    s.url = feed.url.clone();
    s.checked = Some(Timestamp::now());
    s.last_error = Some(error.to_string());
    let _ = write_atomic(
        &state_path(dir, &feed.name),
        &serde_json::to_vec_pretty(&s).expect("state serializes"),
    );
}

/// One line of a list: the address or network it names, `Ok(None)` for a
/// blank or comment line, `Err` for anything else. Comments start with `#`
/// or `;` (Spamhaus), anywhere on the line; text after the first field is
/// ignored.
pub fn parse_line(line: &str) -> Result<Option<Net>, NetError> {
    let content = line.split(['#', ';']).next().unwrap_or_default().trim();
    let Some(field) = content.split_whitespace().next() else {
        return Ok(None);
    };
    field.parse::<Net>().map(Some)
}

/// Why a line of a list was skipped.
#[derive(Debug, thiserror::Error)]
enum LineError {
    #[error("the line is too long")]
    TooLong,
    #[error("not text")]
    NotText,
    #[error(transparent)]
    Address(#[from] NetError),
    #[error(transparent)]
    Refused(#[from] FeedEntryError),
}

/// Refuses an entry in a non-public range unless the feed allows them.
pub fn check_entry(net: &Net, allow_non_public: bool) -> Result<(), FeedEntryError> {
    match palisade_model::guard::non_public(net) {
        Some((range, why)) if !allow_non_public => Err(FeedEntryError::NonPublic {
            net: *net,
            range,
            why,
        }),
        _ => Ok(()),
    }
}

/// Why a feed's entry was refused (and skipped, counted with the lines
/// that are not addresses).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedEntryError {
    /// The entry overlaps a range that is not the public internet, and
    /// the feed does not allow those.
    #[error(
        "{net} is in {range} ({why}), not the public internet; set allow_non_public = true on the feed to take such entries"
    )]
    NonPublic {
        /// The entry.
        net: Net,
        /// The non-public range it overlaps.
        range: Net,
        /// What that range is for.
        why: &'static str,
    },
}

/// Pulls `feed` into `dir`: a conditional request when a last good list
/// exists, the body parsed line by line as it arrives.
pub async fn pull(
    feed: &Feed,
    dir: &Path,
    mut progress: impl FnMut(&Progress),
) -> Result<Pulled, FeedError> {
    std::fs::create_dir_all(dir).map_err(|e| FeedError::Io {
        path: dir.display().to_string(),
        detail: e.to_string(),
    })?;
    if let Some(key) = &feed.crowdsec_key {
        return crowdsec::pull(feed, key, dir, &mut progress).await;
    }
    let started = tokio::time::Instant::now();
    let deadline = started + feed.deadline;
    let url = feed.url.clone();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(FeedError::BadUrl(url));
    }
    let mut st = state(dir, &feed.name);
    let have_list = list_path(dir, &feed.name).exists() && st.url == url;
    let mut req = Request::get(url.as_str()).header(
        header::USER_AGENT,
        concat!("palisade/", env!("CARGO_PKG_VERSION")),
    );
    if have_list {
        if let Some(e) = &st.etag {
            req = req.header(header::IF_NONE_MATCH, e.as_str());
        }
        if let Some(m) = &st.last_modified {
            req = req.header(header::IF_MODIFIED_SINCE, m.as_str());
        }
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|_| FeedError::BadUrl(url.clone()))?;
    let unreachable = |detail: String| FeedError::Unreachable {
        url: url.clone(),
        detail,
    };
    let answer_by = deadline.min(started + CONNECT_TIMEOUT * 3);
    let resp = tokio::time::timeout_at(answer_by, client()?.request(req))
        .await
        .map_err(|_| unreachable("no answer".into()))?
        .map_err(|e| unreachable(format!("{e:?}")))?;
    st.url = url.clone();
    st.checked = Some(Timestamp::now());
    let status = resp.status();
    if status == StatusCode::NOT_MODIFIED && have_list {
        st.last_error = None;
        save_state(dir, &feed.name, &st)?;
        return Ok(Pulled::NotModified);
    }
    if !status.is_success() {
        return Err(FeedError::Status { url, status });
    }
    let header_text = |h| {
        resp.headers()
            .get(h)
            .and_then(|v: &http::HeaderValue| v.to_str().ok())
            .map(String::from)
    };
    let etag = header_text(header::ETAG);
    let last_modified = header_text(header::LAST_MODIFIED);
    let mut p = Progress {
        total: header_text(header::CONTENT_LENGTH).and_then(|l| l.parse().ok()),
        ..Progress::default()
    };
    let mut body = resp.into_body();
    let mut entries: Vec<Net> = Vec::new();
    let mut malformed = 0u64;
    let mut examples = Vec::new();
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let mut too_long = false;
    let mut take = |line: &[u8], too_long: bool, p: &mut Progress| -> Result<(), FeedError> {
        p.lines += 1;
        let parsed = if too_long {
            Err(LineError::TooLong)
        } else {
            std::str::from_utf8(line)
                .map_err(|_| LineError::NotText)
                .and_then(|l| Ok(parse_line(l.trim_end_matches('\r'))?))
                .and_then(|n| match n {
                    Some(n) => Ok(check_entry(&n, feed.allow_non_public).map(|()| Some(n))?),
                    None => Ok(None),
                })
        };
        match parsed {
            Ok(Some(n)) => {
                if entries.len() >= feed.max_entries {
                    return Err(FeedError::TooMany {
                        url: url.clone(),
                        max: feed.max_entries,
                    });
                }
                entries.push(n);
                p.entries += 1;
            }
            Ok(None) => {}
            Err(e) => {
                malformed += 1;
                if examples.len() < EXAMPLES {
                    let text = String::from_utf8_lossy(&line[..line.len().min(80)]);
                    examples.push(format!("line {}: {:?}: {e}", p.lines, text.trim_end()));
                }
            }
        }
        Ok(())
    };
    loop {
        let silent_by = tokio::time::Instant::now() + READ_TIMEOUT;
        let frame = match tokio::time::timeout_at(silent_by.min(deadline), body.frame()).await {
            Err(_) if silent_by <= deadline => return Err(FeedError::Silent { url }),
            Err(_) => {
                return Err(FeedError::TooSlow {
                    url,
                    deadline: feed.deadline,
                });
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(unreachable(format!("the list broke off: {e}"))),
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        p.bytes += data.len() as u64;
        if p.bytes > feed.max_bytes {
            return Err(FeedError::TooBig {
                url,
                max: feed.max_bytes,
            });
        }
        for &b in data.iter() {
            if b == b'\n' {
                take(&line, too_long, &mut p)?;
                line.clear();
                too_long = false;
            } else if line.len() < MAX_LINE {
                line.push(b);
            } else {
                too_long = true;
            }
        }
        progress(&p);
    }
    if !line.is_empty() {
        take(&line, too_long, &mut p)?;
    }
    progress(&p);
    if entries.is_empty() {
        return Err(FeedError::Empty {
            url,
            malformed,
            example: examples.first().cloned(),
        });
    }
    entries.sort_unstable();
    entries.dedup();
    st.etag = etag;
    st.last_modified = last_modified;
    keep_as_last_good(dir, feed, st, List::from(entries), malformed, examples)
}

/// Stores a newly pulled list as the feed's last good one, with its state
/// (when it was fetched, its size, what was skipped), and hands it on.
fn keep_as_last_good(
    dir: &Path,
    feed: &Feed,
    mut st: FeedState,
    entries: List,
    malformed: u64,
    examples: Vec<String>,
) -> Result<Pulled, FeedError> {
    write_atomic(&list_path(dir, &feed.name), list_text(&entries).as_bytes())?;
    st.fetched = st.checked;
    st.entries = entries.len() as u64;
    st.malformed = malformed;
    st.malformed_examples = examples.clone();
    st.last_error = None;
    save_state(dir, &feed.name, &st)?;
    Ok(Pulled::Updated {
        entries,
        malformed,
        examples,
    })
}

fn save_state(dir: &Path, name: &str, st: &FeedState) -> Result<(), FeedError> {
    write_atomic(
        &state_path(dir, name),
        &serde_json::to_vec_pretty(st).expect("state serializes"),
    )
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), FeedError> {
    let tmp = path.with_extension("tmp");
    let io = |e: std::io::Error| FeedError::Io {
        path: path.display().to_string(),
        detail: e.to_string(),
    };
    std::fs::write(&tmp, data).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

fn client() -> Result<HttpClient, FeedError> {
    let tls = palisade_wire::tls::client_config(None).map_err(|e| FeedError::Unreachable {
        url: String::new(),
        detail: e.to_string(),
    })?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// The first retry after a failed pull; each further failure doubles the
/// wait, up to the feed's own `every`.
pub const RETRY_FIRST: Duration = Duration::from_secs(10);

/// How long to wait after a pull: `every` after a success, and after the
/// `failures`-th failure in a row 10 s, 20 s, 40 s, ... up to `every` (a
/// pull that failed at boot, before the network was up, is retried within
/// seconds, not an hour later).
pub fn next_pull_in(every: Duration, failures: u32) -> Duration {
    if failures == 0 {
        return every;
    }
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    RETRY_FIRST.saturating_mul(factor).min(every)
}

/// The difference between a feed's current entries and a new list: what
/// to remove and what to add (both sorted).
pub fn diff(current: &[Net], new: &[Net]) -> (Vec<Net>, Vec<Net>) {
    let cur: std::collections::HashSet<&Net> = current.iter().collect();
    let new_set: std::collections::HashSet<&Net> = new.iter().collect();
    let mut removed: Vec<Net> = current
        .iter()
        .filter(|n| !new_set.contains(n))
        .copied()
        .collect();
    let mut added: Vec<Net> = new.iter().filter(|n| !cur.contains(n)).copied().collect();
    removed.sort_unstable();
    added.sort_unstable();
    (removed, added)
}

/// The rule a feed's decisions carry unless an entry names its own.
pub fn rule(name: &str) -> String {
    format!("feed:{name}")
}

/// The feed a decision came from: its actor, for decisions of source
/// `feed` (whatever their rule). Decisions stored before entries carried
/// rules of their own have rule `feed:NAME` and the same actor.
pub fn owner(d: &palisade_model::Decision) -> Option<&str> {
    if d.origin.source != palisade_model::Source::Feed {
        return None;
    }
    d.origin
        .actor
        .as_deref()
        .or_else(|| d.rule.as_deref().and_then(|r| r.strip_prefix("feed:")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_pull_is_retried_sooner_then_less_often() {
        let hour = Duration::from_secs(3600);
        let waits: Vec<u64> = (0..12).map(|f| next_pull_in(hour, f).as_secs()).collect();
        assert_eq!(
            waits,
            [3600, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]
        );
        assert_eq!(next_pull_in(Duration::from_secs(5), 1).as_secs(), 5);
        assert_eq!(next_pull_in(hour, u32::MAX), hour);
    }

    #[test]
    fn the_common_list_formats() {
        let ok = |l: &str| parse_line(l).unwrap().map(|n| n.to_string());
        // maltrail /fail2ban, FireHOL .ipset: one address per line.
        assert_eq!(ok("198.51.100.7").as_deref(), Some("198.51.100.7"));
        // FireHOL .netset, with its comment header.
        assert_eq!(ok("# FireHOL level 1"), None);
        assert_eq!(ok("203.0.113.0/24").as_deref(), Some("203.0.113.0/24"));
        // Spamhaus DROP.
        assert_eq!(ok("; Spamhaus DROP List 2024/01/01"), None);
        assert_eq!(
            ok("1.10.16.0/20 ; SBL256894").as_deref(),
            Some("1.10.16.0/20")
        );
        assert_eq!(ok("2001:db8::/32").as_deref(), Some("2001:db8::/32"));
        assert_eq!(
            ok("  198.51.100.8\t# seen 3 times").as_deref(),
            Some("198.51.100.8")
        );
        assert_eq!(ok(""), None);
        assert!(parse_line("not-an-address").is_err());
        assert!(parse_line("198.51.100.7/24").is_err());
    }

    #[test]
    fn non_public_entries_are_refused_unless_allowed() {
        let n = |s: &str| s.parse::<Net>().unwrap();
        for s in [
            "10.0.0.0/8",
            "192.168.1.1",
            "100.64.0.7",
            "fd12::1",
            "0.0.0.0/0",
        ] {
            let e = check_entry(&n(s), false).unwrap_err().to_string();
            assert!(e.contains("allow_non_public"), "{e}");
            check_entry(&n(s), true).unwrap();
        }
        check_entry(&n("198.51.100.7"), false).unwrap();
        check_entry(&n("2001:db8:bad::/48"), false).unwrap();
    }

    #[test]
    fn diffs() {
        let n = |s: &str| s.parse::<Net>().unwrap();
        let (removed, added) = diff(
            &[n("192.0.2.1"), n("192.0.2.2")],
            &[n("192.0.2.2"), n("192.0.2.3")],
        );
        assert_eq!(removed, [n("192.0.2.1")]);
        assert_eq!(added, [n("192.0.2.3")]);
    }
}
