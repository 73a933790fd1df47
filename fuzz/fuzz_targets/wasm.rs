//! A module or component as `flotilla image import` (and a pull) is given it: validated before
//! it is stored.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = flotilla_wasm::validate(data);
});
