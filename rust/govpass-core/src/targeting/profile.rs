//! Profiles and the rules for choosing one.
//!
//! A flow's profile is chosen twice: when its first payload packet arrives
//! (only the addresses, port and interface are known: enough to see that no
//! profile can split it, or that one surely will) and again when the
//! ClientHello is complete and the SNI is known. Profiles with host filters
//! are never chosen for a flow without a host name.

use std::sync::Arc;

use crate::config::SplitPos;
use crate::packet::FlowKey;
use crate::targeting::{HostSet, IpSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// How a split profile cuts the first record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Strategy {
    pub chunk: u32,
    pub positions: Vec<SplitPos>,
}

impl Strategy {
    pub fn needs_sni(&self) -> bool {
        self.positions
            .iter()
            .any(|p| !matches!(p, SplitPos::Abs(_)))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileAction {
    Split(Strategy),
    Pass,
}

#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub action: ProfileAction,
    /// Include lists (any of them); empty lists count as no filter.
    pub hosts: Vec<Arc<HostSet>>,
    pub hosts_exclude: Vec<Arc<HostSet>>,
    pub ips: Vec<Arc<IpSet>>,
    pub ips_exclude: Vec<Arc<IpSet>>,
    /// Destination ports (empty: any).
    pub ports: Vec<u16>,
    pub family: Option<Family>,
    /// Interface indexes (empty: any; 0 on a packet means unknown and
    /// matches no interface filter).
    pub ifaces: Vec<u32>,
    /// Auto-learning: names on no list of this profile go out untouched and
    /// are watched for failure (the learned names join `hosts` by reload).
    pub auto: bool,
    /// Flows this profile splits or passes (with a host name) are watched
    /// too, so that a learner can tell whether its strategy works.
    pub watch: bool,
}

impl Profile {
    /// A profile without filters.
    pub fn catch_all(name: &str, action: ProfileAction) -> Profile {
        Profile {
            name: name.to_string(),
            action,
            hosts: Vec::new(),
            hosts_exclude: Vec::new(),
            ips: Vec::new(),
            ips_exclude: Vec::new(),
            ports: Vec::new(),
            family: None,
            ifaces: Vec::new(),
            auto: false,
            watch: false,
        }
    }

    pub fn has_host_filter(&self) -> bool {
        self.auto
            || self
                .hosts
                .iter()
                .chain(&self.hosts_exclude)
                .any(|h| !h.is_empty())
    }

    /// Filters that do not need the host name.
    fn flow_matches(&self, f: &FlowFacts) -> bool {
        let key = &f.key;
        if !self.ports.is_empty() && !self.ports.contains(&key.dport) {
            return false;
        }
        match self.family {
            Some(Family::V4) if key.v6 => return false,
            Some(Family::V6) if !key.v6 => return false,
            _ => {}
        }
        if !self.ifaces.is_empty() && !self.ifaces.contains(&f.iface) {
            return false;
        }
        let include: Vec<&Arc<IpSet>> = self.ips.iter().filter(|s| !s.is_empty()).collect();
        if !include.is_empty() && !include.iter().any(|s| s.contains(&key.dst, key.v6)) {
            return false;
        }
        !self
            .ips_exclude
            .iter()
            .any(|s| s.contains(&key.dst, key.v6))
    }

    fn in_hosts(&self, host: &[u8]) -> bool {
        self.hosts.iter().any(|h| h.contains(host))
    }

    fn in_excluded(&self, host: &[u8]) -> bool {
        self.hosts_exclude.iter().any(|h| h.contains(host))
    }
}

/// What is known of a flow when a profile is chosen.
#[derive(Debug, Clone, Copy)]
pub struct FlowFacts {
    pub key: FlowKey,
    pub iface: u32,
}

/// Answer before the host name is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pre {
    /// No profile can split this flow: pass it without collecting.
    Pass,
    /// Collect the first record; the profile is chosen when it is complete.
    Collect,
}

/// The final choice for a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Split with profile `index`'s strategy.
    Split(usize),
    /// Pass untouched (a pass profile, or no profile matched).
    Pass,
    /// Pass untouched and watch for failure on behalf of auto profile `index`.
    Watch(usize),
}

/// Before the SNI is known: can any profile still split this flow?
pub fn preselect(profiles: &[Profile], facts: &FlowFacts) -> Pre {
    for p in profiles {
        if !p.flow_matches(facts) {
            continue;
        }
        if p.has_host_filter() || p.watch {
            // Might match once the host is known (auto and watching profiles
            // may watch).
            return Pre::Collect;
        }
        return match p.action {
            ProfileAction::Split(_) => Pre::Collect,
            ProfileAction::Pass => Pre::Pass,
        };
    }
    Pre::Pass
}

