//! The systemd journal, read through `journalctl -f -o json` (a child
//! process started with an argument vector, never a shell).
//!
//! Each entry becomes a syslog-like line, `TIME HOST IDENT[PID]: MESSAGE`
//! (TIME in RFC 3339 UTC), so the same rules apply as to syslog files; a
//! multi-line MESSAGE gives one line per line. MESSAGE may be a string or,
//! for non-UTF-8 messages, an array of bytes. IDENT is `SYSLOG_IDENTIFIER`,
//! else `_COMM`; note that `SYSLOG_IDENTIFIER` is chosen by the sender
//! (use `matches = ["_COMM=sshd"]` or a unit filter to trust the program).
//!
//! The cursor of the last entry passed on is saved in the state directory
//! (at most once a second and when stopping); at start `--after-cursor`
//! resumes there, or `--since=@NOW` starts at the present the first time. If
//! journalctl exits, it is restarted after a second.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::Sender;
use palisade_model::Timestamp;

use super::{Line, SourceHandle, cap_line, state, stopped};

/// What to read.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only these units (`journalctl -u`); empty: all.
    pub units: Vec<String>,
    /// Extra journal matches such as `_COMM=sshd`.
    pub matches: Vec<String>,
    /// The journalctl binary.
    pub journalctl: PathBuf,
    /// A journal directory to read instead of the system journal.
    pub directory: Option<PathBuf>,
}

/// Starts `journalctl -f -o json` and sends each entry's message to `tx`;
/// the journal cursor is kept under `state_dir`, so a restart resumes
/// where it stopped.
pub fn spawn(
    name: &str,
    opts: &Options,
    state_dir: &Path,
    tx: Sender<Line>,
) -> anyhow::Result<SourceHandle> {
    std::fs::create_dir_all(state_dir)?;
    let cursor_file = state::path(state_dir, name, "cursor");
    let child: Arc<Mutex<Option<Child>>> = Arc::new(Mutex::new(None));
    // Start once here so a missing journalctl is reported to the caller.
    let first = start(opts, &cursor_file)?;
    *child.lock().unwrap() = Some(first);
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let src: Arc<str> = name.into();
    let opts = opts.clone();
    let slot = child.clone();
    let thread = std::thread::Builder::new()
        .name(format!("src-{name}"))
        .spawn(move || -> anyhow::Result<()> {
            loop {
                let stdout = {
                    let mut g = slot.lock().unwrap();
                    match g.as_mut() {
                        Some(c) => c.stdout.take(),
                        None => None,
                    }
                };
                if let Some(stdout) = stdout {
                    let closed = pump(stdout, &src, &cursor_file, &tx, &flag)?;
                    if closed {
                        return Ok(());
                    }
                }
                let status = slot.lock().unwrap().take().map(|mut c| {
                    let _ = c.kill();
                    let mut err = String::new();
                    if let Some(mut e) = c.stderr.take() {
                        let _ = e.read_to_string(&mut err);
                    }
                    (c.wait(), err)
                });
                if stopped(&flag) {
                    return Ok(());
                }
                if let Some((st, err)) = status {
                    tracing::warn!(source = %src, "journalctl exited ({st:?}): {}", err.trim());
                }
                std::thread::sleep(Duration::from_secs(1));
                if stopped(&flag) {
                    return Ok(());
                }
                let c = start(&opts, &cursor_file)?;
                *slot.lock().unwrap() = Some(c);
            }
        })?;
    Ok(
        SourceHandle::new(name.into(), stop, thread).with_on_stop(move || {
            if let Some(c) = child.lock().unwrap().as_mut() {
                let _ = c.kill();
            }
        }),
    )
}

/// The argument vector for journalctl (without the program).
pub fn args(opts: &Options, cursor: Option<&str>) -> Vec<String> {
    let mut a = vec![
        "--follow".to_string(),
        "--output=json".into(),
        "--no-pager".into(),
        "--quiet".into(),
    ];
    if let Some(d) = &opts.directory {
        a.push(format!("--directory={}", d.display()));
    }
    match cursor {
        Some(c) => a.push(format!("--after-cursor={c}")),
        // Not --lines=0: journalctl finds "the end" lazily and would skip
        // entries written between its start and its first wake-up.
        None => a.push(format!("--since=@{}", Timestamp::now().as_millis() / 1000)),
    }
    for u in &opts.units {
        a.push(format!("--unit={u}"));
    }
    for m in &opts.matches {
        a.push(m.clone());
    }
    a
}

