//! Paths of the guest programs in `wasm-examples/`, built by this crate's build script: `P1_<NAME>`
//! is the `wasm32-wasip1` core module, `P2_<NAME>` the `wasm32-wasip2` component.

//! `busybox` builds a container image from Debian's static busybox.

pub mod busybox;

include!(concat!(env!("OUT_DIR"), "/examples.rs"));
