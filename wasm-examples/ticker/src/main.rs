//! Runs until stopped, printing a numbered tick every `TICK_MS` milliseconds (default 1000): a
//! long-running pod whose logs grow.

use std::time::Duration;

fn main() {
    let period = std::env::var("TICK_MS").ok().and_then(|t| t.parse().ok()).unwrap_or(1000);
    for n in 0u64.. {
        println!("tick {n}");
        std::thread::sleep(Duration::from_millis(period));
    }
}
