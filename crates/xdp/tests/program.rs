//! The drop program's decisions, run by the kernel on crafted frames
//! (`BPF_PROG_TEST_RUN`): bans, allows that win, deadlines, and frames an
//! attacker shapes to get past it or to make it read out of bounds.

use palisade_xdp::{DROP, FOREVER, List, PASS, Room, XdpDrop, boot_ns, sys};

const ROOM: Room = Room {
    hosts4: 1024,
    hosts6: 16,
};

fn drop_only() -> Option<XdpDrop> {
    if !palisade_lab::require_root_and(&[]) {
        return None;
    }
    let (x, errors) = XdpDrop::attach(&[], ROOM).expect("the program loads");
    assert!(errors.is_empty());
    Some(x)
}

/// An Ethernet frame carrying an IPv4 header from `src` (and `pad` bytes).
fn v4(src: [u8; 4], pad: usize) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + pad];
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[26..30].copy_from_slice(&src);
    f[30..34].copy_from_slice(&[198, 18, 0, 1]);
    f
}

fn v6(src: [u8; 16]) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 40 + 20];
    f[12..14].copy_from_slice(&[0x86, 0xdd]);
    f[14] = 0x60;
    f[22..38].copy_from_slice(&src);
    f
}

fn verdict(x: &XdpDrop, frame: &[u8]) -> u32 {
    sys::prog_test_run(x.program(), frame).expect("test run") as u32
}

const A: [u8; 4] = [198, 19, 0, 7];
const B: [u8; 4] = [198, 19, 0, 8];
const V6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0x42,
];

#[test]
fn banned_hosts_and_networks_drop_until_their_deadline_and_allows_win() {
    let Some(x) = drop_only() else { return };
    let (drop, pass) = (DROP as u32, PASS as u32);
    assert_eq!(verdict(&x, &v4(A, 0)), pass, "nothing banned yet");

    x.put(List::Ban, &A, 32, FOREVER).unwrap();
    assert_eq!(verdict(&x, &v4(A, 0)), drop);
    assert_eq!(verdict(&x, &v4(B, 0)), pass, "another host");

    // A deadline that has passed drops nothing; one ahead drops.
    x.put(List::Ban, &B, 32, boot_ns() - 1).unwrap();
    assert_eq!(verdict(&x, &v4(B, 0)), pass);
    x.put(List::Ban, &B, 32, boot_ns() + 60_000_000_000)
        .unwrap();
    assert_eq!(verdict(&x, &v4(B, 0)), drop);

    // A network.
    let c = [198, 19, 5, 9];
    x.put(List::Ban, &[198, 19, 5, 0], 24, FOREVER).unwrap();
    assert_eq!(verdict(&x, &v4(c, 0)), drop);
    assert_eq!(verdict(&x, &v4([198, 19, 6, 9], 0)), pass);

    // An allow covering a banned host and a banned network wins.
    x.put(List::Allow, &[198, 19, 0, 0], 16, FOREVER).unwrap();
    assert_eq!(verdict(&x, &v4(A, 0)), pass);
    assert_eq!(verdict(&x, &v4(c, 0)), pass);
    x.delete(List::Allow, &[198, 19, 0, 0], 16).unwrap();
    assert_eq!(verdict(&x, &v4(A, 0)), drop);

    // Removed, and removing again is no error.
    x.delete(List::Ban, &A, 32).unwrap();
    x.delete(List::Ban, &A, 32).unwrap();
    assert_eq!(verdict(&x, &v4(A, 0)), pass);

    // IPv6: a host, then its /64.
    assert_eq!(verdict(&x, &v6(V6)), pass);
    x.put(List::Ban, &V6, 128, FOREVER).unwrap();
    assert_eq!(verdict(&x, &v6(V6)), drop);
    x.delete(List::Ban, &V6, 128).unwrap();
    let mut net = V6;
    net[8..].fill(0);
    x.put(List::Ban, &net, 64, FOREVER).unwrap();
    assert_eq!(verdict(&x, &v6(V6)), drop);
    let mut other = V6;
    other[7] = 8;
    assert_eq!(verdict(&x, &v6(other)), pass, "outside the /64");

    // Several hosts at once.
    let hosts: Vec<u8> = (1..=100u8).flat_map(|i| [198, 19, 9, i]).collect();
    x.put_hosts(&hosts, &[FOREVER; 100]).unwrap();
    assert_eq!(verdict(&x, &v4([198, 19, 9, 50], 0)), drop);
    assert!(x.dropped() >= 7, "drops are counted: {}", x.dropped());

    // What the maps hold, read back.
    let mut held = Vec::new();
    x.read(List::Ban, false, |a, len, _| held.push((a.to_vec(), len)))
        .unwrap();
    assert_eq!(held.len(), 102, "100 hosts, B and the /24");
    assert!(held.contains(&(vec![198, 19, 5, 0], 24)));
    let mut allows = 0;
    x.read(List::Allow, false, |_, _, _| allows += 1).unwrap();
    assert_eq!(allows, 0);
}

