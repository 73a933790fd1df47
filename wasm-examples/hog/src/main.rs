//! Allocates `CHUNK_MIB` (default 8) MiB at a time, touching every page, until the allocator
//! fails: a guest that outgrows its memory limit. With `STOP_MIB` it stops once it holds that
//! much and sleeps, holding it: a guest that is greedy but bounded.

fn main() {
    let mib = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<usize>().ok());
    let chunk = mib("CHUNK_MIB").unwrap_or(8) << 20;
    let stop = mib("STOP_MIB").map(|m| m << 20);
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        if stop.is_some_and(|stop| held.len() * chunk >= stop) {
            println!("holding {} MiB; stopping there", held.len() * (chunk >> 20));
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        held.push(vec![1u8; chunk]);
        println!("holding {} MiB", held.len() * (chunk >> 20));
    }
}
