//! The parsers fuzzed, each with seeds, a dictionary of its syntax and a
//! check: `true` when the input was accepted, a panic when something is
//! wrong (a parser panicking, or a value that does not print back to
//! itself).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use palisade_model::{Guard, Net, NetMap, Span};
use palisade_wire::Token;

/// One fuzz target.
pub struct Target {
    /// The target's name, as the fuzz test names it.
    pub name: &'static str,
    /// Valid inputs the mutations start from.
    pub seeds: &'static [&'static str],
    /// Words of the input's grammar, spliced into inputs.
    pub dictionary: &'static [&'static str],
    /// Feeds one input to the parser: `true` if it was accepted; a panic is a
    /// bug.
    pub check: fn(&[u8]) -> bool,
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "addresses",
        seeds: &[
            "198.51.100.7",
            "203.0.113.0/24",
            "2001:db8::1",
            "2001:db8:bad::/48",
            "[2001:db8::7]",
            "::ffff:198.51.100.7",
            "64:ff9b::c633:6407",
            "0.0.0.0/0",
            "fe80::1%eth0",
            "10.1.2.3/8",
        ],
        dictionary: &[
            "::", "/", "/128", "/32", "ffff:", "[", "]", ".255", "%", "0x",
        ],
        check: addresses,
    },
    Target {
        name: "durations",
        seeds: &["90s", "10m", "1h30m", "2d", "1w", "forever", "0s", "1h2m5s"],
        dictionary: &[
            "s",
            "m",
            "h",
            "d",
            "w",
            "forever",
            "18446744073709551615",
            " ",
        ],
        check: durations,
    },
    Target {
        name: "tokens",
        seeds: &[
            "palisade1.node.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.BAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "palisade1.join.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.BAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "palisade1.read.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ],
        dictionary: &["palisade1.", ".", "node", "join", "read", "-", "_", "="],
        check: tokens,
    },
    Target {
        name: "wire",
        seeds: &[
            r#"{"id":1,"at":1700000000000,"intent":{"ban":{"target":"198.51.100.7","span":"1h","rule":"sshd","reason":"x","evidence":["line"],"source":"detector","actor":null,"list":null}}}"#,
            r#"{"id":2,"at":0,"intent":{"unban":{"target":"2001:db8::/48"}}}"#,
            r#"{"put":{"seq":7,"decision":{}}}"#,
            r#"{"snapshot_end":{"seq":9}}"#,
            r#"{"group":"dmz","envelopes":[]}"#,
            r#"{"results":[{"id":1,"outcome":"applied"}]}"#,
            r#"{"error":"over the rate limit"}"#,
            r#"{"node":"web1","version":"0.1.0","bans":3,"address":"2001:db8::5"}"#,
            r#"{"name":"web1"}"#,
            "ban.198-51-100-7",
            "allow.2001-db8--1.dmz",
        ],
        dictionary: &[
            "{",
            "}",
            "[",
            "]",
            "\"",
            ":",
            ",",
            "null",
            "true",
            "1e999",
            "-0",
            "\\u0000",
            "\"target\":",
            "\"span\":",
            "\"seq\":",
            "\"intent\":",
            "\"decision\":",
        ],
        check: wire,
    },
    Target {
        name: "syslog",
        seeds: &[
            "Mar  3 12:00:01 host sshd[123]: Failed password for root from 198.51.100.7 port 22 ssh2",
            "<34>1 2024-03-03T12:00:00.250+01:00 host app 123 ID47 [ex@1 a=\"b\\]\"] msg",
            "<13>Mar 03 12:00:00 sshd: x",
            "2024-03-03T12:00:00Z host prog: message",
            "<34>1 - - - - - -",
        ],
        dictionary: &[
            "<", ">", "1 ", "T", "Z", "+01:00", ".", "[", "]", "\\]", "\u{feff}", "Mar ", ": ",
        ],
        check: syslog,
    },
    Target {
        name: "fail2ban-filter",
        seeds: &[
            "[INCLUDES]\nbefore = common.conf\n[Definition]\n_daemon = sshd\nfailregex = ^%(__prefix_line)sFailed password for .* from <HOST>( port \\d+)?\n            ^Invalid user \\S+ from <ADDR>\nignoreregex =\ndatepattern = {^LN-BEG}\n[Init]\nmaxlines = 1\n",
            "[Definition]\nprefregex = ^<F-MLFID>%(__prefix_line)s</F-MLFID><F-CONTENT>.+</F-CONTENT>$\nfailregex = ^user (?P<user>\\w+) from <HOST>$\n            ^<F-NOFAIL>x</F-NOFAIL> <IP4>\nmode = %(normal)s\nnormal = a\n",
            "[Definition]\nfailregex = (?i)^auth failure [<HOST>]:\\d+ (?:(?!x).)*$\n[Init]\nmaxlines = 3\njournalmatch = _SYSTEMD_UNIT=sshd.service\n",
        ],
        dictionary: &[
            "%(",
            ")s",
            "<HOST>",
            "<ADDR>",
            "<IP4>",
            "<IP6>",
            "<F-USER>",
            "</F-USER>",
            "(?P<",
            "(?:",
            "(?!",
            "(?<=",
            "\\d",
            "\\S+",
            "[",
            "]",
            "\n ",
            "\n[Definition]\n",
            "failregex = ",
            "prefregex = ",
            "maxlines = ",
            "{^LN-BEG}",
            "%(known/",
        ],
        check: fail2ban_filter,
    },
    Target {
        name: "fail2ban-regex",
        seeds: &[
            "^%(__prefix_line)sFailed password for .* from <HOST>( port \\d+)?",
            "(?P<user>\\w+)@(?P=user) <HOST>",
            "(?i)^[^:]+: auth failure; (?:logname=\\S*) rhost=<HOST>\\s*$",
            "\\A(?s)x.*?\\Z",
            "(?<!a)b(?=c)[[:alpha:]]{2,}",
        ],
        dictionary: &[
            "(?P<", "(?P=", "(?:", "(?!", "(?<=", "(?<!", "\\d", "\\w", "\\Z", "\\A", "{1,2}", "[",
            "]", "[^", "|", "*?", "<HOST>", "<F-ID>", "</F-ID>", "\\",
        ],
        check: fail2ban_regex,
    },
    Target {
        name: "feed-lines",
        seeds: &[
            "198.51.100.7",
            "203.0.113.0/24 ; SBL256894",
            "# FireHOL level 1",
            "  2001:db8:bad::/48\t# seen 3 times",
            "10.0.0.0/8",
            "1.10.16.0/20 ; SBL",
        ],
        dictionary: &["#", ";", "/", "::", " ", "\t", "\r"],
        check: feed_lines,
    },
    Target {
        name: "config",
        seeds: &[
            "[agent]\nlocal_only = true\ndefault_ban = \"2h\"\n[[allow]]\nnet = \"198.51.100.0/24\"\ncomment = \"office\"\n",
            "[hub]\nlisten = \"0.0.0.0:7470\"\nmax_connections = 8192\n[hub.rate]\nper_second = 1.0\nburst = 5\n[[hub.allow]]\nnet = \"2001:db8::/32\"\ngroup = \"dmz\"\n",
            "[[feed]]\nname = \"lvl1\"\nurl = \"https://iplists.firehol.org/files/firehol_level1.netset\"\nevery = \"1h\"\nmax_bytes = 1000\ntimeout = \"1m\"\n",
            "[[source]]\nkind = \"file\"\npath = \"/var/log/auth.log\"\n[[rule]]\nname = \"sshd\"\npatterns = [\"^Failed password for .* from <HOST>\"]\n[[rule.stages]]\ncount = 3\nwithin = \"10m\"\nban = \"1d\"\n",
            "[[enforcer]]\nkind = \"command\"\nban = [\"fail2ban-client\", \"set\", \"{jail}\", \"banip\", \"{ip}\"]\n",
        ],
        dictionary: &[
            "[", "]", "[[", "]]", "=", "\"", "'''", "\n", "true", "1e308", "-1", "{", "}",
            "forever", "nats://", "mqtt://", "<HOST>",
        ],
        check: config,
    },
];