/// With the host name (or its absence) known: first matching profile wins.
pub fn select(profiles: &[Profile], facts: &FlowFacts, host: Option<&[u8]>) -> Choice {
    for (i, p) in profiles.iter().enumerate() {
        if !p.flow_matches(facts) {
            continue;
        }
        let decided = if p.has_host_filter() {
            let Some(host) = host else { continue };
            if p.auto {
                if p.in_excluded(host) {
                    Some(Choice::Pass)
                } else if p.in_hosts(host) {
                    None
                } else {
                    Some(Choice::Watch(i))
                }
            } else {
                let has_include = p.hosts.iter().any(|h| !h.is_empty());
                if (has_include && !p.in_hosts(host)) || p.in_excluded(host) {
                    continue;
                }
                None
            }
        } else {
            None
        };
        return decided.unwrap_or(match p.action {
            ProfileAction::Split(_) => Choice::Split(i),
            ProfileAction::Pass if p.watch && host.is_some() => Choice::Watch(i),
            ProfileAction::Pass => Choice::Pass,
        });
    }
    Choice::Pass
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(dst: [u8; 4], dport: u16) -> FlowFacts {
        let mut key = FlowKey {
            src: [0; 16],
            dst: [0; 16],
            sport: 1,
            dport,
            v6: false,
        };
        key.dst[..4].copy_from_slice(&dst);
        FlowFacts { key, iface: 3 }
    }

    fn split() -> ProfileAction {
        ProfileAction::Split(Strategy {
            chunk: 5,
            positions: vec![],
        })
    }

    fn hosts(names: &[&str]) -> Vec<Arc<HostSet>> {
        vec![Arc::new(HostSet::parse(names.iter().copied()).unwrap())]
    }

    #[test]
    fn default_catch_all_splits_everything() {
        let ps = [Profile::catch_all("default", split())];
        let f = facts([203, 0, 113, 1], 443);
        assert_eq!(preselect(&ps, &f), Pre::Collect);
        assert_eq!(select(&ps, &f, None), Choice::Split(0));
        assert_eq!(select(&ps, &f, Some(b"x.example")), Choice::Split(0));
    }

    #[test]
    fn list_mode_splits_only_listed_names() {
        let mut listed = Profile::catch_all("blocked", split());
        listed.hosts = hosts(&["blocked.example"]);
        let ps = [listed, Profile::catch_all("rest", ProfileAction::Pass)];
        let f = facts([203, 0, 113, 1], 443);
        assert_eq!(preselect(&ps, &f), Pre::Collect);
        assert_eq!(
            select(&ps, &f, Some(b"www.blocked.example")),
            Choice::Split(0)
        );
        assert_eq!(select(&ps, &f, Some(b"allowed.example")), Choice::Pass);
        assert_eq!(select(&ps, &f, None), Choice::Pass);
    }

    #[test]
    fn pass_profiles_first_avoid_collecting() {
        let mut local = Profile::catch_all("local", ProfileAction::Pass);
        local.ips = vec![Arc::new(IpSet::parse(["203.0.113.0/24"]).unwrap())];
        let ps = [local, Profile::catch_all("rest", split())];
        assert_eq!(preselect(&ps, &facts([203, 0, 113, 1], 443)), Pre::Pass);
        assert_eq!(preselect(&ps, &facts([198, 51, 100, 1], 443)), Pre::Collect);
    }

    #[test]
    fn filters_on_port_family_and_interface() {
        let mut p = Profile::catch_all("p", split());
        p.ports = vec![8443];
        p.family = Some(Family::V4);
        p.ifaces = vec![3];
        let ps = [p];
        assert_eq!(
            select(&ps, &facts([1, 1, 1, 1], 8443), None),
            Choice::Split(0)
        );
        assert_eq!(select(&ps, &facts([1, 1, 1, 1], 443), None), Choice::Pass);
        let mut other_iface = facts([1, 1, 1, 1], 8443);
        other_iface.iface = 4;
        assert_eq!(select(&ps, &other_iface, None), Choice::Pass);
    }

    #[test]
    fn auto_profile_watches_unknown_names() {
        let mut auto = Profile::catch_all("auto", split());
        auto.auto = true;
        auto.hosts = hosts(&["learned.example"]);
        auto.hosts_exclude = hosts(&["never.example"]);
        let ps = [auto, Profile::catch_all("rest", ProfileAction::Pass)];
        let f = facts([1, 1, 1, 1], 443);
        assert_eq!(select(&ps, &f, Some(b"learned.example")), Choice::Split(0));
        assert_eq!(select(&ps, &f, Some(b"new.example")), Choice::Watch(0));
        assert_eq!(select(&ps, &f, Some(b"never.example")), Choice::Pass);
        assert_eq!(select(&ps, &f, None), Choice::Pass);
    }

    #[test]
    fn exclude_only_profile() {
        let mut p = Profile::catch_all("p", split());
        p.hosts_exclude = hosts(&["bank.example"]);
        let ps = [p];
        let f = facts([1, 1, 1, 1], 443);
        assert_eq!(select(&ps, &f, Some(b"www.bank.example")), Choice::Pass);
        assert_eq!(select(&ps, &f, Some(b"news.example")), Choice::Split(0));
        assert_eq!(select(&ps, &f, None), Choice::Pass);
    }
}
