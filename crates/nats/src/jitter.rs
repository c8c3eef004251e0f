//! Random spreads for retries and catch-ups, so that a fleet that lost its
//! server at the same moment does not come back in the same moment.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// A random number (seeded per call by the standard library's hasher
/// keys; good enough to spread retries, not for secrets).
pub fn random() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// A random duration in `[0, bound)`.
pub fn below(bound: Duration) -> Duration {
    let ms = bound.as_millis() as u64;
    if ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(random() % ms)
}

/// `d` spread over `[d/2, 3d/2)`.
pub fn spread(d: Duration) -> Duration {
    d / 2 + below(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_stay_in_bounds() {
        let d = Duration::from_millis(1000);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let s = spread(d);
            assert!(s >= d / 2 && s < d * 3 / 2, "{s:?}");
            seen.insert(s);
            assert!(below(d) < d);
        }
        assert!(seen.len() > 50, "hardly random: {}", seen.len());
        assert_eq!(below(Duration::ZERO), Duration::ZERO);
    }
}
