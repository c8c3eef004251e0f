//! Replays the requests of a real CrowdSec 1.4.6 LAPI session (and what
//! crowdsec-firewall-bouncer 0.0.25 sends) against palisade's endpoint,
//! with the same decisions made between them, and compares the answers
//! field by field (ids and timings aside). Next to it, the attacks: keys
//! missing, wrong or deleted, oversized and malformed requests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use palisade_crowdsec::Keys;
use palisade_model::{Action, Decision, Net, Origin, Source, Span, Timestamp};
use palisade_store::{Options, Store};
use serde_json::Value;

/// The recording sits in `../shared/peers/` beside the repository (one
/// level further up from a worktree under `wt/`).
fn transcript() -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let candidates = ["../shared/peers", "../../shared/peers"]
        .map(|d| root.join(d).join("crowdsec-lapi-transcript.txt"));
    candidates
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_else(|| {
            panic!(
                "the recorded transcript is needed at {}",
                candidates[0].display()
            )
        })
}

/// One recorded exchange: the request as sent, the status and body the
/// LAPI answered, and what was done to the decisions after it.
struct Exchange {
    title: String,
    request: Vec<String>,
    status: u16,
    body: String,
    then: Option<String>,
}

fn exchanges(text: &str) -> Vec<Exchange> {
    let mut out = Vec::new();
    // Requests and headers were recorded with their CRLFs; the second
    // header line of each exchange (its time) is not a new exchange.
    let text = text.replace('\r', "").replace("\n### 20", "\n#### 20");
    let part_a = text.split("### B.").next().unwrap();
    for section in part_a.split("\n### ").skip(1) {
        let lines: Vec<&str> = section.lines().collect();
        if !lines[0].chars().next().is_some_and(|c| c.is_ascii_digit()) {
            continue;
        }
        let request: Vec<String> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("> "))
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        let status = lines
            .iter()
            .find_map(|l| l.strip_prefix("< HTTP/1.1 "))
            .map(|s| s[..3].parse().unwrap())
            .unwrap();
        let head_end = lines.iter().rposition(|l| *l == "<" || *l == "< ").unwrap();
        let body = lines.get(head_end + 1).unwrap_or(&"").to_string();
        let then = lines
            .iter()
            .find_map(|l| l.strip_prefix(">>> then: "))
            .map(str::to_string);
        out.push(Exchange {
            title: lines[0].to_string(),
            request,
            status,
            body,
            then,
        });
    }
    out
}

struct Lab {
    store: Arc<Store>,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    keys: Keys,
    runtime: tokio::runtime::Runtime,
}

fn lab() -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("d.redb"), &Options::default()).unwrap());
    let keys = Keys::new(dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let api = palisade_crowdsec::Api::new(store.clone(), keys.clone());
    runtime.spawn(palisade_crowdsec::serve(listener, api));
    Lab {
        store,
        addr,
        _dir: dir,
        keys,
        runtime,
    }
}

impl Lab {
    fn ban(&self, net: &str, span: Duration) {
        let now = Timestamp::now();
        let d = Decision::new(
            Action::Ban,
            net.parse().unwrap(),
            now,
            Span::For(span),
            Origin::new("n1", Source::Cli).with_actor("3d1219c7c4c5404aaa1f6d2a48adfda4"),
        );
        self.store.write(|w| w.put(&d).map(|_| ())).unwrap();
    }

    /// Every stored decision.
    fn decisions(&self) -> Vec<Decision> {
        let reader = self.store.read().unwrap();
        reader.iter(None).unwrap().map(Result::unwrap).collect()
    }

    fn unban(&self, net: &str) {
        let net: Net = net.parse().unwrap();
        self.store
            .write(|w| w.remove(Action::Ban, &net).map(|_| ()))
            .unwrap();
    }

