//! Splitting a syslog line into its header (time, host, program) and the
//! message, which palisade's own patterns are matched against.
//!
//! Understood shapes (an optional `<PRI>` first):
//! - BSD / RFC 3164: `Mar  3 12:00:00 host sshd[123]: message` (the host may
//!   be absent, as in lines sent to a local socket);
//! - RFC 3339 time: `2024-03-03T12:00:00.123+01:00 host sshd[123]: message`;
//! - RFC 5424: `<38>1 2024-03-03T12:00:00Z host sshd 123 - - message`.
//!
//! Anything else is a line without a header: the whole line is the message
//! (an nginx access log, for instance).

use palisade_model::Timestamp;

/// The parts of a syslog line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// The time text, if the line starts with one.
    pub time: Option<&'a str>,
    /// The host name, if the header has one.
    pub host: Option<&'a str>,
    /// The tag before `[pid]:` or `:`.
    pub program: Option<&'a str>,
    /// The text after the header (the whole line if there is none).
    pub message: &'a str,
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Where a line's header starts: after `<PRI>`, and whether it is RFC
/// 5424's (`<PRI>1 `), with the rest of the line.
fn after_pri(line: &str) -> (&str, bool) {
    if let Some(r) = line.strip_prefix('<') {
        let digits = r.bytes().take_while(u8::is_ascii_digit).count();
        if (1..=3).contains(&digits) && r.as_bytes().get(digits) == Some(&b'>') {
            let rest = &r[digits + 1..];
            return match rest.strip_prefix("1 ") {
                Some(r5) => (r5, true),
                None => (rest, false),
            };
        }
    }
    (line, false)
}

/// The time text of `line` and the text after it (spaces skipped), if the
/// line has a BSD or RFC 3339 time; for RFC 5424, the time and the rest.
/// What [`parse`] gives as [`Header::time`], without finding the host and
/// program: `palisade detect` reads every line's time.
pub fn time(line: &str) -> Option<&str> {
    time_and_rest(line).map(|(t, _, _)| t)
}

/// The time, the text after it, and whether the header is RFC 5424's.
fn time_and_rest(line: &str) -> Option<(&str, &str, bool)> {
    let (rest, rfc5424) = after_pri(line);
    if rfc5424 {
        let (time, after) = split_word(rest);
        return Some((time, after, true));
    }
    let tlen = time_len(rest)?;
    let after = skip_spaces(&rest[tlen..]);
    if after.len() == rest.len() - tlen {
        return None; // no space after the time
    }
    Some((&rest[..tlen], after, false))
}

/// Splits `line` (see the module docs).
pub fn parse(line: &str) -> Header<'_> {
    let none = Header {
        time: None,
        host: None,
        program: None,
        message: line,
    };
    let Some((time, after, rfc5424)) = time_and_rest(line) else {
        return none;
    };
    if rfc5424 {
        return parse_5424(after_pri(line).0).unwrap_or(none);
    }
    let (first, tail) = split_word(after);
    if let Some((prog, msg)) = tag(first, tail) {
        return Header {
            time: Some(time),
            host: None,
            program: Some(prog),
            message: msg,
        };
    }
    let host = first;
    let (second, tail2) = split_word(tail);
    if let Some((prog, msg)) = tag(second, tail2) {
        return Header {
            time: Some(time),
            host: Some(host),
            program: Some(prog),
            message: msg,
        };
    }
    Header {
        time: Some(time),
        host: Some(host),
        program: None,
        message: tail,
    }
}

fn parse_5424(s: &str) -> Option<Header<'_>> {
    let (time, s) = split_word(s);
    let (host, s) = split_word(s);
    let (app, s) = split_word(s);
    let (_procid, s) = split_word(s);
    let (_msgid, s) = split_word(s);
    let msg = if let Some(r) = s.strip_prefix("- ") {
        r
    } else if s == "-" {
        ""
    } else if s.starts_with('[') {
        // Structured data: skip `[...]` elements, honouring \] escapes.
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() && b[i] == b'[' {
            let mut esc = false;
            i += 1;
            while i < b.len() {
                match b[i] {
                    b'\\' if !esc => esc = true,
                    b']' if !esc => break,
                    _ => esc = false,
                }
                i += 1;
            }
            i += 1;
        }
        s.get(i..).unwrap_or("").trim_start_matches(' ')
    } else {
        s
    };
    let msg = msg.strip_prefix('\u{feff}').unwrap_or(msg);
    Some(Header {
        time: Some(time),
        host: (host != "-").then_some(host),
        program: (app != "-").then_some(app),
        message: msg,
    })
}

