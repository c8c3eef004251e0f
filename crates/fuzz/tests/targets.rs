//! Every fuzz target: a short smoke by default (CI), ten million inputs
//! with `PALISADE_FUZZ_INPUTS=10000000` (see the crate's documentation).

use palisade_fuzz::{TARGETS, inputs_from_env, run, seed_from_env};

/// Inputs per target in the default smoke run.
const SMOKE: u64 = 5_000;
/// The stack of a tokio worker thread, where the daemons parse what
/// arrives: a parser that recurses without bound fails here as it would
/// there (fail2ban patterns too deep for the regex crates' compilers are
/// refused by `palisade_detect::pyre`).
const STACK: usize = 2 << 20;

fn fuzz(name: &str, smoke: u64) {
    let target = TARGETS
        .iter()
        .find(|t| t.name == name)
        .expect("a known target");
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
    fuzz("fail2ban-filter", SMOKE);
}

#[test]
fn fail2ban_regex() {
    fuzz("fail2ban-regex", SMOKE);
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