    /// Applies a recorded `cscli decisions ...` step (captcha has no
    /// palisade equivalent and is left out).
    fn apply(&self, then: &str) {
        for step in then.split("; ") {
            let words: Vec<&str> = step.split_whitespace().collect();
            let arg = |flag: &str| words.iter().position(|w| *w == flag).map(|i| words[i + 1]);
            if arg("-t").is_some() {
                continue;
            }
            let target = arg("-i").or(arg("-r")).unwrap();
            match words[2] {
                "add" => {
                    let span: Span = arg("-d").unwrap().parse().unwrap();
                    self.ban(target, span.duration().unwrap());
                }
                "delete" => self.unban(target),
                other => panic!("unknown step {other}"),
            }
        }
        // The endpoint renumbers from a fresh snapshot at most every 200 ms.
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Sends raw request text and returns (status, headers, body), reading
/// until the server closes (every request here asks it to).
fn send(addr: SocketAddr, raw: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(raw);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let Some(end) = find(&buf, b"\r\n\r\n") else {
        let status = String::from_utf8_lossy(&buf)
            .get(9..12)
            .and_then(|s| s.parse().ok());
        return (status.unwrap_or(0), String::new(), String::new());
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status = head[9..12].parse().unwrap();
    let mut body = buf[end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, head, String::from_utf8(body).unwrap())
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = find(b, b"\r\n").expect("chunk size line");
        let size = usize::from_str_radix(std::str::from_utf8(&b[..line_end]).unwrap(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[line_end + 2..line_end + 2 + size]);
        b = &b[line_end + 4 + size..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn request(lines: &[String], recorded_key: &str, key: &str) -> Vec<u8> {
    let mut raw = String::new();
    for l in lines {
        let l = l.replace(recorded_key, key);
        raw.push_str(&l);
        raw.push_str("\r\n");
    }
    raw.push_str("Connection: close\r\n\r\n");
    raw.into_bytes()
}

/// Go duration to milliseconds (enough of the syntax for these answers).
fn go_millis(s: &str) -> f64 {
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let mut total = 0.0;
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap();
        let n: f64 = rest[..n_end].parse().unwrap();
        rest = &rest[n_end..];
        let u_end = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..u_end];
        rest = &rest[u_end..];
        total += n * match unit {
            "h" => 3_600_000.0,
            "m" => 60_000.0,
            "s" => 1000.0,
            "ms" => 1.0,
            "µs" => 0.001,
            "ns" => 0.000_001,
            u => panic!("unit {u}"),
        };
    }
    if neg { -total } else { total }
}

/// How far a remaining duration may differ from the recording's: the
/// recording's pauses between exchanges are not replayed (up to about a
/// minute there), and timings are not what this test compares.
const TIMING_SLACK_MS: f64 = 120_000.0;

/// Compares two decisions field by field, ids aside, durations within
/// `slack_ms` (the recording's clock is not ours).
fn same_decision(ours: &Value, theirs: &Value, slack_ms: f64, what: &str) {
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(ours), keys(theirs), "{what}: fields");
    for f in ["origin", "scenario", "scope", "type", "value"] {
        assert_eq!(ours[f], theirs[f], "{what}: {f}");
    }
    assert!(ours["id"].is_u64(), "{what}: id");
    let (a, b) = (
        go_millis(ours["duration"].as_str().unwrap()),
        go_millis(theirs["duration"].as_str().unwrap()),
    );
    assert!((a - b).abs() <= slack_ms, "{what}: duration {a} vs {b}");
    assert_eq!(a < 0.0, b < 0.0, "{what}: duration sign");
}

fn without_captcha(list: &Value) -> Vec<Value> {
    list.as_array()
        .map(|l| l.iter().filter(|d| d["type"] == "ban").cloned().collect())
        .unwrap_or_default()
}

#[test]
fn answers_as_crowdsec_lapi_does() {
    let text = transcript();
    let recorded_key = "a74210bda0b52e36ca11fd768488e4ce";
    let lab = lab();
    let key = lab.keys.add("test").unwrap();
    // The recording's state: one operator ban of an hour, made about ten
    // seconds before the first request.
    lab.ban("198.18.0.9", Duration::from_secs(3590));
    let mut checked = 0;
    // CrowdSec repeats a deletion it already sent (its bouncers' position
    // is a time, not a stream number); palisade sends each once.
    let mut delivered: Vec<Value> = Vec::new();
    for x in exchanges(&text) {
        let (status, head, body) = send(lab.addr, &request(&x.request, recorded_key, &key));
        assert_eq!(status, x.status, "{}: status", x.title);
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json; charset=utf-8"),
            "{}: {head}",
            x.title
        );
        if x.request[0].starts_with("HEAD ") {
            assert!(body.is_empty(), "{}: HEAD has no body", x.title);
        } else if x.body == "null" || x.body.starts_with("{\"message\"") {
            assert_eq!(body, x.body, "{}", x.title);
        } else {
            let (ours, theirs): (Value, Value) = (
                serde_json::from_str(&body).unwrap(),
                serde_json::from_str(&x.body).unwrap(),
            );
            let startup = x.request[0].contains("startup=true");
            if let Some(obj) = theirs.as_object() {
                assert_eq!(
                    ours.as_object().unwrap().keys().collect::<Vec<_>>(),
                    obj.keys().collect::<Vec<_>>(),
                    "{}: keys",
                    x.title
                );
                // CrowdSec's start-up answer lists long-expired decisions
                // as deleted; palisade has nothing to take back.
                let lists: &[&str] = if startup {
                    &["new"]
                } else {
                    &["deleted", "new"]
                };
                for list in lists {
                    let mut a = without_captcha(&ours[*list]);
                    let mut b = without_captcha(&theirs[*list]);
                    if *list == "deleted" {
                        b.retain(|d| !delivered.contains(&d["value"]));
                        delivered.extend(b.iter().map(|d| d["value"].clone()));
                    }
                    a.sort_by_key(|d| d["value"].to_string());
                    b.sort_by_key(|d| d["value"].to_string());
                    assert_eq!(a.len(), b.len(), "{}: {list}: {ours} vs {theirs}", x.title);
                    if a.is_empty() {
                        assert!(ours[*list].is_null(), "{}: empty {list} is null", x.title);
                    }
                    for (d, e) in a.iter().zip(&b) {
                        same_decision(d, e, TIMING_SLACK_MS, &format!("{}: {list}", x.title));
                    }
                }
            } else {
                let (a, b) = (without_captcha(&ours), without_captcha(&theirs));
                assert_eq!(a.len(), b.len(), "{}", x.title);
                for (d, e) in a.iter().zip(&b) {
                    same_decision(d, e, TIMING_SLACK_MS, &x.title);
                }
            }
        }
        checked += 1;
        if let Some(then) = &x.then {
            lab.apply(then);
        }
    }
    assert!(checked >= 13, "only {checked} exchanges replayed");
}

#[test]
fn the_firewall_bouncers_own_requests_are_answered() {
    let text = transcript();
    let text = text.replace('\r', "");
    let part_b = text.split("### B.").nth(1).unwrap();
    let first: Vec<String> = part_b
        .lines()
        .skip_while(|l| !l.starts_with("GET /v1/decisions/stream?startup=true"))
        .take_while(|l| !l.starts_with("=>"))
        .map(str::to_string)
        .collect();
    let poll: Vec<String> = part_b
        .lines()
        .skip_while(|l| !l.starts_with("GET /v1/decisions/stream? "))
        .take_while(|l| !l.starts_with("=>"))
        .map(str::to_string)
        .collect();
    let lab = lab();
    let key = lab.keys.add("fw").unwrap();
    let recorded_key = "dc512d8695667d994cfbe5c170c69778";
    lab.ban("198.18.0.9", Duration::from_secs(3600));
    let (status, _, body) = send(lab.addr, &request(&first, recorded_key, &key));
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["new"][0]["value"], "198.18.0.9");
    let (status, _, body) = send(lab.addr, &request(&poll, recorded_key, &key));
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"deleted":null,"new":null}"#)
    );
    // The Range decision 0.0.25 would load as a single address is served
    // as CrowdSec serves it.
    lab.ban("198.18.5.0/24", Duration::from_secs(3600));
    lab.unban("198.18.0.9");
    std::thread::sleep(Duration::from_millis(300));
    let (_, _, body) = send(lab.addr, &request(&poll, recorded_key, &key));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["new"][0]["scope"], "Range");
    assert_eq!(v["new"][0]["value"], "198.18.5.0/24");
    assert_eq!(v["deleted"][0]["value"], "198.18.0.9");
    assert!(
        v["deleted"][0]["duration"]
            .as_str()
            .unwrap()
            .starts_with('-')
    );
}