#[test]
fn a_full_map_says_so() {
    let Some(mut x) = drop_only() else { return };
    x.reset(Room {
        hosts4: 4,
        hosts6: 1,
    })
    .unwrap();
    let hosts: Vec<u8> = (1..=5u8).flat_map(|i| [198, 19, 9, i]).collect();
    let (done, e) = x.put_hosts(&hosts, &[FOREVER; 5]).unwrap_err();
    assert_eq!(done, 4);
    assert!(
        matches!(e, palisade_xdp::XdpError::Full { map: "host4" }),
        "{e}"
    );
    let e = x
        .put(List::Ban, &V6, 128, FOREVER)
        .and_then(|()| x.put(List::Ban, &[0x20; 16], 128, FOREVER));
    assert!(
        matches!(e, Err(palisade_xdp::XdpError::Full { map: "host6" })),
        "{e:?}"
    );
}

#[test]
fn a_reset_empties_the_maps() {
    let Some(mut x) = drop_only() else { return };
    x.put(List::Ban, &A, 32, FOREVER).unwrap();
    assert_eq!(verdict(&x, &v4(A, 0)), DROP as u32);
    let before = x.dropped();
    x.reset(ROOM).unwrap();
    assert_eq!(verdict(&x, &v4(A, 0)), PASS as u32);
    assert_eq!(x.dropped(), before, "the count survives a reset");
}

/// Frames an attacker shapes: cut short, tagged, of other protocols, or
/// banned-looking bytes in the wrong place. The program must pass them on
/// to the kernel (whose firewall still judges them) and never read beyond
/// the frame (the verifier proves that; these show the checks hold).
#[test]
fn crafted_frames_pass_on_to_the_kernel() {
    let Some(x) = drop_only() else { return };
    x.put(List::Ban, &A, 32, FOREVER).unwrap();
    x.put(List::Ban, &V6, 128, FOREVER).unwrap();
    let pass = PASS as u32;
    let full = v4(A, 0);
    // Cut before the end of the source address, or right after the
    // Ethernet header (the kernel runs no test on less than that).
    for len in [14, 20, 29, 33] {
        assert_eq!(
            verdict(&x, &full[..len.min(full.len())]),
            pass,
            "{len} bytes"
        );
    }
    // IPv6 cut inside the source address.
    let full6 = v6(V6);
    assert_eq!(verdict(&x, &full6[..53]), pass);
    // A VLAN tag in front of IPv4: not parsed, so passed on.
    let mut tagged = vec![0u8; 4];
    tagged.extend_from_slice(&full);
    tagged[12..14].copy_from_slice(&[0x81, 0x00]);
    assert_eq!(verdict(&x, &tagged), pass);
    // ARP carrying the banned address where an IPv4 source would be.
    let mut arp = full.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    assert_eq!(verdict(&x, &arp), pass);
    // The banned address as destination only.
    let mut to = v4(B, 0);
    to[30..34].copy_from_slice(&A);
    assert_eq!(verdict(&x, &to), pass);
    // Still dropped with IPv4 options or trailing bytes.
    assert_eq!(verdict(&x, &v4(A, 40)), DROP as u32);
}

/// Attaching: in the driver or not at all, one program per interface, and
/// an error that says what to do otherwise.
#[test]
fn attaching_says_why_it_cannot() {
    if !palisade_lab::require_root_and(&[]) {
        return;
    }
    let ns = palisade_lab::Netns::new();
    ns.exec(
        "ip",
        &[
            "link", "add", "palx0", "type", "veth", "peer", "name", "palx1",
        ],
    );
    ns.run(|| {
        let devices = ["palx0", "lo", "absent0"].map(String::from);
        let (first, errors) = XdpDrop::attach(&devices, ROOM).expect("the program loads");
        assert_eq!(first.devices().collect::<Vec<_>>(), ["palx0"]);
        let said: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert!(said[0].contains("no XDP support in its driver"), "{said:?}");
        assert!(said[1].contains("no interface absent0"), "{said:?}");
        // Another program on the same interface is refused while the first
        // holds it, and it ends with its owner.
        let (_, errors) = XdpDrop::attach(&devices[..1], ROOM).unwrap();
        assert!(
            errors[0]
                .to_string()
                .contains("already runs another XDP program"),
            "{errors:?}"
        );
        drop(first);
        let (again, errors) = XdpDrop::attach(&devices[..1], ROOM).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(again.devices().count(), 1);
    });
}
