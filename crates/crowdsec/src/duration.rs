//! Durations written the way Go's `time.Duration.String` writes them, which
//! is what CrowdSec's bouncers parse (`59m59.725815808s`, `-35.592378ms`).

/// `millis` as Go writes a duration (palisade keeps milliseconds).
pub fn go_duration(millis: i64) -> String {
    if millis == 0 {
        return "0s".into();
    }
    let sign = if millis < 0 { "-" } else { "" };
    let ms = millis.unsigned_abs();
    if ms < 1000 {
        return format!("{sign}{ms}ms");
    }
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, frac) = (rest / 1000, rest % 1000);
    let mut out = String::from(sign);
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&s.to_string());
    if frac > 0 {
        let digits = format!("{frac:03}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
    out.push('s');
    out
}

#[cfg(test)]
mod tests {
    use super::go_duration;

    #[test]
    fn writes_what_go_writes() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(35), "35ms");
        assert_eq!(go_duration(-35), "-35ms");
        assert_eq!(go_duration(1000), "1s");
        assert_eq!(go_duration(59 * 60_000 + 59_725), "59m59.725s");
        assert_eq!(go_duration(3_600_000), "1h0m0s");
        assert_eq!(go_duration(7_199_500), "1h59m59.5s");
        assert_eq!(go_duration(-9_179), "-9.179s");
        assert_eq!(go_duration(60_000), "1m0s");
    }
}
