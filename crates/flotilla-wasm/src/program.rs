//! Loading modules: digest, compile or read the compiled cache, link once (`InstancePre`).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use wasmtime::component::{Component, Linker as ComponentLinker};
use wasmtime::{Engine, InstancePre, Linker, Module};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::http::ProxyGuest;
use crate::run::{ComponentGuest, CoreGuest};

/// A module that can be instantiated: compiled and linked against WASI once, for every
/// container that runs it.
pub struct Program {
    digest: String,
    pub(crate) kind: Linked,
}

pub(crate) enum Linked {
    Core(InstancePre<CoreGuest>),
    Command(CommandPre<ComponentGuest>),
    Proxy(ProxyPre<ProxyGuest>),
}

/// Which WASI world a program targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramKind {
    /// A WASI p1 core module exporting `_start` (`wasm32-wasip1`).
    Core,
    /// A WASI p2 component exporting `wasi:cli/run` (`wasm32-wasip2`).
    Command,
    /// A WASI p2 component exporting `wasi:http/incoming-handler`: served, one instance per
    /// request.
    HttpHandler,
}

impl Program {
    /// `sha256:<hex>` of the module's bytes, as OCI digests are written.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    pub fn kind(&self) -> ProgramKind {
        match self.kind {
            Linked::Core(_) => ProgramKind::Core,
            Linked::Command(_) => ProgramKind::Command,
            Linked::Proxy(_) => ProgramKind::HttpHandler,
        }
    }
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program").field("digest", &self.digest).field("kind", &self.kind()).finish()
    }
}

/// Why a module cannot run. The message is what a container's status shows.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not a WebAssembly module or component (the file does not start with the wasm magic number)")]
    NotWasm,
    #[error("invalid WebAssembly: {0}")]
    Invalid(String),
    #[error("the module needs imports this node does not provide: {0}")]
    Unlinkable(String),
    #[error("the compiled-module cache failed: {0}")]
    Cache(String),
}

/// The programs loaded so far, and the on-disk cache of compiled code.
pub(crate) struct Programs {
    cache_dir: PathBuf,
    /// Names cached files so that a blob from another wasmtime version or configuration is
    /// never even tried (deserialising would refuse it anyway, cleanly).
    fingerprint: String,
    loaded: Mutex<HashMap<String, Arc<Program>>>,
    core_linker: Linker<CoreGuest>,
    component_linker: ComponentLinker<ComponentGuest>,
    proxy_linker: ComponentLinker<ProxyGuest>,
}

impl std::fmt::Debug for Programs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Programs").field("cache_dir", &self.cache_dir).field("fingerprint", &self.fingerprint).finish()
    }
}

