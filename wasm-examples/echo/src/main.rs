//! Prints its arguments, its environment and its working directory, one per line, so that a
//! test can check what the pod spec's `command`, `args`, `env` and `workingDir` became. With
//! `LIST_DIR` set it prints each file in that directory with its contents; with `WRITE_TO` set
//! it tries to create a file there and says whether it could. Exits with the code in
//! `EXIT_CODE` (default 0).

fn main() {
    for (i, arg) in std::env::args().enumerate() {
        println!("arg[{i}]={arg}");
    }
    let mut vars: Vec<_> = std::env::vars().collect();
    vars.sort();
    for (key, value) in vars {
        println!("env {key}={value}");
    }
    match std::env::current_dir() {
        Ok(dir) => println!("cwd={}", dir.display()),
        Err(err) => println!("cwd unavailable: {err}"),
    }
    if let Ok(dir) = std::env::var("LIST_DIR") {
        let mut entries: Vec<_> = std::fs::read_dir(&dir).into_iter().flatten().flatten().map(|e| e.path()).collect();
        entries.sort();
        for path in entries {
            let contents = std::fs::read_to_string(&path).unwrap_or_else(|err| format!("<{err}>"));
            println!("file {}={}", path.display(), contents.trim_end());
        }
    }
    if let Ok(dir) = std::env::var("WRITE_TO") {
        let path = std::path::Path::new(&dir).join("written.txt");
        match std::fs::write(&path, "written by echo\n") {
            Ok(()) => println!("wrote {}", path.display()),
            Err(err) => println!("could not write {}: {err}", path.display()),
        }
    }
    eprintln!("done");
    let code = std::env::var("EXIT_CODE").ok().and_then(|c| c.parse().ok()).unwrap_or(0);
    std::process::exit(code);
}
