//! Reaches an `unreachable` instruction after printing a line: a guest that traps.

fn main() {
    println!("about to trap");
    std::process::abort();
}
