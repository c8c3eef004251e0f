//! palisade's XDP drop: an eBPF program on an interface's XDP hook that
//! drops packets from banned sources in the driver's receive path, before
//! the kernel builds a socket buffer for them, and the maps it reads.
//!
//! The program decides for each IPv4 or IPv6 frame (anything else, VLAN
//! tagged frames included, passes on to the kernel's stack untouched):
//!
//! 1. a source inside an allowed network passes (allow wins);
//! 2. a banned host (a hash map of addresses) or a source inside a banned
//!    network (a longest-prefix-match trie) is dropped while the ban's
//!    deadline lies ahead, and counted;
//! 3. everything else passes.
//!
//! It is an accelerator, never the authority: palisade's nftables table
//! still holds and enforces every decision, and the enforcer that drives
//! this crate keeps the maps a subset of that table (a ban reaches the maps
//! after the table, leaves them before it; an allow the other way round;
//! deadlines a little earlier than the table's). Whatever the program
//! passes, the table still judges. So a failure here costs speed, not
//! protection: the caller detaches on any doubt.
//!
//! Deadlines are `CLOCK_BOOTTIME` nanoseconds ([`boot_ns`]), the clock the
//! program reads, so they keep their meaning whatever the wall clock does.
//!
//! Attachments are bpf links (Linux 5.9+): one per interface, held by this
//! process. They end when it exits, so a stopped palisade leaves no program
//! behind, and no other tool can detach or replace them meanwhile.

pub mod asm;
mod program;
pub mod sys;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

pub use program::{DROP, PASS};

/// A deadline that never comes.
pub const FOREVER: u64 = u64::MAX;

/// Most allowed networks per family the maps take.
pub const MAX_ALLOWS: u32 = 65_536;
/// Most banned networks per family the maps take.
pub const MAX_NETS: u32 = 262_144;

/// What went wrong, and what the operator can do about it.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// The kernel refused to create a map or load the program: too old
    /// (XDP links need 5.9, the boot-time clock 5.8), or eBPF is
    /// restricted (`kernel.unprivileged_bpf_disabled` does not apply to
    /// root, but lockdown and seccomp do).
    #[error(
        "this kernel refused palisade's XDP program ({what}: {error}); it needs Linux 5.9 or newer and root. The nftables table still drops banned traffic{log}"
    )]
    Unsupported {
        /// The step that failed.
        what: &'static str,
        /// The kernel's answer.
        error: io::Error,
        /// The verifier's log, if it refused the program.
        log: String,
    },
    /// Another XDP program is attached to the interface already.
    #[error(
        "interface {device} already runs another XDP program; detach it (`ip link set dev {device} xdp off`) or remove {device} from xdp_devices. The nftables table still drops banned traffic arriving on it"
    )]
    Busy {
        /// The interface.
        device: String,
    },
    /// The interface does not exist in palisade's network namespace.
    #[error(
        "no interface {device}: its XDP drop is left out until the next full load (the nftables table still drops banned traffic arriving on it)"
    )]
    NoDevice {
        /// The interface.
        device: String,
    },
    /// The interface's driver has no XDP support.
    #[error(
        "interface {device} has no XDP support in its driver; list it in ingress_devices instead (the nftables table still drops banned traffic arriving on it)"
    )]
    NoDriverSupport {
        /// The interface.
        device: String,
    },
    /// Attaching to the interface failed otherwise.
    #[error("cannot attach the XDP drop to {device}: {error}")]
    Attach {
        /// The interface.
        device: String,
        /// The kernel's answer.
        error: io::Error,
    },
    /// A map of banned hosts is full (see [`Room`]).
    #[error("the XDP drop's {map} map is full")]
    Full {
        /// The map.
        map: &'static str,
    },
    /// A map refused a change.
    #[error("the XDP drop's {map} map refused a change: {error}")]
    Map {
        /// The map.
        map: &'static str,
        /// The kernel's answer.
        error: io::Error,
    },
}

/// How many banned hosts per family the maps take. The kernel sizes a hash
/// map's table of buckets from it up front (16 bytes per entry of room,
/// rounded up to a power of two), whatever it holds; networks and allows
/// take memory only as they are added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// IPv4 hosts.
    pub hosts4: u32,
    /// IPv6 hosts.
    pub hosts6: u32,
}

