//! A `busybox` container image, built offline from Debian's statically linked busybox
//! (`busybox-static`): one layer with the binary, a link per applet it lists, `/etc/passwd` and
//! `/etc/group` (root and nobody), a sticky `/tmp` and `/var/www/index.html`, and `sh` as its
//! command, as upstream clients' examples expect of `busybox`.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian's statically linked busybox.
pub const BUSYBOX: &str = "/bin/busybox";

/// The image's one layer, an uncompressed tar.
pub fn layer() -> io::Result<Vec<u8>> {
    let missing = |e: io::Error| io::Error::new(e.kind(), format!("{BUSYBOX} (scripts/setup busybox-static): {e}"));
    let binary = std::fs::read(BUSYBOX).map_err(missing)?;
    let applets = String::from_utf8_lossy(&Command::new(BUSYBOX).arg("--list").output()?.stdout).into_owned();
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, mode: u32, content: &[u8], link: Option<&str>| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        header.set_size(content.len() as u64);
        match link {
            Some(target) => tar.append_link(&mut header, path, target),
            None => tar.append_data(&mut header, path, content),
        }
    };
    for dir in ["bin", "etc", "root", "proc", "sys", "dev", "var", "var/www"] {
        add(dir, tar::EntryType::Directory, 0o755, &[], None)?;
    }
    add("tmp", tar::EntryType::Directory, 0o1777, &[], None)?;
    add("bin/busybox", tar::EntryType::Regular, 0o755, &binary, None)?;
    for applet in applets.lines().filter(|a| !a.is_empty() && *a != "busybox") {
        add(&format!("bin/{applet}"), tar::EntryType::Symlink, 0o777, &[], Some("busybox"))?;
    }
    let passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
    add("etc/passwd", tar::EntryType::Regular, 0o644, passwd, None)?;
    add("etc/group", tar::EntryType::Regular, 0o644, b"root:x:0:\nnogroup:x:65534:\n", None)?;
    add("var/www/index.html", tar::EntryType::Regular, 0o644, b"hello from busybox\n", None)?;
    tar.into_inner()
}

/// The image config for `layer`, whose digest (`sha256:<hex>`) is `layer_digest`.
pub fn config(layer_digest: &str) -> Vec<u8> {
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"]}},"rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}}}}"#
    );
    config.into_bytes()
}

/// Writes the image as `docker save` does (`manifest.json` naming `busybox:latest`) to
/// `dir/busybox.tar`; `layer_digest` is `layer`'s.
pub fn saved_image(dir: &Path, layer: &[u8], layer_digest: &str) -> io::Result<PathBuf> {
    let mut tar = tar::Builder::new(Vec::new());
    let manifest = br#"[{"Config":"config.json","RepoTags":["busybox:latest"],"Layers":["l/layer.tar"]}]"#;
    for (path, content) in
        [("l/layer.tar", layer.to_vec()), ("config.json", config(layer_digest)), ("manifest.json", manifest.to_vec())]
    {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        tar.append_data(&mut header, path, content.as_slice())?;
    }
    let path = dir.join("busybox.tar");
    std::fs::write(&path, tar.into_inner()?)?;
    Ok(path)
}
