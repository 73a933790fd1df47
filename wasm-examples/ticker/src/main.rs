//! Runs until stopped, printing a numbered tick every `TICK_MS` milliseconds (default 1000): a
//! long-running pod whose logs grow. With `FILE` set, each tick also shows that file's contents
//! (a projected ConfigMap key, say, to watch it change).

use std::time::Duration;

fn main() {
    let period = std::env::var("TICK_MS").ok().and_then(|t| t.parse().ok()).unwrap_or(1000);
    let file = std::env::var("FILE").ok();
    for n in 0u64.. {
        match &file {
            Some(path) => match std::fs::read_to_string(path) {
                Ok(contents) => println!("tick {n}: {}", contents.trim()),
                Err(err) => println!("tick {n}: {path}: {err}"),
            },
            None => println!("tick {n}"),
        }
        std::thread::sleep(Duration::from_millis(period));
    }
}