/// Which of the program's lists an element belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum List {
    /// Sources that always pass.
    Allow,
    /// Sources dropped until their deadline.
    Ban,
}

/// The maps of one generation of the program.
#[derive(Debug)]
struct Maps {
    allow4: OwnedFd,
    allow6: OwnedFd,
    host4: OwnedFd,
    host6: OwnedFd,
    net4: OwnedFd,
    net6: OwnedFd,
    dropped: OwnedFd,
}

impl Maps {
    fn new(room: Room) -> Result<Maps, XdpError> {
        use sys::{MapType::*, NO_PREALLOC};
        let make = |kind, key, value, max, flags, name: &'static str| {
            sys::map_create(kind, key, value, max, flags, name).map_err(|error| {
                XdpError::Unsupported {
                    what: "creating a map",
                    error,
                    log: String::new(),
                }
            })
        };
        Ok(Maps {
            allow4: make(LpmTrie, 8, 8, MAX_ALLOWS, NO_PREALLOC, "pal_allow4")?,
            allow6: make(LpmTrie, 20, 8, MAX_ALLOWS, NO_PREALLOC, "pal_allow6")?,
            host4: make(Hash, 4, 8, room.hosts4.max(1), NO_PREALLOC, "pal_host4")?,
            host6: make(Hash, 16, 8, room.hosts6.max(1), NO_PREALLOC, "pal_host6")?,
            net4: make(LpmTrie, 8, 8, MAX_NETS, NO_PREALLOC, "pal_net4")?,
            net6: make(LpmTrie, 20, 8, MAX_NETS, NO_PREALLOC, "pal_net6")?,
            // One counter per CPU, allocated up front (a per-CPU array
            // takes no other flag).
            dropped: make(PercpuArray, 4, 8, 1, 0, "pal_dropped")?,
        })
    }

    fn fds(&self) -> program::MapFds {
        program::MapFds {
            allow4: self.allow4.as_raw_fd(),
            allow6: self.allow6.as_raw_fd(),
            host4: self.host4.as_raw_fd(),
            host6: self.host6.as_raw_fd(),
            net4: self.net4.as_raw_fd(),
            net6: self.net6.as_raw_fd(),
            dropped: self.dropped.as_raw_fd(),
        }
    }

    /// The map an element goes to, its name, and its key.
    fn place(&self, list: List, addr: &[u8], len: u8) -> (&OwnedFd, &'static str, Key) {
        let v4 = addr.len() == 4;
        let host = u32::from(len) == addr.len() as u32 * 8;
        match (list, v4, host) {
            (List::Allow, true, _) => (&self.allow4, "allow4", Key::trie(addr, len)),
            (List::Allow, false, _) => (&self.allow6, "allow6", Key::trie(addr, len)),
            (List::Ban, true, true) => (&self.host4, "host4", Key::host(addr)),
            (List::Ban, false, true) => (&self.host6, "host6", Key::host(addr)),
            (List::Ban, true, false) => (&self.net4, "net4", Key::trie(addr, len)),
            (List::Ban, false, false) => (&self.net6, "net6", Key::trie(addr, len)),
        }
    }

    fn dropped(&self) -> u64 {
        let mut value = vec![0u8; 8 * sys::possible_cpus()];
        match sys::map_lookup(&self.dropped, &0u32.to_ne_bytes(), &mut value) {
            Ok(true) => value
                .chunks_exact(8)
                .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
                .sum(),
            _ => 0,
        }
    }
}

/// A map key: an address, or a trie's prefix length and address.
struct Key {
    bytes: [u8; 20],
    len: usize,
}

impl Key {
    fn host(addr: &[u8]) -> Key {
        let mut bytes = [0u8; 20];
        bytes[..addr.len()].copy_from_slice(addr);
        Key {
            bytes,
            len: addr.len(),
        }
    }

