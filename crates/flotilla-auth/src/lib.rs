//! `flotilla-auth`: who may call. The cluster's certificate authorities and the certificates they
//! issue (`pki`), HTTPS serving that hands each request the client certificate the handshake
//! verified (`tls`), identities as upstream names them (`identity`), and the one authentication
//! layer every listener puts in front of its router (`authn`): the Kubernetes API, the store's
//! peer API and the node API alike. What an identity may then do is each listener's to decide.

pub mod authn;
pub mod identity;
pub mod pki;
pub mod tls;

pub use authn::{Authenticate, Authenticator};
pub use identity::UserInfo;
pub use tls::{ClientAuth, PinnedCertificate, serve};
