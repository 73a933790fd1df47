//! Resource quantities (`500m`, `128Mi`, `1e3`), and the byte counts the node writes back.

#![no_main]

use flotilla_api::quantity;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(nanos) = quantity::parse(text) {
        // A whole, non-negative number of bytes is written so that it reads back the same.
        if nanos >= 0
            && nanos % 1_000_000_000 == 0
            && let Ok(bytes) = u64::try_from(nanos / 1_000_000_000)
        {
            assert_eq!(quantity::parse(&quantity::bytes(bytes)), Ok(nanos), "{text:?}");
        }
    }
});
