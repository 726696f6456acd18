//! Choosing a profile for traffic the engine never tracks as a TCP flow, e.g.
//! a QUIC Initial: the caller knows the destination, the port, the interface
//! and maybe the host name, and asks what a TCP flow to the same place with
//! the same name would get. Same rules as [`select`], so a name is treated
//! alike whether the browser tries QUIC or TCP.

use std::net::IpAddr;

use crate::packet::FlowKey;
use crate::targeting::{select, Choice, FlowFacts, Profile};

impl FlowFacts {
    /// Facts of an outbound flow known by its destination only. The source
    /// side is left zero: no profile filter looks at it.
    pub fn to_destination(dst: IpAddr, dport: u16, iface: u32) -> FlowFacts {
        let mut key = FlowKey {
            src: [0; 16],
            dst: [0; 16],
            sport: 0,
            dport,
            v6: false,
        };
        // The same layout the packet parser gives a flow (IPv4 in the first 4 bytes).
        match dst {
            IpAddr::V4(a) => key.dst[..4].copy_from_slice(&a.octets()),
            IpAddr::V6(a) => {
                key.v6 = true;
                key.dst = a.octets();
            }
        }
        FlowFacts { key, iface }
    }
}

/// What a TCP flow to `dst`:`dport` on interface `iface` whose ClientHello
/// names `host` (None: no SNI) would get from `profiles`.
pub fn choose_for_destination(
    profiles: &[Profile],
    dst: IpAddr,
    dport: u16,
    iface: u32,
    host: Option<&[u8]>,
) -> Choice {
    select(
        profiles,
        &FlowFacts::to_destination(dst, dport, iface),
        host,
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::targeting::{Family, HostSet, IpSet, ProfileAction, Strategy};

    fn split() -> ProfileAction {
        ProfileAction::Split(Strategy {
            chunk: 5,
            positions: vec![],
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn listed(names: &[&str]) -> Vec<Profile> {
        let mut p = Profile::catch_all("listed", split());
        p.hosts = vec![Arc::new(HostSet::parse(names.iter().copied()).unwrap())];
        vec![p, Profile::catch_all("other", ProfileAction::Pass)]
    }

    #[test]
    fn facts_use_the_packet_parsers_address_layout() {
        let v4 = FlowFacts::to_destination(ip("203.0.113.9"), 443, 7);
        assert!(!v4.key.v6);
        assert_eq!(&v4.key.dst[..4], &[203, 0, 113, 9]);
        assert_eq!(&v4.key.dst[4..], &[0; 12]);
        assert_eq!((v4.key.dport, v4.iface), (443, 7));
        let v6 = FlowFacts::to_destination(ip("2001:db8::9"), 8443, 0);
        assert!(v6.key.v6);
        assert_eq!(v6.key.dst, ip6_octets("2001:db8::9"));
    }

    fn ip6_octets(s: &str) -> [u8; 16] {
        s.parse::<std::net::Ipv6Addr>().unwrap().octets()
    }

    #[test]
    fn listed_names_split_others_pass() {
        let ps = listed(&["blocked.example"]);
        let dst = ip("198.51.100.1");
        let choose = |host: Option<&[u8]>| choose_for_destination(&ps, dst, 443, 0, host);
        assert_eq!(choose(Some(b"blocked.example")), Choice::Split(0));
        assert_eq!(choose(Some(b"WWW.Blocked.Example.")), Choice::Split(0));
        assert_eq!(choose(Some(b"allowed.example")), Choice::Pass);
        assert_eq!(choose(None), Choice::Pass);
    }

    #[test]
    fn address_port_family_and_interface_filters_apply() {
        let mut nets = Profile::catch_all("nets", split());
        nets.ips = vec![Arc::new(
            IpSet::parse(["203.0.113.0/24", "2001:db8::/32"]).unwrap(),
        )];
        nets.ports = vec![443];
        let mut v6_wan = Profile::catch_all("v6-wan", split());
        v6_wan.family = Some(Family::V6);
        v6_wan.ifaces = vec![4];
        let ps = [nets, v6_wan];
        let choose = |dst: &str, port: u16, iface: u32| {
            choose_for_destination(&ps, ip(dst), port, iface, Some(b"x.example"))
        };
        assert_eq!(choose("203.0.113.5", 443, 0), Choice::Split(0));
        assert_eq!(choose("2001:db8::5", 443, 0), Choice::Split(0));
        assert_eq!(choose("203.0.113.5", 8443, 0), Choice::Pass);
        assert_eq!(choose("198.51.100.5", 443, 4), Choice::Pass);
        assert_eq!(choose("2001:db9::5", 443, 4), Choice::Split(1));
        assert_eq!(choose("2001:db9::5", 443, 3), Choice::Pass);
    }

    #[test]
    fn auto_profiles_watch_unknown_names() {
        let mut auto = Profile::catch_all("auto", split());
        auto.auto = true;
        auto.hosts = vec![Arc::new(HostSet::parse(["learned.example"]).unwrap())];
        let ps = [auto];
        let dst = ip("192.0.2.1");
        assert_eq!(
            choose_for_destination(&ps, dst, 443, 0, Some(b"learned.example")),
            Choice::Split(0)
        );
        assert_eq!(
            choose_for_destination(&ps, dst, 443, 0, Some(b"new.example")),
            Choice::Watch(0)
        );
    }
}
