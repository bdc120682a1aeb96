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

/// Reads, parses and validates a rules file.
pub fn load(path: &Path) -> Result<Vpc, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    from_str(path, &text).map_err(|d| ConfigError::Invalid(*d))
}
