//! A CrowdSec Local API as a feed: its decision stream (start-up, then
//! deltas) kept as the feed's list, so applying it is a feed's replace like
//! any other, allows still win, and a decision deleted there is lifted here.
//! Each ban carries the rule `crowdsec:<scenario>`; the trust rules of
//! every feed apply (no non-public range unless `allow_non_public`, at most
//! `max_entries`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Empty, Limited};
use palisade_model::{Net, Timestamp};
use serde::Deserialize;

use crate::{
    EXAMPLES, Feed, FeedError, List, Progress, Pulled, check_entry, client, keep_as_last_good,
    last_good, save_state, state,
};

/// Largest stream answer read (a start-up of two million decisions is
/// about 400 MB; the entry limit stops a feed long before).
const MAX_BODY: usize = 512 << 20;
const TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Deserialize)]
struct Stream {
    new: Option<Vec<Decision>>,
    deleted: Option<Vec<Decision>>,
}

#[derive(Deserialize)]
struct Decision {
    #[serde(rename = "type")]
    kind: String,
    scope: String,
    value: String,
    #[serde(default)]
    scenario: String,
}

/// The rule of a CrowdSec decision's ban: its scenario, cleaned of control
/// characters and capped (the LAPI is a third party).
fn rule(d: &Decision) -> String {
    palisade_model::decision::clean_name(&format!("crowdsec:{}", d.scenario))
}

/// The ban a CrowdSec decision stands for, if palisade can enforce it
/// (bans of an Ip or a Range; captchas and other scopes are left out).
fn target(d: &Decision) -> Option<Net> {
    if !d.kind.eq_ignore_ascii_case("ban") {
        return None;
    }
    match d.scope.to_ascii_lowercase().as_str() {
        "ip" => d.value.parse::<std::net::IpAddr>().ok().map(Net::host),
        "range" => d.value.parse().ok(),
        _ => None,
    }
}

