//! Allocates `CHUNK_MIB` (default 8) MiB at a time, touching every page, until the allocator
//! fails: a guest that outgrows its memory limit.

fn main() {
    let chunk = std::env::var("CHUNK_MIB").ok().and_then(|c| c.parse().ok()).unwrap_or(8usize) << 20;
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        held.push(vec![1u8; chunk]);
        println!("holding {} MiB", held.len() * (chunk >> 20));
    }
}
