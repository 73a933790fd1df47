//! Two containers of one pod exchanging a file through a shared volume. With `MODE=write` it
//! writes `$MESSAGE` to `$DIR/message.txt` and exits; with `MODE=read` it waits (up to 60 s)
//! for that file, prints what it holds, and exits 0, or 1 if it never came.

use std::path::Path;
use std::time::{Duration, Instant};

fn main() {
    let dir = std::env::var("DIR").unwrap_or_else(|_| "/shared".into());
    let path = Path::new(&dir).join("message.txt");
    match std::env::var("MODE").as_deref() {
        Ok("write") => {
            let message = std::env::var("MESSAGE").unwrap_or_else(|_| "hello from the writer".into());
            // Written aside and renamed, so the reader never sees half of it.
            let partial = Path::new(&dir).join("message.partial");
            std::fs::write(&partial, &message).and_then(|()| std::fs::rename(&partial, &path)).unwrap_or_else(|err| {
                eprintln!("cannot write {}: {err}", path.display());
                std::process::exit(1)
            });
            println!("wrote {}", path.display());
        }
        _ => {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Ok(message) = std::fs::read_to_string(&path) {
                    println!("read: {message}");
                    return;
                }
                if Instant::now() > deadline {
                    eprintln!("{} never appeared", path.display());
                    std::process::exit(1);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}
