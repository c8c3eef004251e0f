//! The tracker's large arrays backed by huge pages where the kernel allows.
//!
//! A pair's slot is found by a hash, so each failure touches a slot in a
//! different place of an array of up to a hundred megabytes: with 4 KiB
//! pages nearly every such touch also misses the processor's table of
//! page translations (a few thousand entries cover a few megabytes), and
//! the walk for the translation waits on memory too. Transparent huge
//! pages (2 MiB) make the whole array a few dozen translations.
//!
//! Asked for with `madvise(MADV_HUGEPAGE)`, which is only a hint: where
//! the kernel has them off (`/sys/kernel/mm/transparent_hugepage/enabled`
//! is `never`) or cannot find a free 2 MiB page, memory is what it was.
//! The arrays are reserved and not touched first, so the pages are huge
//! from their first use.

/// Size of a huge page on x86-64 and arm64 (with 4 KiB base pages).
const HUGE_PAGE: usize = 2 << 20;

/// Asks for the huge pages that fit wholly inside the room `v` reserved.
pub(super) fn advise_huge<T>(v: &Vec<T>) {
    let start = v.as_ptr() as usize;
    let end = start + v.capacity() * std::mem::size_of::<T>();
    let (from, to) = (start.next_multiple_of(HUGE_PAGE), end & !(HUGE_PAGE - 1));
    if from < to {
        // SAFETY: the range lies inside `v`'s allocation, and the advice
        // changes how its pages are backed, never their contents.
        unsafe {
            libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Huge pages backing the mapping that holds `at`, per the kernel.
    fn huge_kib_at(at: usize) -> Option<usize> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ')
                && let Some((a, b)) = range.split_once('-')
                && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                inside = (a..b).contains(&at);
            } else if inside && let Some(v) = line.strip_prefix("AnonHugePages:") {
                return v.trim().trim_end_matches("kB").trim().parse().ok();
            }
        }
        None
    }

    /// An array advised and then filled is backed by huge pages, on a
    /// kernel that has them on (always or on advice, as Debian's is).
    #[test]
    fn an_advised_array_gets_huge_pages() {
        let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        if !mode.contains("[madvise]") && !mode.contains("[always]") {
            println!("SKIPPED: transparent huge pages are off ({})", mode.trim());
            return;
        }
        let n = 16 << 20;
        let mut v: Vec<u8> = Vec::with_capacity(n);
        advise_huge(&v);
        v.resize(n, 1);
        let huge = huge_kib_at(v.as_ptr() as usize + n / 2).expect("a mapping of the array");
        assert!(huge >= 2048, "{huge} KiB of huge pages");
    }
}
