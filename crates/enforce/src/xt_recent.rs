//! The xt_recent enforcer (banban): bans primed into iptables' `recent`
//! match lists, which the operator's rules check:
//!
//! ```text
//! iptables -A INPUT -m recent --name THROTTLE --rcheck --seconds 180 -j DROP
//! iptables -A INPUT -m recent --name BLOCKER --rcheck --seconds 172800 -j DROP
//! ip6tables ... (the same lists hold IPv6 addresses)
//! ```
//!
//! Each list is a file under `/proc/net/xt_recent/` of the network
//! namespace (read through `/proc/thread-self/net`, so the namespace is the
//! one of the thread that created the enforcer). Writing `+ADDR` adds an
//! address or refreshes its last-seen time, `-ADDR` removes it, `/` empties
//! the list; every command is one `write` at offset 0 of a freshly opened
//! file (the kernel refuses anything else with `ESPIPE`).
//!
//! - A ban goes to one list: that of the first `route` whose rule pattern
//!   matches the decision's rule, else `default_list` (banban's "target").
//! - An unban removes the address from every list the enforcer knows, as
//!   banban does on a good pattern.
//! - xt_recent has no timeouts of its own: an entry matches while the rule's
//!   `--seconds N` has not passed since it was written. The agent removes
//!   entries when their decisions expire, so `--seconds` should be at least
//!   the longest ban (banban's README uses 180 s for THROTTLE and two days
//!   for BLOCKER); writing an address again refreshes its last-seen time.
//! - Lists hold single addresses only; network bans are skipped with a
//!   warning. Allows do not apply here (an allow lifts bans, which the agent
//!   sends as removals).
//! - A list exists only once an iptables rule names it; a missing list is
//!   reported with that advice and the other lists are still served.
//! - The kernel keeps at most `ip_list_tot` addresses per list (100 by
//!   default) and silently forgets the least recently seen beyond that. The
//!   limit is read at start from `/sys/module/xt_recent/parameters/
//!   ip_list_tot`, logged with how to raise it, and shown in the status.

use std::collections::{BTreeMap, HashSet};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use palisade_model::{Action, Net};
use serde::{Deserialize, Deserializer};
use tracing::{debug, info, warn};

use crate::enforcer::{
    Change, DRIFT_EXAMPLES, Drift, EnforceError, Enforcer, Entry, ObjectDrift, ObjectStatus, Status,
};
use crate::filter::{Filter, glob};
use crate::name::NameError;

/// Where the lists of the calling thread's network namespace live.
pub const PROC_DIR: &str = "/proc/thread-self/net/xt_recent";
/// The module parameter that bounds every list.
pub const IP_LIST_TOT: &str = "/sys/module/xt_recent/parameters/ip_list_tot";
/// The kernel's default for `ip_list_tot`.
pub const DEFAULT_IP_LIST_TOT: usize = 100;

/// `kind = "xt-recent"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XtRecentConfig {
    /// Name in logs and `palisade status` (default `xt_recent`).
    #[serde(default)]
    pub name: Option<String>,
    /// The list a ban goes to when no route matches its rule.
    #[serde(default, deserialize_with = "opt_list_name")]
    pub default_list: Option<String>,
    /// Rule patterns and their lists, first match wins: `{ rule =
    /// "sshd-throttle", list = "THROTTLE" }`.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// More lists an unban removes addresses from (besides those named in
    /// routes and `default_list`).
    #[serde(default, deserialize_with = "list_names")]
    pub also_unblock: Vec<String>,
    /// Where the lists are (for tests; default [`PROC_DIR`]).
    #[serde(default)]
    pub proc_dir: Option<PathBuf>,
    /// Which decisions the lists receive.
    #[serde(default)]
    pub filter: Filter,
}

/// Bans of rules matching `rule` (a glob) go to `list`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Glob pattern (`*`, `?`) on the decision's rule or jail.
    pub rule: String,
    /// The list those bans go to.
    #[serde(deserialize_with = "list_name")]
    pub list: String,
}

fn check_list_name(s: &str) -> Result<(), NameError> {
    Ok(palisade_model::decision::check_list_name(s)?)
}

fn list_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    check_list_name(&s).map_err(serde::de::Error::custom)?;
    Ok(s)
}

fn opt_list_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Some(list_name(d)?))
}

fn list_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    for s in &v {
        check_list_name(s).map_err(serde::de::Error::custom)?;
    }
    Ok(v)
}

