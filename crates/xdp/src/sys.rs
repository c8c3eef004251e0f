//! The `bpf` system call, for the few commands palisade uses. Each
//! `bpf_attr` is written field by field into a zeroed buffer at the offsets
//! of `include/uapi/linux/bpf.h`; the kernel requires unused bytes to be
//! zero.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const MAP_CREATE: libc::c_long = 0;
const MAP_LOOKUP_ELEM: libc::c_long = 1;
const MAP_UPDATE_ELEM: libc::c_long = 2;
const MAP_DELETE_ELEM: libc::c_long = 3;
const MAP_GET_NEXT_KEY: libc::c_long = 4;
const PROG_LOAD: libc::c_long = 5;
const PROG_TEST_RUN: libc::c_long = 10;
const MAP_LOOKUP_BATCH: libc::c_long = 24;
const MAP_UPDATE_BATCH: libc::c_long = 26;
const LINK_CREATE: libc::c_long = 28;
const LINK_UPDATE: libc::c_long = 29;

/// `BPF_PROG_TYPE_XDP`.
const PROG_TYPE_XDP: u32 = 6;
/// `BPF_XDP`, the attach type of an XDP link.
const ATTACH_XDP: u32 = 37;

/// Map types palisade creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapType {
    /// `BPF_MAP_TYPE_HASH`
    Hash = 1,
    /// `BPF_MAP_TYPE_PERCPU_ARRAY`
    PercpuArray = 6,
    /// `BPF_MAP_TYPE_LPM_TRIE` (longest-prefix match)
    LpmTrie = 11,
}

/// `BPF_F_NO_PREALLOC`: memory per element as it is added, not the whole
/// `max_entries` up front (required for LPM tries).
pub const NO_PREALLOC: u32 = 1;

fn bpf(cmd: libc::c_long, attr: &mut [u8]) -> io::Result<i64> {
    // SAFETY: `attr` is a bpf_attr for `cmd` laid out by the caller; every
    // pointer it holds refers to memory the caller keeps alive for the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn fd_of(r: i64) -> OwnedFd {
    // SAFETY: the command returned a new descriptor, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(r as i32) }
}