fn get(addr: SocketAddr, target: &str, key: Option<&str>) -> (u16, String) {
    let key = key
        .map(|k| format!("X-Api-Key: {k}\r\n"))
        .unwrap_or_default();
    let raw = format!("GET {target} HTTP/1.1\r\nHost: x\r\n{key}Connection: close\r\n\r\n");
    let (s, _, b) = send(addr, raw.as_bytes());
    (s, b)
}

#[test]
fn hostile_bouncers_are_refused_and_change_nothing() {
    let lab = lab();
    let key = lab.keys.add("fw").unwrap();
    let old = lab.keys.add("old").unwrap();
    lab.ban("198.18.0.9", Duration::from_secs(3600));
    lab.ban("198.18.5.0/24", Duration::from_secs(3600));
    let before = lab.decisions();
    let forbidden = r#"{"message":"access forbidden"}"#;
    let stream = "/v1/decisions/stream?startup=true";
    assert_eq!(get(lab.addr, stream, None), (403, forbidden.into()));
    assert_eq!(
        get(lab.addr, stream, Some("0000000000000000000000000000dead")),
        (403, forbidden.into())
    );
    assert_eq!(
        get(lab.addr, stream, Some(&"a".repeat(5000))),
        (403, forbidden.into())
    );
    assert_eq!(
        get(lab.addr, "/v1/decisions?ip=198.18.0.9", Some("x")).0,
        403
    );
    // A deleted key stops working (the endpoint rereads keys every second).
    assert_eq!(get(lab.addr, stream, Some(&old)).0, 200);
    lab.keys.delete("old").unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(get(lab.addr, stream, Some(&old)), (403, forbidden.into()));
    // Two keys at once (one valid) are refused.
    let raw = format!(
        "GET {stream} HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\r\nX-Api-Key: {old}\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(send(lab.addr, raw.as_bytes()).0, 403);
    // Header injection: a bare CR in a header, a folded header.
    let raw = format!(
        "GET {stream} HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\rX-Evil: 1\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(send(lab.addr, raw.as_bytes()).0, 400);
    let raw = format!(
        "GET {stream} HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\r\n continued\r\nConnection: close\r\n\r\n"
    );
    assert!(matches!(send(lab.addr, raw.as_bytes()).0, 0 | 400));
    // Oversized and malformed queries.
    let k = Some(key.as_str());
    let long = format!("/v1/decisions/stream?origins={}", "a".repeat(4000));
    assert_eq!(get(lab.addr, &long, k).0, 400);
    assert_eq!(
        get(lab.addr, "/v1/decisions/stream?startup=maybe", k).0,
        400
    );
    assert_eq!(
        get(
            lab.addr,
            "/v1/decisions/stream?startup=true&startup=false",
            k
        )
        .0,
        400
    );
    assert_eq!(get(lab.addr, "/v1/decisions/stream?origins=%zz", k).0, 400);
    assert_eq!(
        get(
            lab.addr,
            "/v1/decisions/stream?origins=a%0d%0aSet-Cookie:%20x",
            k
        )
        .0,
        400
    );
    assert_eq!(get(lab.addr, "/v1/decisions?ip=198.18.0.0/24", k).0, 400);
    assert_eq!(get(lab.addr, "/v1/decisions?range=198.18.0.1/24", k).0, 400);
    assert_eq!(get(lab.addr, "/v1/decisions?delete=all", k).0, 400);
    let huge_header = format!(
        "GET {stream} HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(64 << 10)
    );
    assert!(matches!(
        send(lab.addr, huge_header.as_bytes()).0,
        0 | 400 | 431
    ));
    // Nothing but reads and usage reports: other methods and paths fail.
    for (method, path) in [
        ("POST", "/v1/decisions"),
        ("DELETE", "/v1/decisions"),
        ("DELETE", "/v1/decisions/1"),
        ("POST", "/v1/decisions/stream"),
        ("PUT", "/v1/usage-metrics"),
        ("POST", "/v1/alerts"),
        ("POST", "/v1/watchers/login"),
    ] {
        let raw = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        );
        let status = send(lab.addr, raw.as_bytes()).0;
        assert!(matches!(status, 404 | 405), "{method} {path}: {status}");
    }
    // Usage metrics: bounded, JSON, only with a key.
    let post = |key: &str, body: &str| {
        let raw = format!(
            "POST /v1/usage-metrics HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        send(lab.addr, raw.as_bytes()).0
    };
    assert_eq!(post(&key, r#"{"remediation_components":[]}"#), 201);
    assert_eq!(post("wrong", "{}"), 403);
    assert_eq!(post(&key, "not json"), 400);
    assert_eq!(post(&key, &format!("\"{}\"", "x".repeat(70 << 10))), 413);
    // Still serving, and the decisions are exactly as before.
    let (status, body) = get(lab.addr, "/v1/decisions?ip=198.18.0.9", k);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("198.18.0.9"));
    let after = lab.decisions();
    assert_eq!(before, after);
    drop(lab.runtime);
}

#[test]
fn allowed_addresses_never_reach_a_bouncer() {
    let lab = lab();
    let key = lab.keys.add("fw").unwrap();
    lab.ban("198.18.0.9", Duration::from_secs(3600));
    lab.ban("198.18.7.0/24", Duration::from_secs(3600));
    lab.ban("198.18.0.20", Duration::from_secs(3600));
    let allow = |net: &str| {
        let d = Decision::new(
            Action::Allow,
            net.parse().unwrap(),
            Timestamp::now(),
            Span::Forever,
            Origin::new("n1", Source::Cli),
        );
        lab.store.write(|w| w.put(&d).map(|_| ())).unwrap();
    };
    allow("198.18.0.9");
    allow("198.18.7.7");
    let (_, body) = get(lab.addr, "/v1/decisions/stream?startup=true", Some(&key));
    let v: Value = serde_json::from_str(&body).unwrap();
    let values: Vec<&str> = v["new"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["value"].as_str().unwrap())
        .collect();
    assert_eq!(values, ["198.18.0.20"]);
    let (_, body) = get(lab.addr, "/v1/decisions?ip=198.18.0.9", Some(&key));
    assert_eq!(body, "null");
}

/// The endpoint reads the store again only when it changed or a ban
/// ended: a ban that ends with nothing written (no sweep here) still
/// reaches the bouncer as deleted, and a new one as new.
#[test]
fn a_ban_that_ends_without_a_write_is_delivered_as_deleted() {
    let lab = lab();
    let key = lab.keys.add("fw").unwrap();
    let stream = |startup: bool| {
        let q = if startup { "?startup=true" } else { "" };
        let (status, body) = get(lab.addr, &format!("/v1/decisions/stream{q}"), Some(&key));
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()
    };
    let values = |v: &Value, field: &str| -> Vec<String> {
        v[field]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|d| d["value"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    lab.ban("198.18.0.5", Duration::from_millis(1500));
    let first = stream(true);
    assert_eq!(values(&first, "new"), ["198.18.0.5"]);
    // Quiet store, nothing ended: nothing new.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        stream(false),
        serde_json::json!({"deleted": null, "new": null})
    );
    // A write is seen at the next poll after the shortest period.
    lab.ban("198.18.0.6", Duration::from_secs(3600));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(values(&stream(false), "new"), ["198.18.0.6"]);
    // The first ban ends; nothing is written.
    std::thread::sleep(Duration::from_millis(1500));
    let later = stream(false);
    assert_eq!(values(&later, "deleted"), ["198.18.0.5"], "{later}");
    assert!(values(&later, "new").is_empty(), "{later}");
}