/// Pulls the LAPI's stream with `key`: the whole state when no list is
/// kept yet, else the changes since this key's last pull.
pub async fn pull(
    feed: &Feed,
    key: &str,
    dir: &Path,
    progress: &mut impl FnMut(&Progress),
) -> Result<Pulled, FeedError> {
    let base = feed.url.trim_end_matches('/');
    let mut st = state(dir, &feed.name);
    let kept = (st.url == feed.url)
        .then(|| last_good(dir, &feed.name))
        .flatten();
    let url = match kept {
        Some(_) => format!("{base}/v1/decisions/stream?startup=false"),
        None => format!("{base}/v1/decisions/stream?startup=true"),
    };
    let unreachable = |detail: String| FeedError::Unreachable {
        url: feed.url.clone(),
        detail,
    };
    let req = Request::get(url.as_str())
        .header(
            header::USER_AGENT,
            concat!("palisade/", env!("CARGO_PKG_VERSION")),
        )
        .header("X-Api-Key", key)
        .body(Empty::<Bytes>::new())
        .map_err(|_| FeedError::BadUrl(feed.url.clone()))?;
    let resp = tokio::time::timeout(TIMEOUT, client()?.request(req))
        .await
        .map_err(|_| unreachable("no answer".into()))?
        .map_err(|e| unreachable(format!("{e:?}")))?;
    st.url = feed.url.clone();
    st.checked = Some(Timestamp::now());
    if !resp.status().is_success() {
        return Err(FeedError::Status {
            url: feed.url.clone(),
            status: resp.status(),
        });
    }
    let body = tokio::time::timeout(TIMEOUT, Limited::new(resp.into_body(), MAX_BODY).collect())
        .await
        .map_err(|_| FeedError::Silent {
            url: feed.url.clone(),
        })?
        .map_err(|e| unreachable(format!("the stream broke off: {e}")))?
        .to_bytes();
    let stream: Stream = serde_json::from_slice(&body)
        .map_err(|e| unreachable(format!("the answer is not a CrowdSec decision stream: {e}")))?;
    let mut entries: BTreeMap<Net, Option<String>> = match kept.clone() {
        Some(mut list) => list
            .nets
            .iter()
            .map(|n| (*n, list.rules.remove(n)))
            .collect(),
        None => BTreeMap::new(),
    };
    for d in stream.deleted.iter().flatten() {
        if let Some(net) = target(d) {
            entries.remove(&net);
        }
    }
    // Decisions palisade cannot enforce (captchas, other scopes) are
    // skipped quietly; refused ones are counted with examples.
    let mut skipped = 0u64;
    let mut examples = Vec::new();
    for d in stream.new.iter().flatten() {
        let Some(net) = target(d) else {
            skipped += 1;
            continue;
        };
        if let Err(e) = check_entry(&net, feed.allow_non_public) {
            skipped += 1;
            if examples.len() < EXAMPLES {
                examples.push(e.to_string());
            }
            continue;
        }
        entries.insert(net, Some(rule(d)));
    }
    if entries.len() > feed.max_entries {
        return Err(FeedError::TooMany {
            url: feed.url.clone(),
            max: feed.max_entries,
        });
    }
    let mut list = List::default();
    for (net, rule) in entries {
        list.nets.push(net);
        if let Some(rule) = rule {
            list.rules.insert(net, rule);
        }
    }
    let entries = list;
    progress(&Progress {
        bytes: body.len() as u64,
        total: Some(body.len() as u64),
        lines: 0,
        entries: entries.len() as u64,
    });
    if kept.as_ref() == Some(&entries) {
        st.last_error = None;
        save_state(dir, &feed.name, &st)?;
        return Ok(Pulled::NotModified);
    }
    keep_as_last_good(dir, feed, st, entries, skipped, examples)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{list_text, write_atomic};

    fn d(kind: &str, scope: &str, value: &str) -> Decision {
        Decision {
            kind: kind.into(),
            scope: scope.into(),
            value: value.into(),
            scenario: "crowdsecurity/ssh-bf".into(),
        }
    }

    #[test]
    fn only_enforceable_bans_are_taken() {
        assert_eq!(
            target(&d("ban", "Ip", "198.18.0.9")),
            Some("198.18.0.9".parse().unwrap())
        );
        assert_eq!(
            target(&d("ban", "Range", "198.18.5.0/24")),
            Some("198.18.5.0/24".parse().unwrap())
        );
        for hostile in [
            d("captcha", "Ip", "198.18.0.9"),
            d("ban", "Country", "FR"),
            d("ban", "Ip", "198.18.0.0/24"),
            d("ban", "Range", "198.18.5.1/24"),
            d("ban", "Range", "198.18.5.0/33"),
            d("ban", "Ip", "198.18.0.9\r\nX: y"),
            d("ban", "Ip", ""),
        ] {
            assert_eq!(target(&hostile), None, "{}", hostile.value);
        }
        for garbage in ["", "null x", "{\"new\":5}", "{\"new\":[{\"value\":1}]}"] {
            assert!(
                serde_json::from_str::<Stream>(garbage).is_err(),
                "{garbage}"
            );
        }
    }

    #[test]
    fn the_rule_is_the_scenario_kept_on_one_line_and_short() {
        let mut hostile = d("ban", "Ip", "198.51.100.7");
        assert_eq!(rule(&hostile), "crowdsec:crowdsecurity/ssh-bf");
        hostile.scenario = format!("x\n198.51.100.8 y\r{}", "z".repeat(10_000));
        let r = rule(&hostile);
        assert!(!r.contains(['\n', '\r']), "{r}");
        assert!(
            r.len() <= palisade_model::decision::MAX_NAME_LEN + 3,
            "{}",
            r.len()
        );
        // Written and read back, it is still one entry.
        let dir = tempfile::tempdir().unwrap();
        let net = "198.51.100.7".parse().unwrap();
        let listed = List {
            nets: vec![net],
            rules: [(net, r)].into(),
        };
        write_atomic(
            &crate::list_path(dir.path(), "cs"),
            list_text(&listed).as_bytes(),
        )
        .unwrap();
        assert_eq!(last_good(dir.path(), "cs"), Some(listed));
    }
}