fn split_word(s: &str) -> (&str, &str) {
    match first_space(s.as_bytes()) {
        Some(i) => (&s[..i], skip_spaces(&s[i + 1..])),
        None => (s, ""),
    }
}

/// The index of the first space, eight bytes at a time (words are short
/// and of every length: byte-by-byte loops mispredict their ends).
fn first_space(b: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const SPACES: u64 = 0x2020_2020_2020_2020;
    let mut chunks = b.chunks_exact(8);
    for (n, chunk) in (&mut chunks).enumerate() {
        let x = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8])) ^ SPACES;
        // The lowest set high bit marks the first zero byte of x exactly.
        let zero = x.wrapping_sub(ONES) & !x & (ONES << 7);
        if zero != 0 {
            return Some(n * 8 + zero.trailing_zeros() as usize / 8);
        }
    }
    let rest = chunks.remainder();
    rest.iter()
        .position(|&c| c == b' ')
        .map(|i| b.len() - rest.len() + i)
}

fn skip_spaces(s: &str) -> &str {
    let n = s.bytes().take_while(|&c| c == b' ').count();
    &s[n..]
}

/// The bytes allowed in a program name.
const PROGRAM_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(c, b'-' | b'_' | b'.' | b'/' | b'@' | b'(' | b')');
        b += 1;
    }
    t
};

fn program_byte(b: u8) -> bool {
    PROGRAM_BYTES[usize::from(b)]
}

/// `sshd[123]:` or `sshd:` followed by the message.
fn tag<'a>(word: &'a str, tail: &'a str) -> Option<(&'a str, &'a str)> {
    let w = word.strip_suffix(':')?;
    let wb = w.as_bytes();
    let prog = match wb.iter().position(|&c| c == b'[') {
        Some(i) => {
            let pid = wb[i + 1..].strip_suffix(b"]")?;
            if pid.is_empty() || !pid.iter().all(u8::is_ascii_digit) {
                return None;
            }
            &w[..i]
        }
        None => w,
    };
    if prog.is_empty() || prog.len() > 64 || !prog.bytes().all(program_byte) {
        return None;
    }
    Some((prog, tail))
}

fn is_month(m: &[u8]) -> bool {
    matches!(
        m,
        b"Jan"
            | b"Feb"
            | b"Mar"
            | b"Apr"
            | b"May"
            | b"Jun"
            | b"Jul"
            | b"Aug"
            | b"Sep"
            | b"Oct"
            | b"Nov"
            | b"Dec"
    )
}

/// Length of a leading BSD or RFC 3339 time, if any.
fn time_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    if b.len() >= 15 && is_month(&b[..3]) && b[3] == b' ' {
        // "Mar  3 12:00:00" or "Mar 03 12:00:00", optional ".123456"
        let d = &b[4..6];
        let day_ok = (d[0] == b' ' || d[0].is_ascii_digit()) && d[1].is_ascii_digit();
        let t = &b[6..15];
        let time_ok = t[0] == b' '
            && t[1].is_ascii_digit()
            && t[2].is_ascii_digit()
            && t[3] == b':'
            && t[4].is_ascii_digit()
            && t[5].is_ascii_digit()
            && t[6] == b':'
            && t[7].is_ascii_digit()
            && t[8].is_ascii_digit();
        if day_ok && time_ok {
            let mut n = 15;
            if b.get(n) == Some(&b'.') {
                n += 1;
                while b.get(n).is_some_and(u8::is_ascii_digit) {
                    n += 1;
                }
            }
            return Some(n);
        }
        return None;
    }
    // 2024-03-03T12:00:00[.frac][Z|+hh:mm]
    if b.len() >= 19
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
    {
        let n = s.find(' ').unwrap_or(s.len());
        return Some(n);
    }
    None
}

/// Whether [`parse_time`] reads `t`, a BSD time (`Mar  3 12:00:00`) that
/// [`time`] found (so of the right shape: month, digits, separators), in
/// `year`; told without computing the instant, so that a caller that
/// needs the time of only a few lines can keep the text and read it later,
/// knowing now whether there is a time at all.
#[inline]
pub fn bsd_time_reads(t: &str, year: i64) -> bool {
    let b = t.as_bytes();
    if b.len() < 15 || b[3] != b' ' {
        return false;
    }
    if year < 1970 {
        // Before the epoch but for a leap second at its very edge: no
        // shortcut worth its own rule.
        return parse_time(t, year).is_some();
    }
    let d = |i: usize| u32::from(b[i].wrapping_sub(b'0'));
    let two = |i: usize| d(i) * 10 + d(i + 1);
    let day = if b[4] == b' ' { d(5) } else { two(4) };
    time_in_range(day, two(7), two(10), two(13))
}

