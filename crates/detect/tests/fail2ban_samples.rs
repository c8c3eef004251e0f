//! Agreement with fail2ban on its own annotated sample logs.
//!
//! fail2ban ships, for most filters, a sample log whose lines are annotated
//! with `# failJSON: {"match": true, "host": "1.2.3.4", ...}`. This test
//! evaluates every annotated line the way fail2ban's
//! `tests/samplestestcase.py` does (`# filterOptions:` blocks with several
//! option sets, `# fileOptions:`, `# addFILE:`, `constraint`s, the
//! `logtype: journal` case with `test.prefix-line`, filters shared across a
//! file so multi-line `<F-MLFID>` state carries over, every failregex
//! evaluated), and counts a line as agreeing when palisade finds a failure
//! exactly when the annotation says `match: true`, with the same host.
//!
//! It prints a table per filter and asserts the overall share stays above
//! the floor measured when this test was written.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use palisade_detect::fail2ban::Filter;

const FAIL2BAN: &str = "/usr/lib/python3/dist-packages/fail2ban";
const FILTERS: &str = "/etc/fail2ban/filter.d";

#[derive(Default)]
struct Tally {
    checks: usize,
    agree: usize,
    dns_hosts: usize,
    first_failure: Option<String>,
    error: Option<String>,
}

struct Flt {
    filter: Filter,
    opts: BTreeMap<String, serde_json::Value>,
}

fn opts_to_filter_opts(o: &BTreeMap<String, serde_json::Value>) -> BTreeMap<String, String> {
    o.iter()
        .filter(|(k, _)| !k.starts_with("test."))
        .map(|(k, v)| {
            let s = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), s)
        })
        .collect()
}

/// The three kinds of Python expressions the sample logs use.
fn eval(expr: &str, name: &str, opts: &BTreeMap<String, serde_json::Value>) -> bool {
    let e = expr.replace(' ', "");
    let quoted = |s: &str| s.trim_matches('\'').to_string();
    if let Some(v) = e.strip_prefix("name==") {
        return name == quoted(v);
    }
    let mode = opts.get("mode").and_then(|m| m.as_str()).unwrap_or("");
    if let Some(v) = e.strip_prefix("opts.get('mode')==") {
        return mode == quoted(v);
    }
    if let Some(v) = e.strip_prefix("opts.get('mode')!=") {
        return mode != quoted(v);
    }
    panic!("unsupported condition {expr:?}");
}

