//! Builds every crate in `wasm-examples/` for both WASI targets with the cargo that runs this
//! build, then writes `examples.rs` with the path of each `.wasm` (as wasmtime's
//! `test-programs-artifacts` does). The guests have their own target directory under `OUT_DIR`.

use std::path::PathBuf;
use std::process::Command;

const TARGETS: [(&str, &str); 2] = [("P1", "wasm32-wasip1"), ("P2", "wasm32-wasip2")];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let examples = manifest_dir.join("../../wasm-examples").canonicalize().expect("wasm-examples/ exists");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    let target_dir = out_dir.join("wasm-target");
    println!("cargo:rerun-if-changed={}", examples.display());

    let names = members(&examples);
    let mut generated = String::new();
    for (prefix, target) in TARGETS {
        let built: Vec<&String> = names.iter().filter(|name| builds_for(&examples, name, target)).collect();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let packages = built.iter().flat_map(|name| ["-p", name.as_str()]);
        let status = Command::new(cargo)
            .args(["build", "--release", "--target", target])
            .args(packages)
            .arg("--manifest-path")
            .arg(examples.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target_dir)
            // Flags meant for the host build must not reach the guests.
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_BUILD_RUSTFLAGS")
            .env_remove("CARGO_TARGET_DIR")
            // Nor may clippy's wrapper, when the host build is `cargo clippy`.
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .env_remove("CLIPPY_ARGS")
            .status()
            .expect("run cargo for wasm-examples");
        assert!(
            status.success(),
            "building wasm-examples for {target} failed (see above; scripts/setup installs the target)"
        );
        for name in built {
            let path = target_dir.join(target).join("release").join(format!("{name}.wasm"));
            assert!(path.exists(), "{} was not built", path.display());
            generated += &format!(
                "/// `wasm-examples/{name}` built for `{target}`.\npub const {prefix}_{}: &str = {:?};\n",
                name.to_uppercase(),
                path.display().to_string()
            );
        }
    }
    std::fs::write(out_dir.join("examples.rs"), generated).expect("write examples.rs");
}

/// Whether a guest builds for `target`: all do, unless their manifest narrows it with
/// `[package.metadata.flotilla] targets = [...]` (a `wasi:http` component is p2 only).
fn builds_for(examples: &std::path::Path, name: &str, target: &str) -> bool {
    let manifest = std::fs::read_to_string(examples.join(name).join("Cargo.toml")).expect("read a guest's Cargo.toml");
    match manifest.lines().find(|l| l.trim_start().starts_with("targets")) {
        Some(line) => line.contains(&format!("\"{target}\"")),
        None => true,
    }
}

/// The workspace members, read from the `members = [...]` line of `wasm-examples/Cargo.toml`.
fn members(examples: &std::path::Path) -> Vec<String> {
    let manifest = std::fs::read_to_string(examples.join("Cargo.toml")).expect("read wasm-examples/Cargo.toml");
    let line = manifest.lines().find(|l| l.starts_with("members")).expect("a members line");
    let list = &line[line.find('[').unwrap() + 1..line.rfind(']').unwrap()];
    list.split(',').map(|m| m.trim().trim_matches('"').to_string()).filter(|m| !m.is_empty()).collect()
}