impl Programs {
    pub(crate) fn new(engine: &Engine, cache_dir: PathBuf) -> Result<Programs, wasmtime::Error> {
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let mut core_linker = Linker::new(engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut core_linker, |guest: &mut CoreGuest| &mut guest.wasi)?;
        crate::sockets::add_to_linker(&mut core_linker)?;
        let mut component_linker = ComponentLinker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut component_linker)?;
        crate::cluster::add_to_linker(&mut component_linker)?;
        let mut proxy_linker = ComponentLinker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut proxy_linker)?;
        crate::cluster::add_to_linker(&mut proxy_linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut proxy_linker)?;
        Ok(Programs {
            cache_dir,
            fingerprint: format!("{:016x}", hasher.finish()),
            loaded: Mutex::default(),
            core_linker,
            component_linker,
            proxy_linker,
        })
    }

    pub(crate) fn loaded(&self, digest: &str) -> Option<Arc<Program>> {
        self.loaded.lock().expect("programs lock").get(digest).cloned()
    }

    pub(crate) fn load(&self, engine: &Engine, wasm: &[u8]) -> Result<Arc<Program>, LoadError> {
        let digest = digest(wasm);
        if let Some(program) = self.loaded.lock().expect("programs lock").get(&digest) {
            return Ok(program.clone());
        }
        let is_component = match wasm.get(..8) {
            Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => false,
            // A component: layer 1 in the upper half of the version field.
            Some([0, b'a', b's', b'm', _, _, 1, 0]) => true,
            _ => return Err(LoadError::NotWasm),
        };
        let cached = self.cache_dir.join(format!("{}-{}.cwasm", &digest["sha256:".len()..], self.fingerprint));
        let kind = if is_component {
            let component = compiled(
                &cached,
                wasm,
                |bytes| Component::new(engine, bytes),
                |path| {
                    // SAFETY: the file was written by `Component::serialize` of an engine with the
                    // same fingerprint (it is in the name), into a directory only this node writes;
                    // wasmtime still checks the header and refuses a mismatched blob with an error.
                    #[allow(unsafe_code)]
                    unsafe {
                        Component::deserialize_file(engine, path)
                    }
                },
            )?;
            let handles_http = component
                .component_type()
                .exports(engine)
                .any(|(name, _)| name.starts_with("wasi:http/incoming-handler"));
            if handles_http {
                let pre = self.proxy_linker.instantiate_pre(&component).map_err(unlinkable)?;
                Linked::Proxy(ProxyPre::new(pre).map_err(unlinkable)?)
            } else {
                let pre = self.component_linker.instantiate_pre(&component).map_err(unlinkable)?;
                Linked::Command(CommandPre::new(pre).map_err(unlinkable)?)
            }
        } else {
            let module = compiled(
                &cached,
                wasm,
                |bytes| Module::new(engine, bytes),
                |path| {
                    // SAFETY: as for components above.
                    #[allow(unsafe_code)]
                    unsafe {
                        Module::deserialize_file(engine, path)
                    }
                },
            )?;
            if module.get_export("_start").is_none() {
                return Err(LoadError::Unlinkable(
                    "it exports no `_start`: build a command (a `main`) for wasm32-wasip1".into(),
                ));
            }
            Linked::Core(self.core_linker.instantiate_pre(&module).map_err(unlinkable)?)
        };
        let program = Arc::new(Program { digest: digest.clone(), kind });
        self.loaded.lock().expect("programs lock").insert(digest, program.clone());
        Ok(program)
    }
}

/// Compiled code for `wasm`: read from `cached` when it is there and valid, else compiled and
/// written there (atomically, so a crash never leaves half a file behind).
fn compiled<T: Serialize>(
    cached: &Path,
    wasm: &[u8],
    compile: impl FnOnce(&[u8]) -> Result<T, wasmtime::Error>,
    deserialize: impl FnOnce(&Path) -> Result<T, wasmtime::Error>,
) -> Result<T, LoadError> {
    if cached.exists() {
        match deserialize(cached) {
            Ok(code) => return Ok(code),
            Err(err) => tracing::warn!(path = %cached.display(), %err, "discarding an unusable compiled module"),
        }
    }
    let code = compile(wasm).map_err(|err| LoadError::Invalid(format!("{err:#}")))?;
    let bytes = code.serialize().map_err(|err| LoadError::Cache(format!("{err:#}")))?;
    let partial = cached.with_extension("partial");
    std::fs::write(&partial, bytes)
        .and_then(|()| std::fs::rename(&partial, cached))
        .map_err(|err| LoadError::Cache(format!("writing {}: {err}", cached.display())))?;
    Ok(code)
}

trait Serialize {
    fn serialize(&self) -> Result<Vec<u8>, wasmtime::Error>;
}

impl Serialize for Module {
    fn serialize(&self) -> Result<Vec<u8>, wasmtime::Error> {
        Module::serialize(self)
    }
}

impl Serialize for Component {
    fn serialize(&self) -> Result<Vec<u8>, wasmtime::Error> {
        Component::serialize(self)
    }
}

fn unlinkable(err: wasmtime::Error) -> LoadError {
    LoadError::Unlinkable(format!("{err:#}"))
}

/// Checks that `bytes` are a well-formed module or component, without compiling it: what is
/// stored as an image must at least parse, so that garbage is refused when it is imported and
/// not when a pod first starts.
pub fn validate(bytes: &[u8]) -> Result<(), LoadError> {
    if !bytes.starts_with(b"\0asm") {
        return Err(LoadError::NotWasm);
    }
    wasmtime::wasmparser::Validator::new()
        .validate_all(bytes)
        .map(drop)
        .map_err(|err| LoadError::Invalid(err.to_string()))
}

/// `sha256:<hex>` of `bytes`, as OCI digests and [`Program::digest`] are written.
pub fn digest(bytes: &[u8]) -> String {
    let hash = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256:");
    for byte in hash.as_ref() {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}
