//! Every fuzz target: a short smoke by default (CI), ten million inputs
//! with `PALISADE_FUZZ_INPUTS=10000000` (see the crate's documentation).

use palisade_fuzz::{TARGETS, inputs_from_env, run, seed_from_env};

/// Inputs per target in the default smoke run.
const SMOKE: u64 = 5_000;
/// fail2ban's interpolation and translation cost milliseconds per input in
/// a debug build.
const SMOKE_FAIL2BAN: u64 = 500;
const STACK: usize = 64 << 20;

fn fuzz(name: &str, smoke: u64) {
    let target = TARGETS
        .iter()
        .find(|t| t.name == name)
        .expect("a known target");
    // A generous stack, as the daemon's main thread has: a debug build's
    // frames are large, and the regex crates recurse on nested groups and
    // stacked repetitions (a filter with hundreds of `*` in a row overflows
    // the 2 MiB of a test thread in the regex crate's compiler).
    let result = std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(move || run(target, inputs_from_env(smoke), seed_from_env()))
        .expect("a fuzzing thread")
        .join()
        .expect("the fuzzing thread ends");
    match result {
        Ok(report) => println!("{report}"),
        Err(failure) => panic!("{failure}"),
    }
}

#[test]
fn addresses() {
    fuzz("addresses", SMOKE);
}

#[test]
fn durations() {
    fuzz("durations", SMOKE);
}

#[test]
fn tokens() {
    fuzz("tokens", SMOKE);
}

#[test]
fn wire() {
    fuzz("wire", SMOKE);
}

#[test]
fn syslog() {
    fuzz("syslog", SMOKE);
}

#[test]
fn fail2ban_filter() {
    fuzz("fail2ban-filter", SMOKE_FAIL2BAN);
}

#[test]
fn fail2ban_regex() {
    fuzz("fail2ban-regex", SMOKE_FAIL2BAN);
}

#[test]
fn feed_lines() {
    fuzz("feed-lines", SMOKE);
}

#[test]
fn config() {
    fuzz("config", SMOKE);
}

#[test]
fn every_target_has_a_test() {
    assert_eq!(TARGETS.len(), 9);
}