/// The instant a header's time text names. BSD times carry no year or zone:
/// they are taken in UTC in `year`.
pub fn parse_time(text: &str, year: i64) -> Option<Timestamp> {
    // Every time this reads is ASCII; anything else (an attacker's RFC 5424
    // timestamp field) is not a time, and would make the byte offsets below
    // fall inside a character.
    if !text.is_ascii() {
        return None;
    }
    let b = text.as_bytes();
    if b.len() >= 15 && b[3] == b' ' {
        let month = MONTHS.iter().position(|m| text.starts_with(m))? as u32 + 1;
        let day: u32 = text[4..6].trim().parse().ok()?;
        let h: u32 = text[7..9].parse().ok()?;
        let mi: u32 = text[10..12].parse().ok()?;
        let se: u32 = text[13..15].parse().ok()?;
        let ms = frac_ms(&text[15..]);
        return civil(year, month, day, h, mi, se, ms, 0);
    }
    if b.len() >= 19 && b[10] == b'T' {
        let y: i64 = text[0..4].parse().ok()?;
        let mo: u32 = text[5..7].parse().ok()?;
        let d: u32 = text[8..10].parse().ok()?;
        let h: u32 = text[11..13].parse().ok()?;
        let mi: u32 = text[14..16].parse().ok()?;
        let se: u32 = text[17..19].parse().ok()?;
        let rest = &text[19..];
        let ms = frac_ms(rest);
        let zone = rest.trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
        let offset = match zone {
            "" | "Z" | "z" => 0,
            z if z.len() >= 5 && (z.starts_with('+') || z.starts_with('-')) => {
                let sign = if z.starts_with('-') { -1 } else { 1 };
                let zh: i64 = z[1..3].parse().ok()?;
                let zm: i64 = z[z.len() - 2..].parse().ok()?;
                sign * (zh * 3600 + zm * 60)
            }
            _ => return None,
        };
        return civil(y, mo, d, h, mi, se, ms, offset);
    }
    None
}

/// The time of a line as web servers write it: an access log's
/// `[03/Mar/2024:12:00:00 +0000]` (at the line's first `[`), or the
/// `2024/03/03 12:00:00` that starts a line of nginx's error log (local
/// time without a zone, read as UTC as BSD times are).
pub fn web_time(text: &str) -> Option<Timestamp> {
    let b = text.as_bytes();
    if b.len() >= 19
        && b[4] == b'/'
        && b[7] == b'/'
        && b[10] == b' '
        && b[13] == b':'
        && b[16] == b':'
    {
        return civil(
            i64::from(digits(b, 0..4)?),
            digits(b, 5..7)?,
            digits(b, 8..10)?,
            digits(b, 11..13)?,
            digits(b, 14..16)?,
            digits(b, 17..19)?,
            0,
            0,
        );
    }
    let open = text.find('[')?;
    let s = b.get(open + 1..open + 27)?;
    if s[2] != b'/'
        || s[6] != b'/'
        || s[11] != b':'
        || s[14] != b':'
        || s[17] != b':'
        || s[20] != b' '
        || !matches!(s[21], b'+' | b'-')
    {
        return None;
    }
    let month = MONTHS.iter().position(|m| m.as_bytes() == &s[3..6])? as u32 + 1;
    let sign = if s[21] == b'-' { -1 } else { 1 };
    let offset = sign * i64::from(digits(s, 22..24)? * 3600 + digits(s, 24..26)? * 60);
    civil(
        i64::from(digits(s, 7..11)?),
        month,
        digits(s, 0..2)?,
        digits(s, 12..14)?,
        digits(s, 15..17)?,
        digits(s, 18..20)?,
        0,
        offset,
    )
}

/// The number `b[range]` writes in decimal digits, if it is only digits.
fn digits(b: &[u8], range: std::ops::Range<usize>) -> Option<u32> {
    b.get(range)?.iter().try_fold(0u32, |n, &c| {
        c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
    })
}

fn frac_ms(s: &str) -> u64 {
    let Some(f) = s.strip_prefix('.') else {
        return 0;
    };
    let digits: String = f
        .chars()
        .take_while(char::is_ascii_digit)
        .chain("000".chars())
        .take(3)
        .collect();
    digits.parse().unwrap_or(0)
}

