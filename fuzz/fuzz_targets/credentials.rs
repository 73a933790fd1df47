//! What a caller presents to be known: a bearer token in an `Authorization` header, a client
//! certificate (DER), and a node's certificate request (PEM) for the cluster CA to sign.

#![no_main]

use std::sync::OnceLock;

use flotilla_auth::pki::{Authority, Profile};
use flotilla_auth::{Authenticator, UserInfo};
use libfuzzer_sys::fuzz_target;

fn authority() -> &'static Authority {
    static AUTHORITY: OnceLock<Authority> = OnceLock::new();
    AUTHORITY.get_or_init(|| Authority::generate("fuzz-ca").expect("a CA").0)
}

fuzz_target!(|data: &[u8]| {
    let [which, rest @ ..] = data else { return };
    match which % 3 {
        0 => {
            let Ok(value) = http::HeaderValue::from_bytes(rest) else { return };
            let authenticator = Authenticator::new().with_token("a".repeat(32), UserInfo::anonymous());
            let request = http::Request::builder().header(http::header::AUTHORIZATION, value).body(()).unwrap();
            let _ = authenticator.authenticate(&request);
        }
        1 => {
            let _ = UserInfo::from_certificate(&rustls_pki_types::CertificateDer::from(rest));
        }
        _ => {
            let Ok(pem) = std::str::from_utf8(rest) else { return };
            let _ = authority().issue_for_request(pem, &Profile::node("n1"));
        }
    }
});
