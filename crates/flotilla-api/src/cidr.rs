//! IPv4 address ranges (`a.b.c.d/n`): the Service range the API server allocates cluster IPs
//! from, and the pod range a node gives its pods addresses from.

use std::net::Ipv4Addr;

/// A range of IPv4 addresses, `a.b.c.d/n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (ip, prefix) = text.split_once('/').ok_or_else(|| format!("{text:?} is not a CIDR (a.b.c.d/n)"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|e| format!("{text:?}: {e}"))?;
        let prefix: u8 = prefix.parse().map_err(|e| format!("{text:?}: {e}"))?;
        if !(8..=30).contains(&prefix) {
            return Err(format!("{text:?}: the prefix must be between /8 and /30"));
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Cidr { network: Ipv4Addr::from(u32::from(ip) & mask), prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Cidr {
    /// Whether the two ranges share an address (one holds the other, since ranges nest).
    pub fn overlaps(&self, other: Cidr) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(ip) & mask == u32::from(self.network)
    }

    /// Usable addresses: not the network address nor the broadcast address.
    pub fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        let first = u32::from(self.network) + 1;
        let last = u32::from(self.network) + (1u32 << (32 - self.prefix)) - 2;
        (first..=last).map(Ipv4Addr::from)
    }

    /// The first usable address: upstream gives it to the `kubernetes` Service.
    pub fn first(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }
}