/// The xt_recent enforcer (see the module docs).
#[derive(Debug)]
pub struct XtRecentEnforcer {
    name: String,
    config: XtRecentConfig,
    /// Every list palisade writes to or removes from, in a stable order.
    lists: Vec<String>,
    dir_path: PathBuf,
    /// The lists' directory, opened in the creating thread's namespace.
    dir: Option<OwnedFd>,
    /// The bans palisade keeps in each list (written, or to be written
    /// once the list exists).
    held: BTreeMap<String, HashSet<Net>>,
    ip_list_tot: Option<usize>,
    in_sync: bool,
}

impl XtRecentEnforcer {
    /// An enforcer for the network namespace of the calling thread.
    pub fn new(config: XtRecentConfig) -> Result<XtRecentEnforcer, EnforceError> {
        let mut lists: Vec<String> = Vec::new();
        for l in config
            .routes
            .iter()
            .map(|r| &r.list)
            .chain(config.default_list.iter())
            .chain(config.also_unblock.iter())
        {
            check_list_name(l)?;
            if !lists.contains(l) {
                lists.push(l.clone());
            }
        }
        if lists.is_empty() {
            return Err(EnforceError::Config(
                "an xt-recent enforcer needs a default_list or routes to know where bans go".into(),
            ));
        }
        let dir_path = config
            .proc_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(PROC_DIR));
        let dir = open_dir(&dir_path).ok();
        let ip_list_tot = read_ip_list_tot();
        match ip_list_tot {
            Some(n) if n <= DEFAULT_IP_LIST_TOT => warn!(
                ip_list_tot = n,
                "xt_recent keeps at most {n} addresses per list (ip_list_tot): beyond that the kernel silently forgets the least recently seen ones, and their bans stop working. {}",
                raise_advice(n)
            ),
            Some(n) => info!(
                ip_list_tot = n,
                "xt_recent keeps at most {n} addresses per list"
            ),
            None => {}
        }
        Ok(XtRecentEnforcer {
            name: config.name.clone().unwrap_or_else(|| "xt_recent".into()),
            config,
            lists,
            dir_path,
            dir,
            held: BTreeMap::new(),
            ip_list_tot,
            in_sync: false,
        })
    }

    /// The kernel's per-list limit, if known.
    pub fn ip_list_tot(&self) -> Option<usize> {
        self.ip_list_tot
    }

    /// Every list the enforcer knows.
    pub fn lists(&self) -> &[String] {
        &self.lists
    }

    /// The list a ban with this rule goes to.
    /// The list an entry goes to: the one its detector stage named, else
    /// the route for its rule, else the default list.
    ///
    /// A decision may only name a list this enforcer was configured with
    /// (in `routes`, `default_list` or `lists`): the name travels the
    /// network, and an unknown one falls back to the routes, so no decision
    /// can make palisade write anywhere the operator did not name.
    pub fn list_for_entry<'a>(&'a self, e: &'a Entry) -> Option<&'a str> {
        e.list
            .as_deref()
            .filter(|l| self.lists.iter().any(|known| known == l))
            .or_else(|| self.list_for(e.rule.as_deref()))
    }

    /// The list a ban of `rule` goes to: the first route that matches, else
    /// the default list.
    pub fn list_for(&self, rule: Option<&str>) -> Option<&str> {
        let r = rule.unwrap_or("");
        self.config
            .routes
            .iter()
            .find(|route| glob(&route.rule, r))
            .map(|route| route.list.as_str())
            .or(self.config.default_list.as_deref())
    }

    /// The addresses a list holds in the kernel.
    pub fn kernel_list(&mut self, list: &str) -> Result<Vec<Net>, EnforceError> {
        let text = self.read_list(list)?;
        Ok(parse_list(&text))
    }

    fn missing(&self, list: &str) -> EnforceError {
        EnforceError::Missing(format!(
            "xt_recent list {list} does not exist in this network namespace ({}/{list}): the kernel creates a list when an iptables rule names it; add the rule first, e.g. `iptables -A INPUT -m recent --name {list} --rcheck --seconds 3600 -j DROP`",
            self.dir_path.display()
        ))
    }

    fn dir_fd(&mut self) -> Result<i32, EnforceError> {
        if self.dir.is_none() {
            self.dir = Some(open_dir(&self.dir_path).map_err(|e| {
                EnforceError::Missing(format!(
                    "xt_recent is not available here ({}: {e}): load it (`modprobe xt_recent`) or add an iptables rule that uses `-m recent`",
                    self.dir_path.display()
                ))
            })?);
        }
        Ok(self.dir.as_ref().expect("just set").as_raw_fd())
    }

    /// Opens a list for one write: the kernel accepts a command only at
    /// offset 0 and moves the offset past it, and the file cannot seek, so
    /// every command gets its own open file.
    fn open_list(&mut self, list: &str) -> Result<OwnedFd, EnforceError> {
        // Checked again here, where a name becomes a file name.
        check_list_name(list)?;
        let dir = self.dir_fd()?;
        let c = CString::new(list).map_err(|_| self.missing(list))?;
        // SAFETY: dir is an open directory fd, c a NUL-terminated name.
        let fd = unsafe {
            libc::openat(
                dir,
                c.as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            )
        };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ENOENT) => self.missing(list),
                _ => EnforceError::Other(format!("cannot open xt_recent list {list}: {e}")),
            });
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Writes one command (`+ADDR`, `-ADDR`, `/`) to a list.
    fn write(&mut self, list: &str, line: &str) -> Result<(), EnforceError> {
        let fd = self.open_list(list)?;
        let buf = format!("{line}\n");
        // SAFETY: buf is valid for reads of its length.
        let rc = unsafe {
            libc::write(
                fd.as_raw_fd(),
                buf.as_ptr() as *const libc::c_void,
                buf.len(),
            )
        };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            return Err(EnforceError::Other(format!(
                "writing {line:?} to xt_recent list {list} failed: {e}"
            )));
        }
        Ok(())
    }

    fn read_list(&mut self, list: &str) -> Result<String, EnforceError> {
        check_list_name(list)?;
        let dir = self.dir_fd()?;
        let c = CString::new(list).map_err(|_| self.missing(list))?;
        // SAFETY: as in `file`.
        let fd = unsafe {
            libc::openat(
                dir,
                c.as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            )
        };
        if fd < 0 {
            return Err(self.missing(list));
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let mut text = String::new();
        std::io::Read::read_to_string(&mut f, &mut text)
            .map_err(|e| EnforceError::Other(format!("reading xt_recent list {list}: {e}")))?;
        Ok(text)
    }

    fn warn_if_over_limit(&self, list: &str) {
        let (Some(limit), Some(held)) = (self.ip_list_tot, self.held.get(list)) else {
            return;
        };
        if held.len() > limit {
            warn!(
                list,
                held = held.len(),
                ip_list_tot = limit,
                "xt_recent list {list} holds at most {limit} addresses but palisade has {} bans for it: the kernel has forgotten the least recently added ones. {}",
                held.len(),
                raise_advice(limit)
            );
        }
    }

    fn put(&mut self, e: &Entry, errors: &mut Vec<EnforceError>, skipped: &mut Vec<Net>) {
        if e.action != Action::Ban {
            debug!(net = %e.net, "xt_recent holds bans only; allow not applied");
            return;
        }
        if !e.net.is_host() {
            skipped.push(e.net);
            return;
        }
        let Some(list) = self.list_for_entry(e).map(str::to_string) else {
            debug!(net = %e.net, rule = ?e.rule, "no xt_recent list for this rule");
            return;
        };
        // Held even if the write fails (a list no iptables rule has made
        // yet): the drift check writes it once the list exists.
        let written = self.write(&list, &format!("+{}", e.net.addr()));
        self.held.entry(list).or_default().insert(e.net);
        if let Err(err) = written {
            push_once(errors, err);
        }
    }

    fn unblock(&mut self, net: &Net, errors: &mut Vec<EnforceError>) {
        if !net.is_host() {
            return;
        }
        for list in self.lists.clone() {
            if let Some(h) = self.held.get_mut(&list) {
                h.remove(net);
            }
            if let Err(e) = self.write(&list, &format!("-{}", net.addr())) {
                push_once(errors, e);
            }
        }
    }
}

