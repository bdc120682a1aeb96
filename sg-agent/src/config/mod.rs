//! The rules file: model, parser, validation.

pub mod diagnostics;
pub mod model;
mod parse;
mod validate;

use std::path::{Path, PathBuf};

pub use diagnostics::{Diagnostic, Diagnostics};
pub use model::*;
pub use validate::rule_count;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a regular file ({kind}): point sg-agent at the rules file itself", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{0}")]
    Invalid(Diagnostics),
}

/// Parses and validates rules-file text; every error is reported.
pub fn from_str(path: &Path, text: &str) -> Result<Vpc, Box<Diagnostics>> {
    let (vpc, mut items) = parse::parse(text);
    if items.is_empty() {
        items = validate::validate(&vpc);
    } else {
        // Reference errors are still worth showing next to syntax errors.
        items.extend(validate::validate(&vpc));
        items.sort_by_key(|d| d.span.start);
        items.dedup();
    }
    if items.is_empty() {
        Ok(vpc)
    } else {
        Err(Box::new(Diagnostics {
            path: path.to_owned(),
            source: text.to_owned(),
            items,
        }))
    }
}

/// Reads, parses and validates a rules file. The file is read once, and
/// what was read is what is validated and returned. Only a regular file is
/// read: a FIFO or a device is refused without blocking on it.
pub fn load(path: &Path) -> Result<Vpc, ConfigError> {
    let text = read_regular(path)?;
    from_str(path, &text).map_err(|d| ConfigError::Invalid(*d))
}

fn read_regular(path: &Path) -> Result<String, ConfigError> {
    use std::{io::Read as _, os::unix::fs::OpenOptionsExt as _};
    let read_err = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    // O_NONBLOCK: opening a FIFO would otherwise wait for a writer.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(read_err)?;
    let kind = file.metadata().map_err(read_err)?.file_type();
    if !kind.is_file() {
        use std::os::unix::fs::FileTypeExt as _;
        let kind = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a file"
        };
        return Err(ConfigError::NotRegular {
            path: path.to_owned(),
            kind,
        });
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(read_err)?;
    Ok(text)
}