fn text(input: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(input)
}

fn addresses(input: &[u8]) -> bool {
    let s = text(input);
    let Ok(net) = Net::from_str(&s) else {
        return false;
    };
    let shown = net.to_string();
    assert_eq!(Net::from_str(&shown), Ok(net), "{net} does not parse back");
    let key = palisade_wire::keys::net_token(&net);
    assert_eq!(
        palisade_wire::keys::parse_net_token(&key),
        Some(net),
        "{key}"
    );
    let _ = Guard::default().check_ban(&net, &NetMap::<()>::new(), |_| None);
    let _ = palisade_model::guard::non_public(&net);
    let _ = palisade_feed::check_entry(&net, false);
    true
}

fn durations(input: &[u8]) -> bool {
    let Ok(span) = Span::from_str(&text(input)) else {
        return false;
    };
    let shown = span.to_string();
    assert_eq!(
        Span::from_str(&shown),
        Ok(span),
        "{shown} does not parse back"
    );
    let _ = span.expiry_from(palisade_model::Timestamp::now());
    true
}

fn tokens(input: &[u8]) -> bool {
    let Ok(token) = Token::from_str(&text(input)) else {
        return false;
    };
    let shown = token.to_string();
    let again = Token::from_str(&shown).expect("a token parses back");
    assert_eq!(again.to_string(), shown);
    let _ = token.bearer();
    true
}

