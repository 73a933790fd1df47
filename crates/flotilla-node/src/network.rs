//! Pod addresses: each pod gets its own IP from the node's pod range (`spec.podCIDR`). On one
//! host the range lies in 127.0.0.0/8, which Linux routes to loopback as a whole, so a pod's
//! sockets bind to its own address with no privileges and no interface to configure.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use flotilla_api::Cidr;

/// Hands out the addresses of a pod range. The first usable address stays unused, as the
/// gateway of a real pod network would have it.
#[derive(Debug)]
pub(crate) struct PodAddresses {
    range: Cidr,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    used: BTreeSet<Ipv4Addr>,
    /// Where the search for a free address resumes, so a freed address is not reused at once
    /// (a client of the old pod could still be talking to it).
    cursor: u32,
}

impl PodAddresses {
    pub(crate) fn new(range: Cidr) -> PodAddresses {
        PodAddresses { range, state: Mutex::default() }
    }

    pub(crate) fn range(&self) -> Cidr {
        self.range
    }

    /// A free address, or `None` when the range is used up.
    pub(crate) fn allocate(&self) -> Option<Ipv4Addr> {
        let mut state = self.state.lock().expect("pod addresses lock");
        let first = u32::from(self.range.first()) + 1;
        let size = u32::from(self.range.network) + (1u32 << (32 - self.range.prefix)) - 1 - first;
        for step in 0..size {
            let candidate = Ipv4Addr::from(first + (state.cursor + step) % size);
            if state.used.insert(candidate) {
                state.cursor = (state.cursor + step + 1) % size;
                return Some(candidate);
            }
        }
        None
    }

    /// Marks an address as used: a pod's address found in its status after a restart.
    /// False when it is outside the range or already taken.
    pub(crate) fn reserve(&self, ip: Ipv4Addr) -> bool {
        self.range.contains(ip) && self.state.lock().expect("pod addresses lock").used.insert(ip)
    }

    pub(crate) fn release(&self, ip: Ipv4Addr) {
        self.state.lock().expect("pod addresses lock").used.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_unique_not_reused_at_once_and_run_out() {
        let addresses = PodAddresses::new("127.44.0.0/29".parse().unwrap());
        // .0 is the network, .1 the gateway, .7 broadcast: .2 to .6 are pods'.
        let first = addresses.allocate().unwrap();
        assert_eq!(first, Ipv4Addr::new(127, 44, 0, 2));
        assert!(addresses.reserve(Ipv4Addr::new(127, 44, 0, 4)));
        assert!(!addresses.reserve(Ipv4Addr::new(127, 44, 0, 4)));
        assert!(!addresses.reserve(Ipv4Addr::new(127, 45, 0, 4)));
        addresses.release(first);
        let rest: Vec<_> = std::iter::from_fn(|| addresses.allocate()).collect();
        assert_eq!(
            rest,
            ["127.44.0.3", "127.44.0.5", "127.44.0.6", "127.44.0.2"].map(|ip| ip.parse::<Ipv4Addr>().unwrap())
        );
    }
}
