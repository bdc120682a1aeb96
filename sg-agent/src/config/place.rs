//! What a path the file names is on this host, looked at without opening
//! it: `check` and `run` refuse the same files, before any namespace is
//! entered (the data plane opens them later, with its own checks).

use std::path::Path;

/// Why `path`, as it stands on this host, cannot be a namespace file
/// (a FIFO, a socket, a device, a directory), without opening it; `None`
/// when it is a regular file (namespace files are) or is not there (yet).
/// `check` and `run` both refuse what this names.
pub fn not_a_namespace_file(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    let kind = meta.file_type();
    (!kind.is_file()).then(|| format!("{} (not a namespace file)", describe_kind(kind)))
}

pub fn describe_kind(kind: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else if kind.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}