    fn trie(addr: &[u8], len: u8) -> Key {
        let mut bytes = [0u8; 20];
        bytes[..4].copy_from_slice(&u32::from(len).to_ne_bytes());
        bytes[4..4 + addr.len()].copy_from_slice(addr);
        Key {
            bytes,
            len: 4 + addr.len(),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The XDP drop on a set of interfaces, and the maps its program reads.
#[derive(Debug)]
pub struct XdpDrop {
    maps: Maps,
    program: OwnedFd,
    /// The interfaces it is attached to, each with its link.
    links: Vec<(String, OwnedFd)>,
    /// Packets dropped by earlier generations of maps.
    dropped_before: u64,
}

impl XdpDrop {
    /// Loads the program with empty maps (with `room`) and attaches it to
    /// each of `devices` that exists.
    /// Returns the drop and, for each interface it could not attach to,
    /// why: the caller reports those and goes on.
    pub fn attach(devices: &[String], room: Room) -> Result<(XdpDrop, Vec<XdpError>), XdpError> {
        let maps = Maps::new(room)?;
        let program = load(&maps)?;
        let mut links = Vec::new();
        let mut errors = Vec::new();
        for device in devices {
            match link(&program, device) {
                Ok(l) => links.push((device.clone(), l)),
                Err(e) => errors.push(e),
            }
        }
        Ok((
            XdpDrop {
                maps,
                program,
                links,
                dropped_before: 0,
            },
            errors,
        ))
    }

    /// Attaches the program to those of `devices` it does not run on yet
    /// (interfaces that were missing may exist now); returns why it could
    /// not, for each it could not.
    pub fn attach_more(&mut self, devices: &[String]) -> Vec<XdpError> {
        let mut errors = Vec::new();
        for device in devices {
            if self.links.iter().any(|(d, _)| d == device) {
                continue;
            }
            match link(&self.program, device) {
                Ok(l) => self.links.push((device.clone(), l)),
                Err(e) => errors.push(e),
            }
        }
        errors
    }

    /// The interfaces the program runs on.
    pub fn devices(&self) -> impl Iterator<Item = &str> {
        self.links.iter().map(|(d, _)| d.as_str())
    }

    /// Switches every interface, atomically, to a new program with empty
    /// maps (with `room`): from then on it drops nothing until elements
    /// are put again. This is how a full load starts (the table still
    /// drops everything meanwhile).
    pub fn reset(&mut self, room: Room) -> Result<(), XdpError> {
        let maps = Maps::new(room)?;
        let program = load(&maps)?;
        for (device, l) in &self.links {
            sys::link_update(l, &program).map_err(|error| XdpError::Attach {
                device: device.clone(),
                error,
            })?;
        }
        self.dropped_before += self.maps.dropped();
        self.maps = maps;
        self.program = program;
        Ok(())
    }

    /// Puts one element: `addr` in network byte order (4 or 16 bytes) and
    /// its prefix length; for a ban, its deadline ([`boot_ns`] or
    /// [`FOREVER`]). A host ban goes to a hash map, anything else to a trie.
    pub fn put(&self, list: List, addr: &[u8], len: u8, deadline: u64) -> Result<(), XdpError> {
        let (map, name, key) = self.maps.place(list, addr, len);
        sys::map_update(map, key.as_bytes(), &deadline.to_ne_bytes())
            .map_err(|error| map_error(name, error))
    }

    /// Removes one element; an element that is not there is no error.
    pub fn delete(&self, list: List, addr: &[u8], len: u8) -> Result<(), XdpError> {
        let (map, name, key) = self.maps.place(list, addr, len);
        sys::map_delete(map, key.as_bytes())
            .map(drop)
            .map_err(|error| XdpError::Map { map: name, error })
    }

    /// Puts many banned hosts of one family at once (`addrs`: addresses of
    /// 4 or 16 bytes back to back, `deadlines` one per address). Returns
    /// how many were put before an error, with the error.
    pub fn put_hosts(&self, addrs: &[u8], deadlines: &[u64]) -> Result<(), (usize, XdpError)> {
        if deadlines.is_empty() {
            return Ok(());
        }
        let size = addrs.len() / deadlines.len();
        let (map, name) = match size {
            4 => (&self.maps.host4, "host4"),
            _ => (&self.maps.host6, "host6"),
        };
        let values: Vec<u8> = deadlines.iter().flat_map(|d| d.to_ne_bytes()).collect();
        sys::map_update_batch(map, addrs, &values, deadlines.len() as u32)
            .map_err(|(done, error)| (done as usize, map_error(name, error)))
    }

    /// Every element of one list and family (`v6`): its address (network
    /// order), prefix length and deadline, handed to `each`. Banned hosts
    /// are read in batches, so a million of them cost a few hundred calls.
    pub fn read(
        &self,
        list: List,
        v6: bool,
        mut each: impl FnMut(&[u8], u8, u64),
    ) -> Result<(), XdpError> {
        let size = if v6 { 16 } else { 4 };
        let bits = (size * 8) as u8;
        let failed = |map: &'static str| move |error| XdpError::Map { map, error };
        let trie = |map: &OwnedFd, name: &'static str, each: &mut dyn FnMut(&[u8], u8, u64)| {
            let mut key = [0u8; 20];
            let mut next = [0u8; 20];
            let mut value = [0u8; 8];
            let mut at: Option<[u8; 20]> = None;
            while sys::map_next_key(
                map,
                at.as_ref().map(|k| &k[..4 + size]),
                &mut next[..4 + size],
            )
            .map_err(failed(name))?
            {
                key[..4 + size].copy_from_slice(&next[..4 + size]);
                if sys::map_lookup(map, &key[..4 + size], &mut value).map_err(failed(name))? {
                    let len = u32::from_ne_bytes(key[..4].try_into().unwrap()) as u8;
                    each(&key[4..4 + size], len, u64::from_ne_bytes(value));
                }
                at = Some(key);
            }
            Ok::<(), XdpError>(())
        };
        match (list, v6) {
            (List::Allow, false) => trie(&self.maps.allow4, "allow4", &mut each),
            (List::Allow, true) => trie(&self.maps.allow6, "allow6", &mut each),
            (List::Ban, _) => {
                let (hosts, nets, host_name, net_name) = if v6 {
                    (&self.maps.host6, &self.maps.net6, "host6", "net6")
                } else {
                    (&self.maps.host4, &self.maps.net4, "host4", "net4")
                };
                sys::map_lookup_batch(hosts, size, 4096, |k, v| each(k, bits, v))
                    .map_err(failed(host_name))?;
                trie(nets, net_name, &mut each)
            }
        }
    }

    /// Packets the program dropped since it was attached.
    pub fn dropped(&self) -> u64 {
        self.dropped_before + self.maps.dropped()
    }

    /// The loaded program, for [`sys::prog_test_run`].
    pub fn program(&self) -> &OwnedFd {
        &self.program
    }
}

fn map_error(map: &'static str, error: io::Error) -> XdpError {
    match error.raw_os_error() {
        Some(libc::E2BIG) => XdpError::Full { map },
        _ => XdpError::Map { map, error },
    }
}

fn load(maps: &Maps) -> Result<OwnedFd, XdpError> {
    let code = program::instructions(maps.fds());
    sys::prog_load_xdp(&code, "palisade_drop").map_err(|(error, log)| XdpError::Unsupported {
        what: "loading the program",
        error,
        log: if log.is_empty() {
            String::new()
        } else {
            format!("; verifier: {log}")
        },
    })
}

fn link(program: &OwnedFd, device: &str) -> Result<OwnedFd, XdpError> {
    let name = std::ffi::CString::new(device).map_err(|_| XdpError::NoDevice {
        device: device.to_string(),
    })?;
    // SAFETY: a valid C string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(XdpError::NoDevice {
            device: device.to_string(),
        });
    }
    sys::link_create_xdp(program, ifindex).map_err(|error| match error.raw_os_error() {
        Some(libc::EBUSY) | Some(libc::EEXIST) => XdpError::Busy {
            device: device.to_string(),
        },
        Some(libc::EOPNOTSUPP) => XdpError::NoDriverSupport {
            device: device.to_string(),
        },
        _ => XdpError::Attach {
            device: device.to_string(),
            error,
        },
    })
}

/// Now on `CLOCK_BOOTTIME`, in nanoseconds: the clock of deadlines.
pub fn boot_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}