fn put32(attr: &mut [u8], at: usize, v: u32) {
    attr[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put64(attr: &mut [u8], at: usize, v: u64) {
    attr[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

fn raw(fd: &OwnedFd) -> u32 {
    fd.as_raw_fd() as u32
}

/// Creates a map. `name` is at most 15 bytes of `[A-Za-z0-9_.]`.
pub fn map_create(
    kind: MapType,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
    name: &str,
) -> io::Result<OwnedFd> {
    let mut attr = [0u8; 48];
    put32(&mut attr, 0, kind as u32);
    put32(&mut attr, 4, key_size);
    put32(&mut attr, 8, value_size);
    put32(&mut attr, 12, max_entries);
    put32(&mut attr, 16, flags);
    let n = name.len().min(15);
    attr[28..28 + n].copy_from_slice(&name.as_bytes()[..n]);
    bpf(MAP_CREATE, &mut attr).map(fd_of)
}

fn elem(map: &OwnedFd, key: &[u8], value: u64, flags: u64) -> [u8; 32] {
    let mut attr = [0u8; 32];
    put32(&mut attr, 0, raw(map));
    put64(&mut attr, 8, key.as_ptr() as u64);
    put64(&mut attr, 16, value);
    put64(&mut attr, 24, flags);
    attr
}

/// Adds or replaces one element.
pub fn map_update(map: &OwnedFd, key: &[u8], value: &[u8]) -> io::Result<()> {
    let mut attr = elem(map, key, value.as_ptr() as u64, 0);
    bpf(MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// Removes one element; false if it was not there.
pub fn map_delete(map: &OwnedFd, key: &[u8]) -> io::Result<bool> {
    let mut attr = elem(map, key, 0, 0);
    match bpf(MAP_DELETE_ELEM, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads one element into `value` (its whole size: for per-CPU maps, one
/// 8-byte-aligned slot per possible CPU); false if it is not there.
pub fn map_lookup(map: &OwnedFd, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    let mut attr = elem(map, key, value.as_mut_ptr() as u64, 0);
    match bpf(MAP_LOOKUP_ELEM, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The key after `key` (the first with `None`) into `next`; false at the
/// end.
pub fn map_next_key(map: &OwnedFd, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<bool> {
    let mut attr = elem(map, key.unwrap_or(&[]), next.as_mut_ptr() as u64, 0);
    if key.is_none() {
        put64(&mut attr, 8, 0);
    }
    match bpf(MAP_GET_NEXT_KEY, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads a hash map whole, `chunk` elements per call, handing each key and
/// 8-byte value to `each` (the map may change meanwhile: an element
/// added or removed during the read may be seen or not).
pub fn map_lookup_batch(
    map: &OwnedFd,
    key_size: usize,
    chunk: u32,
    mut each: impl FnMut(&[u8], u64),
) -> io::Result<()> {
    let mut keys = vec![0u8; key_size * chunk as usize];
    let mut values = vec![0u8; 8 * chunk as usize];
    // The position between calls: a bucket number for hash maps.
    let (mut position, mut next) = ([0u8; 16], [0u8; 16]);
    let mut first = true;
    loop {
        let mut attr = [0u8; 56];
        if !first {
            put64(&mut attr, 0, position.as_ptr() as u64);
        }
        put64(&mut attr, 8, next.as_mut_ptr() as u64);
        put64(&mut attr, 16, keys.as_mut_ptr() as u64);
        put64(&mut attr, 24, values.as_mut_ptr() as u64);
        put32(&mut attr, 32, chunk);
        put32(&mut attr, 36, raw(map));
        let r = bpf(MAP_LOOKUP_BATCH, &mut attr);
        let n = u32::from_ne_bytes(attr[32..36].try_into().unwrap()) as usize;
        let done = match r {
            Ok(_) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) => return Err(e),
        };
        for i in 0..n {
            let v = u64::from_ne_bytes(values[8 * i..8 * i + 8].try_into().unwrap());
            each(&keys[key_size * i..key_size * (i + 1)], v);
        }
        if done {
            return Ok(());
        }
        position = next;
        first = false;
    }
}

/// Adds or replaces `keys.len() / key_size` elements in one call (hash
/// maps; LPM tries have no batch operations). Returns how many the kernel
/// took before an error, with the error.
pub fn map_update_batch(
    map: &OwnedFd,
    keys: &[u8],
    values: &[u8],
    count: u32,
) -> Result<(), (u32, io::Error)> {
    let mut attr = [0u8; 56];
    put64(&mut attr, 16, keys.as_ptr() as u64);
    put64(&mut attr, 24, values.as_ptr() as u64);
    put32(&mut attr, 32, count);
    put32(&mut attr, 36, raw(map));
    match bpf(MAP_UPDATE_BATCH, &mut attr) {
        Ok(_) => Ok(()),
        Err(e) => Err((u32::from_ne_bytes(attr[32..36].try_into().unwrap()), e)),
    }
}

/// Loads an XDP program (`program`: instructions, see `asm`); the error
/// carries the verifier's log.
pub fn prog_load_xdp(program: &[u8], name: &str) -> Result<OwnedFd, (io::Error, String)> {
    let license = c"GPL";
    let mut log = vec![0u8; 1 << 16];
    let mut attr = [0u8; 72];
    put32(&mut attr, 0, PROG_TYPE_XDP);
    put32(&mut attr, 4, (program.len() / 8) as u32);
    put64(&mut attr, 8, program.as_ptr() as u64);
    put64(&mut attr, 16, license.as_ptr() as u64);
    let n = name.len().min(15);
    attr[48..48 + n].copy_from_slice(&name.as_bytes()[..n]);
    put32(&mut attr, 68, ATTACH_XDP);
    if let Ok(r) = bpf(PROG_LOAD, &mut attr) {
        return Ok(fd_of(r));
    }
    // Again with the verifier's log, which is only worth its cost on failure.
    put32(&mut attr, 24, 1);
    put32(&mut attr, 28, log.len() as u32);
    put64(&mut attr, 32, log.as_mut_ptr() as u64);
    match bpf(PROG_LOAD, &mut attr) {
        Ok(r) => Ok(fd_of(r)),
        Err(e) => {
            let text = String::from_utf8_lossy(&log);
            Err((e, text.trim_end_matches('\0').trim_end().to_string()))
        }
    }
}

/// `XDP_FLAGS_DRV_MODE`: in the driver, or not at all (the generic mode
/// runs after the socket buffer is built, and may copy every packet to make
/// room for it: dearer under a flood than the table's own drop).
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// Attaches `prog` to the XDP hook of interface `ifindex`, in its driver,
/// as a link: the attachment lasts as long as the returned descriptor (so
/// it ends with the process), and nothing else can replace or detach it
/// meanwhile.
pub fn link_create_xdp(prog: &OwnedFd, ifindex: u32) -> io::Result<OwnedFd> {
    let mut attr = [0u8; 16];
    put32(&mut attr, 0, raw(prog));
    put32(&mut attr, 4, ifindex);
    put32(&mut attr, 8, ATTACH_XDP);
    put32(&mut attr, 12, XDP_FLAGS_DRV_MODE);
    bpf(LINK_CREATE, &mut attr).map(fd_of)
}

/// Replaces the program of a link atomically: each packet meets the old
/// program or the new one.
pub fn link_update(link: &OwnedFd, prog: &OwnedFd) -> io::Result<()> {
    let mut attr = [0u8; 16];
    put32(&mut attr, 0, raw(link));
    put32(&mut attr, 4, raw(prog));
    bpf(LINK_UPDATE, &mut attr).map(drop)
}

/// Runs `prog` once on the frame `data` (`BPF_PROG_TEST_RUN`) and returns
/// its verdict.
pub fn prog_test_run(prog: &OwnedFd, data: &[u8]) -> io::Result<u32> {
    let mut out = vec![0u8; data.len() + 256];
    let mut attr = [0u8; 80];
    put32(&mut attr, 0, raw(prog));
    put32(&mut attr, 8, data.len() as u32);
    put32(&mut attr, 12, out.len() as u32);
    put64(&mut attr, 16, data.as_ptr() as u64);
    put64(&mut attr, 24, out.as_mut_ptr() as u64);
    put32(&mut attr, 32, 1);
    bpf(PROG_TEST_RUN, &mut attr)?;
    Ok(u32::from_ne_bytes(attr[4..8].try_into().unwrap()))
}

/// Possible CPUs, the number of slots of a per-CPU map's value.
pub fn possible_cpus() -> usize {
    // "0-1", "0,2-3": the highest CPU number plus one.
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| {
            s.trim()
                .split([',', '-'])
                .filter_map(|n| n.parse::<usize>().ok())
                .max()
        })
        .map_or(1, |m| m + 1)
}
