//! Prints a greeting and exits 0: the smallest pod that completes.

fn main() {
    println!("hello from a wasm pod");
}
