//! The addresses of the palisade network itself: this host's, the hub's
//! and the brokers'. They are never banned (the hub and workers refuse it)
//! and every agent allows the ones it joins, so the network cannot cut
//! itself off.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use palisade_model::Net;

/// The addresses of this host's interfaces (getifaddrs).
pub fn host_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    // SAFETY: getifaddrs allocates a list we only read and then free; every
    // pointer is checked before use and the family decides the sockaddr type.
    unsafe {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut list) != 0 {
            return out;
        }
        let mut cur = list;
        while !cur.is_null() {
            let addr = (*cur).ifa_addr;
            if !addr.is_null() {
                match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(addr as *const libc::sockaddr_in);
                        out.push(IpAddr::from(
                            u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                        ));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(addr as *const libc::sockaddr_in6);
                        out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    out
}

pub fn is_link_local(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Addresses worth protecting: not loopback or link-local (never banned
/// anyway), canonical, without repeats.
fn worth_protecting(addrs: impl IntoIterator<Item = IpAddr>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = addrs
        .into_iter()
        .map(palisade_model::net::canonical_addr)
        .filter(|a| !a.is_loopback() && !a.is_unspecified() && !is_link_local(a))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The hub's own addresses: the listen address, or every address of this
/// host when it listens on all of them, and the addresses in `names` and
/// `public_url`.
pub fn hub_addresses(
    listen: SocketAddr,
    names: &[String],
    public_url: Option<&str>,
) -> Vec<IpAddr> {
    let mut all = if listen.ip().is_unspecified() {
        host_addresses()
    } else {
        vec![listen.ip()]
    };
    all.extend(names.iter().filter_map(|n| n.parse::<IpAddr>().ok()));
    if let Some(url) = public_url {
        all.extend(url_addresses(url));
    }
    worth_protecting(all)
}

/// The addresses the hosts of a join URL (`https://H:P`, `nats://H:P,H:P`,
/// `mqtt://U:P@H:P`) resolve to now.
pub fn url_addresses(url: &str) -> Vec<IpAddr> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let mut out = Vec::new();
    for part in rest.split(',') {
        let hostport = part
            .rsplit_once('@')
            .map_or(part, |(_, h)| h)
            .split('/')
            .next()
            .unwrap_or_default();
        let with_port = if hostport.parse::<SocketAddr>().is_ok()
            || hostport.rsplit_once(':').is_some_and(|(h, p)| {
                !h.is_empty() && !h.ends_with(':') && p.parse::<u16>().is_ok()
            }) {
            hostport.to_string()
        } else {
            format!("{}:0", hostport)
        };
        if let Ok(addrs) = with_port.to_socket_addrs() {
            out.extend(addrs.map(|a| a.ip()));
        } else if let Ok(ip) = hostport.trim_matches(['[', ']']).parse::<IpAddr>() {
            out.push(ip);
        }
    }
    worth_protecting(out)
}

/// `addrs` as protected hosts with why.
pub fn protected(addrs: &[IpAddr], why: &str) -> Vec<(Net, String)> {
    addrs
        .iter()
        .map(|a| (Net::host(*a), why.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_urls_give_their_hosts() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(url_addresses("https://198.18.0.1:7470"), [ip("198.18.0.1")]);
        assert_eq!(
            url_addresses("nats://u:p@198.18.0.2:4222,198.18.0.3:4222"),
            [ip("198.18.0.2"), ip("198.18.0.3")]
        );
        assert_eq!(
            url_addresses("mqtt://[2001:db8::5]:1883"),
            [ip("2001:db8::5")]
        );
        assert!(url_addresses("https://127.0.0.1:7470").is_empty());
    }
}
