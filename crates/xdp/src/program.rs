//! The drop program, written out instruction by instruction (see the crate
//! docs for what it decides). Map descriptors are part of the code, so the
//! program is loaded again for every new set of maps.

use crate::asm::{Asm, op::*, reg::*};

/// Helper `bpf_map_lookup_elem(map, key)`: a pointer to the value or null.
const MAP_LOOKUP_ELEM: i32 = 1;
/// Helper `bpf_ktime_get_boot_ns()`: CLOCK_BOOTTIME, as the deadlines.
const KTIME_GET_BOOT_NS: i32 = 125;

/// `XDP_DROP` and `XDP_PASS`.
pub const DROP: i32 = 1;
/// See [`DROP`].
pub const PASS: i32 = 2;

/// Descriptors of the maps the program reads.
#[derive(Debug, Clone, Copy)]
pub struct MapFds {
    pub allow4: i32,
    pub allow6: i32,
    pub host4: i32,
    pub host6: i32,
    pub net4: i32,
    pub net6: i32,
    pub dropped: i32,
}

/// The program's instructions.
///
/// Stack layout (offsets from the frame pointer):
/// - IPv4: `-8` the trie key (prefix length 32, then the address at `-4`,
///   which is also the host map's key);
/// - IPv6: `-24` the trie key (prefix length 128, then the address at
///   `-20`, the host map's key);
/// - `-32` the counter's index.
///
/// Packet fields are read as they lie (network order) and compared with
/// keys stored the same way; EtherType constants are therefore written
/// byte-swapped.
pub fn instructions(m: MapFds) -> Vec<u8> {
    const ETH_IPV4: i32 = 0x0008; // 0x0800 read little-endian
    const ETH_IPV6: i32 = 0xdd86; // 0x86dd read little-endian
    let mut a = Asm::new();
    a.i(LDX_W, R2, R1, 0, 0) // data
        .i(LDX_W, R3, R1, 4, 0) // data_end
        .i(MOV_X, R4, R2, 0, 0)
        .i(ADD_K, R4, 0, 0, 14)
        .jump(JGT_X, R4, R3, 0, "pass")
        .i(LDX_H, R5, R2, 12, 0)
        .jump(JEQ_K, R5, 0, ETH_IPV4, "v4")
        .jump(JEQ_K, R5, 0, ETH_IPV6, "v6")
        .jump(JA, 0, 0, 0, "pass");

    // IPv4: source address at 14 + 12.
    a.label("v4")
        .i(MOV_X, R4, R2, 0, 0)
        .i(ADD_K, R4, 0, 0, 34)
        .jump(JGT_X, R4, R3, 0, "pass")
        .i(LDX_W, R5, R2, 26, 0)
        .i(ST_W, FP, 0, -8, 32)
        .i(STX_W, FP, R5, -4, 0);
    decide(&mut a, [m.allow4, m.host4, m.net4], -8, -4);

    // IPv6: source address at 14 + 8, 16 bytes copied as four words.
    a.label("v6")
        .i(MOV_X, R4, R2, 0, 0)
        .i(ADD_K, R4, 0, 0, 54)
        .jump(JGT_X, R4, R3, 0, "pass")
        .i(ST_W, FP, 0, -24, 128);
    for word in 0..4 {
        a.i(LDX_W, R5, R2, 22 + 4 * word, 0)
            .i(STX_W, FP, R5, -20 + 4 * word, 0);
    }
    decide(&mut a, [m.allow6, m.host6, m.net6], -24, -20);

    // A ban holds until its deadline (boot time, ns; u64::MAX forever).
    a.label("banned")
        .i(LDX_DW, R7, R0, 0, 0)
        .i(CALL, 0, 0, 0, KTIME_GET_BOOT_NS)
        .jump(JGE_X, R0, R7, 0, "pass")
        .i(ST_W, FP, 0, -32, 0);
    lookup(&mut a, m.dropped, -32)
        .jump(JEQ_K, R0, 0, 0, "drop")
        .i(LDX_DW, R1, R0, 0, 0)
        .i(ADD_K, R1, 0, 0, 1)
        .i(STX_DW, R0, R1, 0, 0);
    a.label("drop").i(MOV_K, R0, 0, 0, DROP).i(EXIT, 0, 0, 0, 0);
    a.label("pass").i(MOV_K, R0, 0, 0, PASS).i(EXIT, 0, 0, 0, 0);
    a.finish()
}

/// One family's decision, its keys on the stack (the trie key at `trie`,
/// the bare address at `host_key`): an allowed source passes, a banned host or
/// network goes to `banned` with r0 pointing at its deadline, anything
/// else passes.
fn decide(a: &mut Asm, [allow, host, net]: [i32; 3], trie: i32, host_key: i32) {
    lookup(a, allow, trie).jump(JNE_K, R0, 0, 0, "pass");
    lookup(a, host, host_key).jump(JNE_K, R0, 0, 0, "banned");
    lookup(a, net, trie).jump(JNE_K, R0, 0, 0, "banned");
    a.jump(JA, 0, 0, 0, "pass");
}

/// `r0 = lookup(map, fp + key)`; r1 to r5 are clobbered.
fn lookup(a: &mut Asm, map: i32, key: i32) -> &mut Asm {
    a.load_map(R1, map)
        .i(MOV_X, R2, FP, 0, 0)
        .i(ADD_K, R2, 0, 0, key)
        .i(CALL, 0, 0, 0, MAP_LOOKUP_ELEM)
}
