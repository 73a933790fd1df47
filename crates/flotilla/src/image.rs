//! `flotilla image`: the images in a node's image store (wasm modules and container images), as
//! `k3s ctr images` manages a containerd store. An image imported under a reference is what that
//! reference means on the node: a pod naming it runs it, whatever its `imagePullPolicy`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use flotilla_node::{ImageStore, Reference};

#[derive(Debug, Subcommand)]
pub(crate) enum ImageCommand {
    /// Put a `.wasm` module (a core module or a component) into the node's store under a name,
    /// or the container images of a `docker save` archive or an OCI image layout (a directory
    /// or a tar of one) under their own names.
    Import {
        /// The module (`target/wasm32-wasip1/release/hello.wasm`), or the archive or layout.
        file: PathBuf,
        /// The image reference pods name it by, e.g. `hello:v1`: needed for a module, and for an
        /// archive's one image that has no name (else it overrides the archive's).
        #[arg(long)]
        name: Option<String>,
        /// The server's or agent's data directory.
        #[arg(long, env = "FLOTILLA_DATA_DIR", default_value_os_t = crate::default_data_dir())]
        data_dir: PathBuf,
    },
    /// List the images in the node's store.
    Ls {
        /// The server's or agent's data directory.
        #[arg(long, env = "FLOTILLA_DATA_DIR", default_value_os_t = crate::default_data_dir())]
        data_dir: PathBuf,
    },
}

pub(crate) fn run(command: ImageCommand) -> Result<()> {
    match command {
        ImageCommand::Import { file, name, data_dir } => {
            let reference = name.as_deref().map(Reference::parse).transpose().map_err(anyhow::Error::msg)?;
            let store = open(&data_dir)?;
            let images = if is_module(&file) {
                let reference = reference.context("a module needs a name: --name <reference>")?;
                let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
                vec![store.import(&bytes, &reference).with_context(|| format!("cannot import {}", file.display()))?]
            } else {
                flotilla_node::images::container::import_archive(&store, &file, reference.as_ref())
                    .map_err(anyhow::Error::msg)
                    .with_context(|| format!("cannot import {}", file.display()))?
            };
            for image in images {
                writeln!(std::io::stdout(), "imported {} ({}, {} bytes)", image.reference, image.digest, image.size)?;
            }
        }
        ImageCommand::Ls { data_dir } => {
            let images = open(&data_dir)?.list()?;
            let width = images.iter().map(|i| i.reference.len()).max().unwrap_or(0).max("IMAGE".len());
            let mut out = std::io::stdout().lock();
            writeln!(out, "{:width$}  {:71}  {:>10}  SOURCE", "IMAGE", "DIGEST", "SIZE")?;
            for image in images {
                let source = match image.source {
                    flotilla_node::images::Source::Imported => "imported",
                    flotilla_node::images::Source::Pulled => "pulled",
                };
                writeln!(out, "{:width$}  {:71}  {:>10}  {source}", image.reference, image.digest, image.size)?;
            }
        }
    }
    Ok(())
}

/// Whether `file` is a wasm module (else an archive or a layout of container images).
fn is_module(file: &std::path::Path) -> bool {
    let mut magic = [0; 4];
    std::fs::File::open(file).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic)).is_ok()
        && magic == *b"\0asm"
}

pub(crate) fn open(data_dir: &std::path::Path) -> Result<ImageStore> {
    let dir = crate::node::node_dir(data_dir).join("images");
    ImageStore::open(dir.clone()).with_context(|| format!("cannot open the image store in {}", dir.display()))
}