/// Keeps one error per distinct message (a missing list fails every write).
fn push_once(errors: &mut Vec<EnforceError>, e: EnforceError) {
    let text = e.to_string();
    if !errors.iter().any(|x| x.to_string() == text) {
        errors.push(e);
    }
}

fn log_skipped(skipped: &[Net]) {
    if let Some(first) = skipped.first() {
        warn!(
            count = skipped.len(),
            first = %first,
            "xt_recent lists hold single addresses: {} network ban(s) not applied (first {first}); use the nftables or ipset enforcer for networks",
            skipped.len()
        );
    }
}

fn raise_advice(n: usize) -> String {
    let module = Path::new("/sys/module/xt_recent/initstate").exists();
    let how = if module {
        "`options xt_recent ip_list_tot=N` in /etc/modprobe.d/xt_recent.conf, then reload the module"
    } else {
        "xt_recent.ip_list_tot=N on the kernel command line (the module is built in), then reboot"
    };
    format!("To keep more than {n}, set {how}")
}

fn open_dir(path: &Path) -> std::io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: c is a NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `ip_list_tot` of the running kernel.
pub fn read_ip_list_tot() -> Option<usize> {
    std::fs::read_to_string(IP_LIST_TOT)
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The addresses of a list file (`src=ADDR ttl: ... last_seen: ...`).
pub fn parse_list(text: &str) -> Vec<Net> {
    text.lines()
        .filter_map(|l| {
            l.split_whitespace()
                .next()?
                .strip_prefix("src=")?
                .parse()
                .ok()
        })
        .collect()
}

impl Enforcer for XtRecentEnforcer {
    fn name(&self) -> &str {
        &self.name
    }

    /// Makes every list hold exactly its bans among `entries`: addresses
    /// that should not be there are removed, the others written (which
    /// refreshes their last-seen time). No list is emptied first, so there
    /// is no moment without the bans that stay.
    fn replace_all(
        &mut self,
        entries: &mut dyn Iterator<Item = Entry>,
    ) -> Result<(), EnforceError> {
        let now = palisade_model::Timestamp::now();
        let mut wanted: BTreeMap<String, Vec<Net>> = BTreeMap::new();
        let mut skipped = Vec::new();
        for e in entries {
            if e.action != Action::Ban || e.expires.is_some_and(|t| t <= now) {
                continue;
            }
            if !e.net.is_host() {
                skipped.push(e.net);
                continue;
            }
            if let Some(list) = self.list_for_entry(&e) {
                wanted.entry(list.to_string()).or_default().push(e.net);
            }
        }
        log_skipped(&skipped);
        let mut errors = Vec::new();
        self.held.clear();
        for list in self.lists.clone() {
            let want: HashSet<Net> = wanted
                .remove(&list)
                .unwrap_or_default()
                .into_iter()
                .collect();
            let current = match self.kernel_list(&list) {
                Ok(c) => c,
                Err(e) => {
                    // Written by the drift check once the list exists.
                    errors.push(e);
                    self.held.insert(list.clone(), want);
                    continue;
                }
            };
            for stale in current.iter().filter(|n| !want.contains(n)) {
                if let Err(e) = self.write(&list, &format!("-{}", stale.addr())) {
                    push_once(&mut errors, e);
                }
            }
            for net in &want {
                if let Err(e) = self.write(&list, &format!("+{}", net.addr())) {
                    push_once(&mut errors, e);
                }
            }
            self.held.insert(list.clone(), want);
            self.warn_if_over_limit(&list);
        }
        self.in_sync = errors.is_empty();
        EnforceError::check(errors)
    }

    fn apply(&mut self, changes: &[Change]) -> Result<(), EnforceError> {
        let mut errors = Vec::new();
        let mut skipped = Vec::new();
        for c in changes {
            match c {
                Change::Put(e) => self.put(e, &mut errors, &mut skipped),
                Change::Remove {
                    action: Action::Ban,
                    net,
                } => self.unblock(net, &mut errors),
                Change::Remove { .. } => {}
            }
        }
        log_skipped(&skipped);
        for list in self.lists.clone() {
            self.warn_if_over_limit(&list);
        }
        self.in_sync = errors.is_empty();
        EnforceError::check(errors)
    }

    /// Removes the addresses palisade put in its lists (the lists belong to
    /// the iptables rules that name them and stay).
    fn remove(&mut self) -> Result<(), EnforceError> {
        let mut errors = Vec::new();
        let held = std::mem::take(&mut self.held);
        for (list, nets) in held {
            for net in nets {
                if let Err(e) = self.write(&list, &format!("-{}", net.addr())) {
                    push_once(&mut errors, e);
                }
            }
        }
        self.in_sync = false;
        EnforceError::check(errors)
    }

    /// Only missing addresses count: the iptables rules add their own
    /// entries (`--set`), so a list may hold more than palisade put there.
    /// A repair writes the missing ones, which is how bans reach a list
    /// whose iptables rule appeared after the agent started.
    fn drift(&mut self, repair: bool) -> Result<Drift, EnforceError> {
        let mut drift = Drift::default();
        let mut errors = Vec::new();
        let mut unrepaired = false;
        for list in self.lists.clone() {
            let Some(want) = self.held.get(&list).filter(|h| !h.is_empty()).cloned() else {
                continue;
            };
            let mut name = format!("xt_recent {list}");
            let (have, have_list): (HashSet<Net>, bool) = match self.kernel_list(&list) {
                Ok(v) => (v.into_iter().collect(), true),
                Err(_) => {
                    name.push_str(" (missing: no iptables rule names it)");
                    (HashSet::new(), false)
                }
            };
            let mut missing: Vec<Net> = want.difference(&have).copied().collect();
            if missing.is_empty() {
                continue;
            }
            missing.sort();
            if self.ip_list_tot.is_some_and(|limit| want.len() > limit) {
                // The kernel forgets the oldest beyond ip_list_tot; status
                // says so, and rewriting would only churn the list.
                continue;
            }
            drift.objects.push(ObjectDrift {
                name,
                missing: missing.len(),
                extra: 0,
                examples: missing
                    .iter()
                    .take(DRIFT_EXAMPLES)
                    .map(|n| format!("missing {}", n.addr()))
                    .collect(),
            });
            if repair && !have_list {
                unrepaired = true;
            } else if repair {
                for net in &missing {
                    if let Err(e) = self.write(&list, &format!("+{}", net.addr())) {
                        push_once(&mut errors, e);
                    }
                }
            }
        }
        if repair {
            self.in_sync = errors.is_empty() && !unrepaired;
            EnforceError::check(errors)?;
        }
        Ok(drift)
    }

    fn status(&mut self, _kernel: bool) -> Result<Status, EnforceError> {
        let mut objects = Vec::new();
        let mut in_sync = self.in_sync;
        for list in self.lists.clone() {
            let held = self.held.get(&list).map_or(0, HashSet::len);
            let in_kernel = self.kernel_list(&list).ok().map(|v| v.len());
            let mut name = format!("xt_recent {list}");
            if in_kernel.is_none() {
                name.push_str(" (missing: no iptables rule names it)");
            }
            let expected = match self.ip_list_tot {
                Some(limit) => {
                    name.push_str(&format!(" (ip_list_tot {limit}"));
                    if held > limit {
                        in_sync = false;
                        name.push_str(&format!(
                            ": {} bans do not fit, the kernel forgot them",
                            held - limit
                        ));
                    }
                    name.push(')');
                    held.min(limit)
                }
                None => held,
            };
            objects.push(ObjectStatus {
                name,
                entries: held,
                expected,
                in_kernel,
            });
        }
        Ok(Status { objects, in_sync })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_lists() {
        let text = "src=198.18.0.1 ttl: 64 last_seen: 4295 oldest_pkt: 1 4295\nsrc=2001:0db8:0000:0000:0000:0000:0000:0001 ttl: 64 last_seen: 1 oldest_pkt: 1 1\n";
        let nets = parse_list(text);
        assert_eq!(nets.len(), 2);
        assert_eq!(nets[0].to_string(), "198.18.0.1");
        assert_eq!(nets[1].to_string(), "2001:db8::1");
    }

    #[test]
    fn routes_pick_lists_first_match_then_default() {
        let x = XtRecentEnforcer::new(XtRecentConfig {
            name: None,
            default_list: Some("BLOCKER".into()),
            routes: vec![
                Route {
                    rule: "*-throttle".into(),
                    list: "THROTTLE".into(),
                },
                Route {
                    rule: "sshd*".into(),
                    list: "SSH".into(),
                },
            ],
            also_unblock: vec!["OLD".into()],
            proc_dir: Some("/nonexistent".into()),
            filter: Filter::default(),
        })
        .unwrap();
        assert_eq!(x.list_for(Some("sshd-throttle")), Some("THROTTLE"));
        assert_eq!(x.list_for(Some("sshd")), Some("SSH"));
        assert_eq!(x.list_for(None), Some("BLOCKER"));
        assert_eq!(x.lists(), ["THROTTLE", "SSH", "BLOCKER", "OLD"]);
        assert!(check_list_name("a/b").is_err());
        assert!(check_list_name("..").is_err());
        assert!(check_list_name("BLOCKER").is_ok());
    }

    #[test]
    fn no_lists_is_a_config_error() {
        let e = XtRecentEnforcer::new(XtRecentConfig {
            name: None,
            default_list: None,
            routes: vec![],
            also_unblock: vec![],
            proc_dir: None,
            filter: Filter::default(),
        })
        .unwrap_err();
        assert!(e.to_string().contains("default_list"), "{e}");
    }
}