fn wire(input: &[u8]) -> bool {
    use palisade_wire::*;
    let mut ok = false;
    ok |= serde_json::from_slice::<Envelope>(input).is_ok();
    ok |= serde_json::from_slice::<Vec<Envelope>>(input).is_ok();
    ok |= serde_json::from_slice::<StreamItem>(input).is_ok();
    ok |= serde_json::from_slice::<BusRequest>(input).is_ok();
    ok |= serde_json::from_slice::<BusReply>(input).is_ok();
    ok |= serde_json::from_slice::<IntentResult>(input).is_ok();
    ok |= serde_json::from_slice::<JoinRequest>(input).is_ok();
    ok |= serde_json::from_slice::<JoinResponse>(input).is_ok();
    ok |= serde_json::from_slice::<Heartbeat>(input).is_ok();
    ok |= serde_json::from_slice::<NodeBeat>(input).is_ok();
    if let Ok(s) = std::str::from_utf8(input)
        && let Some((action, net, group)) = keys::parse_decision_key(s)
    {
        let again = keys::decision_key(action, &net, group.as_deref());
        assert_eq!(keys::parse_decision_key(&again), Some((action, net, group)));
        ok = true;
    }
    ok
}

fn syslog(input: &[u8]) -> bool {
    use palisade_detect::syslog::{parse, parse_time, time};
    let line = text(input);
    let header = parse(&line);
    // `palisade detect` reads times with `time` alone: it must agree.
    assert_eq!(time(&line), header.time, "{line:?}");
    let _ = parse_time(&line, 2024);
    match header.time {
        Some(t) => {
            let _ = parse_time(t, 2024);
            true
        }
        None => false,
    }
}

thread_local! {
    /// The filter loader reads a file (its includes are found beside it):
    /// in memory where there is a tmpfs, so the disk does not set the pace.
    static FILTER_FILE: FilterFile = FilterFile(memory_dir().join(format!(
        "palisade-fuzz-{}-{:?}.conf",
        std::process::id(),
        std::thread::current().id()
    )));
}

/// The fuzzing thread's filter file, removed when the thread ends.
struct FilterFile(PathBuf);

impl Drop for FilterFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn memory_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fn fail2ban_filter(input: &[u8]) -> bool {
    use palisade_detect::fail2ban::Filter;
    FILTER_FILE.with(|file: &FilterFile| {
        let path = &file.0;
        std::fs::write(path, input).expect("write the filter file");
        let opts: BTreeMap<String, String> = [("mode".to_string(), "normal".to_string())].into();
        let Ok(def) = Filter::definition(Path::new(path), &opts) else {
            return false;
        };
        for re in def
            .prefregex
            .iter()
            .chain(&def.failregex)
            .chain(&def.ignoreregex)
        {
            translate(re, def.maxlines > 1, input);
        }
        true
    })
}

fn fail2ban_regex(input: &[u8]) -> bool {
    let s = text(input);
    translate(&s, input.len().is_multiple_of(2), input)
}

/// Translates a fail2ban (Python) regex and checks its shape; one in 4,096
/// further: relaxed and compiled. Compiling is the regex crates' work,
/// fuzzed upstream, and costs tens of thousands of times the translation
/// (`<HOST>` alone is a large alternation).
fn translate(re: &str, multiline: bool, input: &[u8]) -> bool {
    use palisade_detect::pyre;
    let resolved = palisade_detect::fail2ban::resolve_tags(re, false);
    let translated = pyre::translate(&resolved, multiline);
    let shaped = pyre::check_shape(&translated).is_ok();
    let seed = input
        .iter()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(*b)));
    if shaped && seed % 4096 == 0 {
        let _ = pyre::relax(&translated);
        return pyre::Pattern::compile(&translated).is_ok();
    }
    shaped
}

fn feed_lines(input: &[u8]) -> bool {
    let Ok(line) = std::str::from_utf8(input) else {
        return false;
    };
    match palisade_feed::parse_line(line) {
        Ok(Some(net)) => {
            let _ = palisade_feed::check_entry(&net, false);
            true
        }
        _ => false,
    }
}

fn config(input: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(input) else {
        return false;
    };
    match palisade_config::Config::parse(s, Path::new("/etc/palisade/palisade.toml")) {
        Ok(_) => true,
        Err(e) => {
            let _ = e.to_string();
            false
        }
    }
}
