//! Network interfaces: which exist, which carries the default route, which addresses are ours.

use std::{collections::HashSet, ffi::CString, fs, net::IpAddr};

use anyhow::{bail, Context};

/// Names of the interfaces in this network namespace.
pub fn names() -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir("/sys/class/net")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Interface index of `name`, or an error that lists the interfaces that do exist.
pub fn index(name: &str) -> anyhow::Result<u32> {
    let c = CString::new(name)
        .with_context(|| format!("interface name {name:?} contains a NUL byte"))?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        bail!(
            "interface {name:?} does not exist (interfaces here: {})",
            names().join(", ")
        );
    }
    Ok(idx)
}

/// The interface of the IPv4 default route (or, failing that, the IPv6 one).
pub fn default_route() -> anyhow::Result<String> {
    if let Ok(text) = fs::read_to_string("/proc/net/route") {
        if let Some(name) = default_from_route(&text) {
            return Ok(name);
        }
    }
    if let Ok(text) = fs::read_to_string("/proc/net/ipv6_route") {
        if let Some(name) = default_from_ipv6_route(&text) {
            return Ok(name);
        }
    }
    bail!("no default route in this network namespace: name the interfaces with --iface")
}

/// Parses /proc/net/route: the interface whose destination and mask are 0.
fn default_from_route(text: &str) -> Option<String> {
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_string())
    })
}

/// Parses /proc/net/ipv6_route: the ::/0 route that is not on loopback.
fn default_from_ipv6_route(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() == 10 && f[0].chars().all(|c| c == '0') && f[1] == "00" && f[9] != "lo")
            .then(|| f[9].to_string())
    })
}

/// Addresses assigned to this namespace's interfaces.
pub fn local_addresses() -> HashSet<IpAddr> {
    let mut out = HashSet::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below; we only read it.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list returned by getifaddrs.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr whose family says which struct it is.
            unsafe {
                match (*ifa.ifa_addr).sa_family as i32 {
                    libc::AF_INET => {
                        let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        out.insert(IpAddr::from(sa.sin_addr.s_addr.to_ne_bytes()));
                    }
                    libc::AF_INET6 => {
                        let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        out.insert(IpAddr::from(sa.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_ipv4_default_route() {
        let text = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
                    eth1\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n\
                    eth0\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\n";
        assert_eq!(default_from_route(text).as_deref(), Some("eth0"));
    }

    #[test]
    fn no_default_route_is_none() {
        let text = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
                    eth1\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n";
        assert_eq!(default_from_route(text), None);
    }

    #[test]
    fn finds_the_ipv6_default_route() {
        let text = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eth0\n\
                    00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo\n";
        assert_eq!(default_from_ipv6_route(text).as_deref(), Some("eth0"));
    }

    #[test]
    fn unknown_interface_names_the_ones_that_exist() {
        let err = index("no-such-if0").unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
        assert!(err.contains("lo"), "{err}");
    }
}