/// Milliseconds since the epoch of a civil UTC time minus `offset` seconds.
#[allow(clippy::too_many_arguments)]
pub(crate) fn civil(
    y: i64,
    mo: u32,
    d: u32,
    h: u32,
    mi: u32,
    s: u32,
    ms: u64,
    offset: i64,
) -> Option<Timestamp> {
    if !(1..=12).contains(&mo) || !time_in_range(d, h, mi, s) {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(s) - offset;
    if secs < 0 {
        return None;
    }
    Some(Timestamp::from_millis(secs as u64 * 1000 + ms))
}

/// Whether a day of the month and a time of day are in range (a leap
/// second's 60 included).
fn time_in_range(d: u32, h: u32, mi: u32, s: u32) -> bool {
    (1..=31).contains(&d) && h <= 23 && mi <= 59 && s <= 60
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The current UTC year.
pub fn current_year() -> i64 {
    let days = (Timestamp::now().as_millis() / 86_400_000) as i64;
    // Inverse of days_from_civil, year only.
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    yoe + era * 400 + i64::from(m <= 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_times() {
        let t = web_time(r#"1.2.3.4 - - [03/Mar/2024:12:00:00 +0100] "GET /""#).unwrap();
        assert_eq!(t.rfc3339(), "2024-03-03T11:00:00Z");
        let t = web_time(r#"1.2.3.4 - - [31/Dec/2023:23:30:00 -0045] "GET /""#).unwrap();
        assert_eq!(t.rfc3339(), "2024-01-01T00:15:00Z");
        let t = web_time("2024/03/01 00:00:02 [error] 2865#0: *47249 user").unwrap();
        assert_eq!(t.rfc3339(), "2024-03-01T00:00:02Z");
        for not_a_time in [
            "2024/03/01 00:0x:02 [error]",
            "2024/03/01 00 00:02 [error]",
            "2024/13/01 00:00:02 [error]",
            "2024/03/01 24:00:00 [error]",
            "2024/+3/01 00:00:02 [error]",
            "x [03/Mar/2024:12:00:00 0100]",
            "x [03/Xyz/2024:12:00:00 +0000]",
            "x [+3/Mar/2024:12:00:00 +0000]",
            "x [03/Mar/2024:12:00:00 +01",
            // A character of several bytes where a digit belongs.
            "x [03/Mar/2024:12:\u{e9}0:00 +0000]",
            "x [0\u{e9}Mar/2024:12:00:00 +0000]",
            "x [1969/Mar/2024",
            "",
        ] {
            assert_eq!(web_time(not_a_time), None, "{not_a_time:?}");
        }
        // Before the epoch.
        assert_eq!(web_time("x [31/Dec/1969:23:59:59 +0000]"), None);
    }

    /// `bsd_time_reads` says yes exactly where `parse_time` reads a time.
    #[test]
    fn bsd_time_reads_agrees_with_parse_time() {
        let mut n = 0;
        for month in ["Jan", "Feb", "Dec", "Foo"] {
            for day in [" 0", " 3", "03", "31", "32", "x3", " x"] {
                for (h, mi, s) in [
                    ("00", "00", "00"),
                    ("23", "59", "60"),
                    ("24", "00", "00"),
                    ("12", "60", "00"),
                    ("12", "00", "61"),
                    ("1x", "00", "00"),
                ] {
                    for frac in ["", ".5", ".123456"] {
                        let t = format!("{month} {day} {h}:{mi}:{s}{frac}");
                        // What `time` finds in a line (other texts are
                        // never asked about).
                        let line = format!("{t} host prog: x");
                        if time(&line) != Some(t.as_str()) {
                            continue;
                        }
                        for year in [1969, 1970, 2026] {
                            assert_eq!(
                                bsd_time_reads(&t, year),
                                parse_time(&t, year).is_some(),
                                "{t} in {year}"
                            );
                            n += 1;
                        }
                    }
                }
            }
        }
        // Months Jan, Feb, Dec; days " 0", " 3", "03", "31", "32"; five
        // times of digits; three fractions; three years.
        assert_eq!(n, 3 * 5 * 5 * 3 * 3);
        assert!(!bsd_time_reads("2024-03-03T12:00:00Z", 2026));
        assert!(!bsd_time_reads("Mar  3 12:60:00", 2026));
        assert!(bsd_time_reads("Dec 31 23:59:60.5", 2026));
    }

    #[test]
    fn bsd_with_host() {
        let h = parse("Mar  3 12:00:01 web1 sshd[123]: Failed password for root");
        assert_eq!(h.time, Some("Mar  3 12:00:01"));
        assert_eq!(h.host, Some("web1"));
        assert_eq!(h.program, Some("sshd"));
        assert_eq!(h.message, "Failed password for root");
    }

    #[test]
    fn bsd_without_host_and_pri() {
        let h = parse("<38>Mar 13 12:00:01 sshd[123]: hello");
        assert_eq!(h.host, None);
        assert_eq!(h.program, Some("sshd"));
        assert_eq!(h.message, "hello");
        let h = parse("Mar 13 12:00:01 host kernel: [ 1.2] IN=eth0");
        assert_eq!(h.program, Some("kernel"));
        assert_eq!(h.message, "[ 1.2] IN=eth0");
    }

    #[test]
    fn rfc3339_and_5424() {
        let h = parse("2024-03-03T12:00:00.123456+01:00 web1 postfix/smtpd[9]: warning: x");
        assert_eq!(h.program, Some("postfix/smtpd"));
        assert_eq!(h.message, "warning: x");
        let h = parse("<38>1 2024-03-03T12:00:00Z web1 sshd 123 - - Invalid user x");
        assert_eq!(h.program, Some("sshd"));
        assert_eq!(h.message, "Invalid user x");
        let h =
            parse("<38>1 2024-03-03T12:00:00Z web1 sshd 123 ID [a b=\"\\]\\]\"][c d=\"e\"] msg");
        assert_eq!(h.message, "msg");
    }

    /// `time` finds what `parse` finds, on every shape of header and on
    /// broken ones.
    #[test]
    fn time_alone_agrees_with_parse() {
        let lines = [
            "Mar  3 12:00:01 web1 sshd[123]: Failed password for root",
            "<38>Mar 13 12:00:01 sshd[123]: hello",
            "<38>1 2024-03-03T12:00:00Z web1 sshd 123 - - message",
            "<38>1 2024-03-03T12:00:00Z",
            "<38>1 ",
            "2024-03-03T12:00:00.123456+01:00 web1 postfix/smtpd[9]: warning: x",
            "Mar  3 12:00:01.123456 h x",
            "Mar  3 12:00:01",
            "Mar  3 12:00:01x",
            "Mar 33 12:00:01 h x",
            "<999>Mar  3 12:00:01 h x",
            "<1>",
            "<>Mar  3 12:00:01 h x",
            "203.0.113.9 - - [03/Mar/2024:12:00:00 +0000] \"GET / HTTP/1.1\" 401 0",
            "",
            "Mär  3 12:00:01 h x",
        ];
        for l in lines {
            assert_eq!(time(l), parse(l).time, "{l:?}");
        }
    }

    #[test]
    fn no_header() {
        let l = "203.0.113.9 - - [03/Mar/2024:12:00:00 +0000] \"GET / HTTP/1.1\" 401 0";
        assert_eq!(parse(l).message, l);
        assert_eq!(parse(l).program, None);
        // A user name cannot make itself the program.
        let h = parse("Mar  3 12:00:01 web1 hello sshd[1]: x");
        assert_eq!(h.program, None);
    }

    #[test]
    fn first_space_is_the_first_space() {
        for len in 0..40 {
            for at in 0..=len {
                let mut b = vec![b'x'; len];
                if at < len {
                    b[at] = b' ';
                }
                for later in at + 1..len {
                    let mut c = b.clone();
                    c[later] = b' ';
                    assert_eq!(first_space(&c), (at < len).then_some(at));
                }
                assert_eq!(first_space(&b), (at < len).then_some(at));
            }
        }
        assert_eq!(first_space("\u{a0}\u{2020} a".as_bytes()), Some(5));
    }

    #[test]
    fn times() {
        let t = parse_time("Mar  3 12:00:01", 2024).unwrap();
        assert_eq!(t.rfc3339(), "2024-03-03T12:00:01Z");
        let t = parse_time("2024-03-03T12:00:00.250+01:00", 0).unwrap();
        assert_eq!(t.as_millis() % 1000, 250);
        assert_eq!(t.rfc3339(), "2024-03-03T11:00:00Z");
        assert!(current_year() >= 2024);
    }

    #[test]
    fn a_time_with_other_characters_is_no_time() {
        for text in [
            "2024-03-03T12:00:0\u{e9}",
            "2024-03-03T12:\u{e9}0:00Z",
            "2024-03-03T12:00:00+0\u{e9}:00",
            "Mar \u{e9}3 12:00:01",
            "\u{e9}ar  3 12:00:01",
        ] {
            assert_eq!(parse_time(text, 2024), None, "{text}");
        }
        let h = parse("<34>1 2024-03-03T12:00:0\u{e9} host app - - - msg");
        assert_eq!(h.time, Some("2024-03-03T12:00:0\u{e9}"));
        assert_eq!(h.time.and_then(|t| parse_time(t, 2024)), None);
    }
}