fn same_host(got: &str, want: &str) -> bool {
    if got == want {
        return true;
    }
    match (
        got.parse::<std::net::IpAddr>(),
        want.parse::<std::net::IpAddr>(),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn run_filter(name: &str, filter_path: &Path, logs: &Path) -> Tally {
    let mut t = Tally::default();
    let mut filters: HashMap<String, Flt> = HashMap::new();
    let mut tests: Option<Vec<String>> = None;
    let mut files = vec![name.to_string()];
    let mut i = 0;
    let mut common: Option<serde_json::Map<String, serde_json::Value>> = None;
    let ann = regex::Regex::new(r"^#+ ?(failJSON|(?:file|filter)Options|addFILE):(.+)$").unwrap();
    let load = |flt_name: &str,
                opts: BTreeMap<String, serde_json::Value>,
                filters: &mut HashMap<String, Flt>|
     -> Result<(), String> {
        if filters.contains_key(flt_name) {
            return Ok(());
        }
        let mut f =
            Filter::load(filter_path, &opts_to_filter_opts(&opts)).map_err(|e| e.to_string())?;
        f.check_all = true;
        filters.insert(flt_name.to_string(), Flt { filter: f, opts });
        Ok(())
    };
    while i < files.len() {
        let path = logs.join(&files[i]);
        i += 1;
        let Ok(bytes) = std::fs::read(&path) else {
            t.error = Some(format!("cannot read {}", path.display()));
            return t;
        };
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        let mut k = 0;
        let mut ignore_block = false;
        while k < lines.len() {
            let mut line = lines[k];
            k += 1;
            let stripped = line.trim_end_matches(['\r', '\n']);
            let faildata: serde_json::Map<String, serde_json::Value>;
            if let Some(c) = ann.captures(stripped) {
                let v: serde_json::Value = serde_json::from_str(&c[2])
                    .unwrap_or_else(|e| panic!("{}:{k}: {e}", path.display()));
                match &c[1] {
                    "fileOptions" => {
                        common = v.as_object().cloned();
                        continue;
                    }
                    "filterOptions" => {
                        let mut list = Vec::new();
                        ignore_block = false;
                        let sets = match v {
                            serde_json::Value::Array(a) => a,
                            other => vec![other],
                        };
                        for set in sets {
                            let mut opts: BTreeMap<String, serde_json::Value> =
                                common.clone().unwrap_or_default().into_iter().collect();
                            for (a, b) in set.as_object().cloned().unwrap_or_default() {
                                opts.insert(a, b);
                            }
                            if let Some(cond) = opts.get("test.condition").and_then(|c| c.as_str())
                            {
                                ignore_block = !eval(cond, name, &opts);
                            }
                            if ignore_block {
                                continue;
                            }
                            let flt_opts = opts_to_filter_opts(&opts);
                            let flt_name =
                                match opts.get("test.filter-name").and_then(|x| x.as_str()) {
                                    Some(n) => format!("{name}{n}"),
                                    None => format!("{name}{flt_opts:?}"),
                                };
                            if let Err(e) = load(&flt_name, opts.clone(), &mut filters) {
                                t.error = Some(e);
                                return t;
                            }
                            list.push(flt_name);
                        }
                        tests = Some(list);
                        continue;
                    }
                    "addFILE" => {
                        files.push(v.as_str().unwrap().to_string());
                        continue;
                    }
                    _ => {
                        faildata = v.as_object().cloned().unwrap_or_default();
                        if k >= lines.len() {
                            break;
                        }
                        line = lines[k];
                        k += 1;
                    }
                }
            } else if ignore_block || line.starts_with('#') || line.trim().is_empty() {
                continue;
            } else {
                faildata = Default::default();
            }
            if ignore_block {
                continue;
            }
            if tests.is_none() {
                if let Err(e) = load(name, BTreeMap::new(), &mut filters) {
                    t.error = Some(e);
                    return t;
                }
                tests = Some(vec![name.to_string()]);
            }
            let mut line = line.trim_end_matches(['\r', '\n']).to_string();
            for flt_name in tests.clone().unwrap() {
                let flt = filters.get_mut(&flt_name).unwrap();
                if let Some(c) = faildata.get("constraint").and_then(|c| c.as_str())
                    && !eval(c, name, &flt.opts)
                {
                    continue;
                }
                let journal = flt.opts.get("logtype").and_then(|l| l.as_str()) == Some("journal");
                let ret = if journal {
                    if let Some(p) = flt.opts.get("test.prefix-line").and_then(|p| p.as_str()) {
                        line = format!("{p}{line}");
                    }
                    flt.filter.process_line_nodate(&line)
                } else {
                    flt.filter.process_line(&line)
                };
                let found: Vec<_> = ret.into_iter().filter(|f| !f.nofail).collect();
                let want = faildata
                    .get("match")
                    .and_then(|m| m.as_bool())
                    .unwrap_or(false);
                let ok = if found.is_empty() {
                    !want
                } else if !want || found.len() != 1 {
                    false
                } else {
                    let got = found[0].host.clone().unwrap_or_default();
                    if found[0].address.is_none() {
                        t.dns_hosts += 1;
                    }
                    match faildata.get("host").and_then(|h| h.as_str()) {
                        Some(h) => same_host(&got, h),
                        None => true,
                    }
                };
                t.checks += 1;
                if ok {
                    t.agree += 1;
                } else if t.first_failure.is_none() {
                    t.first_failure = Some(format!(
                        "{flt_name}: {}:{k}: want match={want} host={:?}, got {:?}: {line}",
                        path.display(),
                        faildata.get("host"),
                        found.iter().map(|f| (&f.host, f.regex)).collect::<Vec<_>>()
                    ));
                }
            }
        }
    }
    t
}

#[test]
fn fail2ban_sample_logs_agree() {
    let logs = Path::new(FAIL2BAN).join("tests/files/logs");
    if !logs.is_dir() || !Path::new(FILTERS).is_dir() {
        let why = "fail2ban is not installed (apt-get install fail2ban)";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{why}");
        }
        println!("SKIPPED fail2ban_sample_logs_agree: {why}");
        return;
    }
    let mut filters: Vec<(String, PathBuf)> = std::fs::read_dir(FILTERS)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "conf"))
        .filter(|p| !p.ends_with("common.conf"))
        .map(|p| (p.file_stem().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    // fail2ban's own test filters include common.conf from the main
    // configuration: put them next to a copy of it.
    let test_filters = Path::new(FAIL2BAN).join("tests/config/filter.d");
    let scratch = tempfile::tempdir().unwrap();
    std::fs::copy(
        Path::new(FILTERS).join("common.conf"),
        scratch.path().join("common.conf"),
    )
    .unwrap();
    let include_re = regex::Regex::new(r"(?m)^before = .*common\.conf$").unwrap();
    if let Ok(rd) = std::fs::read_dir(&test_filters) {
        for p in rd.flatten().map(|e| e.path()) {
            let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
            if stem.starts_with("zzz-") && p.extension().is_some_and(|x| x == "conf") {
                // Their include points into fail2ban's source tree.
                let copy = scratch.path().join(p.file_name().unwrap());
                let text = std::fs::read_to_string(&p).unwrap();
                let text = include_re.replace(&text, "before = common.conf");
                std::fs::write(&copy, text.as_bytes()).unwrap();
                filters.push((stem, copy));
            }
        }
    }
    filters.sort();
    let (mut checks, mut agree, mut sup_checks, mut sup_agree, mut dns) = (0, 0, 0, 0, 0);
    let mut no_samples = Vec::new();
    let mut unsupported = Vec::new();
    let mut failures = Vec::new();
    println!(
        "{:<28} {:>6} {:>6} {:>8}",
        "filter", "lines", "agree", "share"
    );
    for (name, path) in &filters {
        if !logs.join(name).is_file() {
            no_samples.push(name.clone());
            continue;
        }
        let t = run_filter(name, path, &logs);
        if let Some(e) = &t.error {
            // Count the sample lines as disagreeing.
            let n = count_annotated(&logs.join(name));
            checks += n;
            unsupported.push(format!("{name}: {e}"));
            println!("{name:<28} {n:>6} {:>6} {:>8}", 0, "unsupported");
            continue;
        }
        checks += t.checks;
        agree += t.agree;
        sup_checks += t.checks;
        sup_agree += t.agree;
        dns += t.dns_hosts;
        println!(
            "{name:<28} {:>6} {:>6} {:>7.1}%",
            t.checks,
            t.agree,
            100.0 * t.agree as f64 / t.checks.max(1) as f64
        );
        if let Some(f) = t.first_failure {
            failures.push(f);
        }
    }
    let share = agree as f64 / checks.max(1) as f64;
    println!(
        "\nALL: {agree}/{checks} = {:.2}% of annotated line evaluations agree (unsupported filters counted as disagreeing)",
        100.0 * share
    );
    println!(
        "supported filters: {sup_agree}/{sup_checks} = {:.2}%; matched lines whose host is a DNS name or failure id (never banned by palisade): {dns}",
        100.0 * sup_agree as f64 / sup_checks.max(1) as f64
    );
    println!("filters without sample logs: {}", no_samples.join(" "));
    println!("unsupported filters:");
    for u in &unsupported {
        println!("  {u}");
    }
    println!("first disagreement per filter:");
    for f in &failures {
        println!("  {f}");
    }
    // Every annotated line of every filter with samples agrees (1627 of
    // 1627 with fail2ban 1.0.2, Debian 12): one line that no longer does,
    // in a rule read on few lines (several users of one connection), is
    // a regression the share alone would hide.
    assert!(
        unsupported.is_empty() && failures.is_empty() && agree == checks,
        "{agree} of {checks} annotated line evaluations agree ({:.2}%); unsupported: {unsupported:?}; first disagreements: {failures:#?}",
        100.0 * share
    );
}

fn count_annotated(p: &Path) -> usize {
    std::fs::read_to_string(p)
        .map(|t| t.lines().filter(|l| l.contains("failJSON:")).count())
        .unwrap_or(0)
}
