//! Loops forever without a host call: only epoch interruption can take the CPU back. Prints
//! how many rounds it managed every `REPORT_EVERY` rounds (default 1e8), so a test can read
//! how much CPU it got.

fn main() {
    let every: u64 = std::env::var("REPORT_EVERY").ok().and_then(|n| n.parse().ok()).unwrap_or(100_000_000);
    let mut x: u64 = 1;
    let mut rounds: u64 = 0;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        rounds += 1;
        if rounds.is_multiple_of(every) {
            println!("rounds {rounds}");
        }
    }
}
