//! How long the endpoint takes to number and answer 100,000 bans: the
//! first refresh (a whole store scan), a bouncer's start-up answer, and a
//! poll with nothing new. Measured, not asserted; run it with
//! `cargo test --release -p palisade-crowdsec --test scale -- --ignored --nocapture`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_model::{Action, Decision, Net, Origin, Source, Span, Timestamp};
use palisade_store::{Options, Store};

const BANS: u32 = 100_000;

fn get(addr: std::net::SocketAddr, target: &str, key: &str) -> usize {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    assert!(buf.starts_with(b"HTTP/1.1 200"));
    buf.len()
}

#[test]
#[ignore = "a measurement: run it on its own, in release"]
fn a_hundred_thousand_bans() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("d.redb"), &Options::default()).unwrap());
    let now = Timestamp::now();
    store
        .write(|w| {
            for i in 0..BANS {
                let addr = std::net::Ipv4Addr::from(0xC612_0000u32 + i);
                let d = Decision::new(
                    Action::Ban,
                    Net::host(addr.into()),
                    now,
                    Span::For(Duration::from_secs(3600)),
                    Origin::new("n1", Source::Detector),
                )
                .with_rule("sshd");
                w.put(&d)?;
            }
            Ok(())
        })
        .unwrap();
    let keys = palisade_crowdsec::Keys::new(dir.path());
    let key = keys.add("bench").unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(palisade_crowdsec::serve(
        listener,
        palisade_crowdsec::Api::new(store, keys),
    ));
    let t = Instant::now();
    let bytes = get(addr, "/v1/decisions/stream?startup=true", &key);
    println!(
        "start-up answer with {BANS} bans (first scan included): {:?}, {bytes} bytes",
        t.elapsed()
    );
    std::thread::sleep(Duration::from_millis(250));
    let t = Instant::now();
    get(addr, "/v1/decisions/stream", &key);
    println!(
        "poll with nothing new (a rescan of {BANS} bans): {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    get(addr, "/v1/decisions/stream", &key);
    println!(
        "poll within 200 ms of the last (no rescan): {:?}",
        t.elapsed()
    );
}
