//! The SSRF guard (SPEC §9.7): which addresses a proxied request may connect to.
//!
//! 1. With `proxy.allowed_cidrs` set, an address must lie in one of them.
//! 2. Link-local and cloud-metadata ranges (`169.254.0.0/16`, `fe80::/10`, their IPv4-mapped
//!    forms, and the metadata services outside them: AWS's `fd00:ec2::254` and Alibaba Cloud's
//!    `100.100.100.200`) are refused unless an allowed CIDR explicitly contains the address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Ranges refused unless explicitly allowed.
const LINK_LOCAL_V4: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(169, 254, 0, 0), 16) {
    Ok(net) => net,
    Err(_) => panic!("valid prefix"),
};
const LINK_LOCAL_V6: Ipv6Net = match Ipv6Net::new(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10) {
    Ok(net) => net,
    Err(_) => panic!("valid prefix"),
};

/// Cloud metadata services outside the link-local ranges (the SPEC names only the ranges;
/// these answer credentials to whoever asks, just as `169.254.169.254` does).
const METADATA_V4: [Ipv4Addr; 1] = [Ipv4Addr::new(100, 100, 100, 200)];
const METADATA_V6: [Ipv6Addr; 1] = [Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254)];

/// An entry of `proxy.allowed_cidrs` that is not a CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "proxy.allowed_cidrs: `{0}` is not a CIDR (expected an address and a prefix length, e.g. 10.0.0.0/8 or fd00::/8)"
)]
pub struct InvalidCidr(pub String);

/// Decides whether the proxy may connect to an address.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// `proxy.allowed_cidrs`, parsed; empty allows every address outside the refused ranges.
    allowed: Vec<IpNet>,
    /// Set when the configuration could not be read: nothing is allowed (fail closed).
    refuse_all: bool,
}

impl Guard {
    /// Parses `proxy.allowed_cidrs`. A bare address is refused: `10.0.0.5` might have been
    /// meant as a network, and guessing the prefix would widen or narrow the allowlist.
    pub fn new(allowed_cidrs: &[String]) -> Result<Guard, InvalidCidr> {
        let allowed = allowed_cidrs
            .iter()
            .map(|cidr| {
                cidr.trim()
                    .parse::<IpNet>()
                    .map_err(|_| InvalidCidr(cidr.clone()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Guard {
            allowed,
            refuse_all: false,
        })
    }

    /// A guard that refuses every address.
    pub fn refuse_all() -> Guard {
        Guard {
            allowed: Vec::new(),
            refuse_all: true,
        }
    }

    /// Whether a connection to `ip` is allowed.
    pub fn allows(&self, ip: IpAddr) -> bool {
        if self.refuse_all {
            return false;
        }
        let explicitly_allowed = self.allowed.iter().any(|net| contains(net, ip));
        if !self.allowed.is_empty() && !explicitly_allowed {
            return false;
        }
        explicitly_allowed || !is_refused_by_default(ip)
    }
}

/// Whether `net` contains `ip` in any of its forms: an IPv4 address and its IPv4-mapped IPv6
/// form are one address.
fn contains(net: &IpNet, ip: IpAddr) -> bool {
    let other_form = match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
        v6 => v6,
    };
    net.contains(&ip) || net.contains(&ip.to_canonical()) || net.contains(&other_form)
}

/// Link-local and cloud-metadata addresses, in either IPv4 or IPv4-mapped form.
fn is_refused_by_default(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => LINK_LOCAL_V4.contains(&v4) || METADATA_V4.contains(&v4),
        IpAddr::V6(v6) => LINK_LOCAL_V6.contains(&v6) || METADATA_V6.contains(&v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn guard(cidrs: &[&str]) -> Guard {
        Guard::new(&cidrs.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn by_default_everything_but_link_local_and_metadata_is_allowed() {
        let g = guard(&[]);
        for allowed in [
            "127.0.0.1",
            "10.0.0.5",
            "8.8.8.8",
            "::1",
            "2001:db8::1",
            "169.253.255.255",
            "169.255.0.0",
            "fec0::1",
            "fd00:ec2::253",
            "100.100.100.201",
        ] {
            assert!(g.allows(ip(allowed)), "{allowed}");
        }
        for refused in [
            "169.254.169.254",
            "169.254.0.0",
            "169.254.255.255",
            "fe80::1",
            "febf:ffff::1",
            "::ffff:169.254.169.254",
            "fd00:ec2::254",
            "100.100.100.200",
            "::ffff:100.100.100.200",
        ] {
            assert!(!g.allows(ip(refused)), "{refused}");
        }
    }

    #[test]
    fn an_allowlist_admits_only_its_networks() {
        let g = guard(&["127.0.0.0/8", "fd00::/8"]);
        assert!(g.allows(ip("127.0.0.1")));
        assert!(
            g.allows(ip("::ffff:127.0.0.1")),
            "IPv4-mapped forms match IPv4 CIDRs"
        );
        assert!(g.allows(ip("fd12::1")));
        assert!(!g.allows(ip("10.0.0.1")));
        assert!(!g.allows(ip("::1")));
        assert!(!g.allows(ip("169.254.169.254")));
    }

    #[test]
    fn link_local_is_allowed_only_when_an_entry_contains_it() {
        let g = guard(&["169.254.169.254/32", "fe80::/64"]);
        assert!(g.allows(ip("169.254.169.254")));
        assert!(g.allows(ip("::ffff:169.254.169.254")));
        assert!(!g.allows(ip("169.254.1.1")));
        assert!(g.allows(ip("fe80::1")));
        assert!(!g.allows(ip("fe80:0:0:1::1")));
        let mapped = guard(&["::ffff:169.254.0.0/112"]);
        assert!(mapped.allows(ip("::ffff:169.254.1.1")));
        assert!(mapped.allows(ip("169.254.1.1")));
    }

    #[test]
    fn bad_entries_are_named() {
        for bad in ["10.0.0.1", "10.0.0.0/33", "nope", "", "fe80::/129"] {
            assert_eq!(
                Guard::new(&[bad.to_owned()]).unwrap_err(),
                InvalidCidr(bad.to_owned())
            );
        }
    }

    #[test]
    fn a_guard_built_from_bad_configuration_refuses_everything() {
        assert!(!Guard::refuse_all().allows(ip("127.0.0.1")));
    }
}