fn start(opts: &Options, cursor_file: &Path) -> anyhow::Result<Child> {
    let cursor = state::read(cursor_file).map(|s| s.trim().to_string());
    let cursor = cursor.filter(|c| !c.is_empty());
    Command::new(&opts.journalctl)
        .args(args(opts, cursor.as_deref()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", opts.journalctl.display()))
}

/// Reads entries until EOF. Returns true if the receiver is gone.
fn pump(
    stdout: impl Read,
    src: &Arc<str>,
    cursor_file: &Path,
    tx: &Sender<Line>,
    flag: &AtomicBool,
) -> anyhow::Result<bool> {
    let mut reader = BufReader::with_capacity(256 * 1024, stdout);
    let mut buf = Vec::new();
    let mut cursor: Option<String> = None;
    let mut saved_at = Instant::now();
    let save = |c: &Option<String>| {
        if let Some(c) = c
            && let Err(e) = state::write(cursor_file, c)
        {
            tracing::warn!("cannot save the journal cursor: {e}");
        }
    };
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf)?;
        if n == 0 || stopped(flag) {
            save(&cursor);
            return Ok(false);
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&buf) else {
            continue;
        };
        let Some(entry) = entry_lines(&v) else {
            continue;
        };
        let received = Timestamp::now();
        for text in entry.lines {
            let line = Line {
                source: src.clone(),
                text,
                received,
            };
            if tx.send(line).is_err() {
                save(&cursor);
                return Ok(true);
            }
        }
        cursor = entry.cursor;
        if saved_at.elapsed() >= Duration::from_secs(1) {
            save(&cursor);
            saved_at = Instant::now();
        }
    }
}

/// The lines and cursor of one journal entry in JSON.
pub struct Entry {
    /// The entry's message lines.
    pub lines: Vec<String>,
    /// The entry's journal cursor, to resume after it.
    pub cursor: Option<String>,
}

/// Turns a `journalctl -o json` object into syslog-like lines.
pub fn entry_lines(v: &serde_json::Value) -> Option<Entry> {
    let field = |k: &str| -> Option<String> {
        match v.get(k)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(a) => {
                let bytes: Vec<u8> = a
                    .iter()
                    .filter_map(|x| x.as_u64().and_then(|n| u8::try_from(n).ok()))
                    .collect();
                Some(String::from_utf8_lossy(&bytes).into_owned())
            }
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    let message = field("MESSAGE")?;
    let cursor = field("__CURSOR");
    let ident = field("SYSLOG_IDENTIFIER")
        .or_else(|| field("_COMM"))
        .unwrap_or_else(|| "unknown".into());
    let ident: String = ident
        .chars()
        .map(|c| {
            if c.is_whitespace() || c == ':' || c == '[' {
                '_'
            } else {
                c
            }
        })
        .collect();
    let pid = field("SYSLOG_PID").or_else(|| field("_PID"));
    let host = field("_HOSTNAME").unwrap_or_else(|| "localhost".into());
    let host: String = host.chars().filter(|c| !c.is_whitespace()).collect();
    let time = field("__REALTIME_TIMESTAMP")
        .and_then(|t| t.parse::<u64>().ok())
        .map(|us| {
            humantime::format_rfc3339_micros(std::time::UNIX_EPOCH + Duration::from_micros(us))
                .to_string()
        })
        .unwrap_or_else(|| Timestamp::now().rfc3339());
    let prefix = match pid {
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty() => {
            format!("{time} {host} {ident}[{p}]: ")
        }
        _ => format!("{time} {host} {ident}: "),
    };
    let lines = message
        .split('\n')
        .filter(|l| !l.is_empty())
        .map(|l| cap_line(format!("{prefix}{}", l.trim_end_matches('\r'))))
        .collect();
    Some(Entry { lines, cursor })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"__CURSOR":"s=1;i=2","__REALTIME_TIMESTAMP":"1700000000123456","_HOSTNAME":"web1",
               "SYSLOG_IDENTIFIER":"sshd","_PID":"42","MESSAGE":"Failed password for root from 198.51.100.7 port 22 ssh2"}"#,
        )
        .unwrap();
        let e = entry_lines(&v).unwrap();
        assert_eq!(e.cursor.as_deref(), Some("s=1;i=2"));
        assert_eq!(
            e.lines,
            [
                "2023-11-14T22:13:20.123456Z web1 sshd[42]: Failed password for root from 198.51.100.7 port 22 ssh2"
            ]
        );
        let h = crate::syslog::parse(&e.lines[0]);
        assert_eq!(h.program, Some("sshd"));
        let v: serde_json::Value =
            serde_json::from_str(r#"{"_COMM":"x","MESSAGE":[104,105,10,255,33]}"#).unwrap();
        let e = entry_lines(&v).unwrap();
        assert_eq!(e.lines.len(), 2);
        assert!(e.lines[0].ends_with("x: hi"));
        assert!(e.lines[1].ends_with("x: \u{fffd}!"));
    }

    #[test]
    fn argv() {
        let o = Options {
            units: vec!["ssh.service".into()],
            matches: vec!["_COMM=sshd".into()],
            journalctl: "journalctl".into(),
            directory: None,
        };
        assert_eq!(
            args(&o, Some("s=1")),
            [
                "--follow",
                "--output=json",
                "--no-pager",
                "--quiet",
                "--after-cursor=s=1",
                "--unit=ssh.service",
                "_COMM=sshd"
            ]
        );
        assert!(args(&o, None).iter().any(|a| a.starts_with("--since=@")));
    }
}
