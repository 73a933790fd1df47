//! Identities as upstream's `user.Info` has them: a name and groups. A client certificate's
//! subject gives them (common name, organizations), as upstream's x509 authenticator reads it.

use rustls::pki_types::CertificateDer;

/// Members of this group may do anything (upstream's `system:masters`).
pub const MASTERS: &str = "system:masters";
/// Every node's group.
pub const NODES: &str = "system:nodes";
/// A node's name is `system:node:<node name>`.
pub const NODE_PREFIX: &str = "system:node:";
/// The group of those who hold the join token and nothing else: they may ask for a node's
/// credentials, no more.
pub const BOOTSTRAPPERS: &str = "system:bootstrappers";
/// Every authenticated identity.
pub const AUTHENTICATED: &str = "system:authenticated";
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
pub const ANONYMOUS: &str = "system:anonymous";
/// The store group's members: the only callers of the store's peer API.
pub const STORE_MEMBERS: &str = "flotilla:store-members";
/// A store member's name is `flotilla:store-member:<id>`.
pub const STORE_MEMBER_PREFIX: &str = "flotilla:store-member:";
/// The control plane's own loops, run in the server's process by default.
pub const SCHEDULER: &str = "system:kube-scheduler";
pub const CONTROLLER_MANAGER: &str = "system:kube-controller-manager";
/// Readers of the components' metrics (upstream's `system:monitoring` group, which its role of
/// the same name lets read `/metrics`): the server's `/metrics`, and the nodes' `/metrics` and
/// `/metrics/resource`. Nothing else beyond what every authenticated identity may read.
pub const MONITORING: &str = "system:monitoring";
/// Who the server's metrics token names (`<data-dir>/pki/metrics.token`).
pub const METRICS_READER: &str = "flotilla:metrics-reader";

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub groups: Vec<String>,
}

impl UserInfo {
    /// An authenticated identity: `groups`, and `system:authenticated`.
    pub fn new(name: impl Into<String>, groups: &[&str]) -> UserInfo {
        let mut groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        if !groups.iter().any(|g| g == AUTHENTICATED) {
            groups.push(AUTHENTICATED.into());
        }
        UserInfo { name: name.into(), groups }
    }

    /// Whoever presented no credentials.
    pub fn anonymous() -> UserInfo {
        UserInfo { name: ANONYMOUS.into(), groups: vec![UNAUTHENTICATED.into()] }
    }

    /// The node `name`'s identity.
    pub fn node(name: &str) -> UserInfo {
        UserInfo::new(format!("{NODE_PREFIX}{name}"), &[NODES])
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    pub fn is_anonymous(&self) -> bool {
        self.name == ANONYMOUS
    }

    /// The node this identity is, as upstream's `NodeIdentity` tells: a name with the node
    /// prefix in the nodes group (`Some("")` for a node identity without a node name).
    pub fn node_name(&self) -> Option<&str> {
        self.name.strip_prefix(NODE_PREFIX).filter(|_| self.in_group(NODES))
    }

    /// The identity a verified client certificate names: its common name, and its
    /// organizations as groups.
    pub fn from_certificate(der: &CertificateDer<'_>) -> Result<UserInfo, String> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| format!("unreadable client certificate: {e}"))?;
        let subject = cert.subject();
        let name = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .filter(|cn| !cn.is_empty())
            .ok_or("the client certificate names no common name")?;
        let groups: Vec<&str> = subject.iter_organization().filter_map(|o| o.as_str().ok()).collect();
        Ok(UserInfo::new(name, &groups))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_a_name_with_the_prefix_in_the_nodes_group() {
        assert_eq!(UserInfo::node("n1").node_name(), Some("n1"));
        assert_eq!(UserInfo::new("system:node:n1", &[]).node_name(), None, "not in system:nodes");
        assert_eq!(UserInfo::new("alice", &[NODES]).node_name(), None);
        assert!(UserInfo::node("n1").in_group(AUTHENTICATED));
        assert!(!UserInfo::anonymous().in_group(AUTHENTICATED));
    }
}
