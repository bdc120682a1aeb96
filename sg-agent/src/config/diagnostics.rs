//! Errors in a rules file: where (<file:line:col>), what, and what to do.

use std::{fmt, ops::Range, path::PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub span: Range<usize>,
    pub message: String,
    pub hint: Option<String>,
    /// Accepted, but worth saying (what AWS accepts and ignores).
    pub warning: bool,
}

impl Diagnostic {
    pub fn new(span: Range<usize>, message: impl Into<String>) -> Self {
        Self {
            span,
            message: message.into(),
            hint: None,
            warning: false,
        }
    }

    pub fn warning(span: Range<usize>, message: impl Into<String>) -> Self {
        Self {
            warning: true,
            ..Self::new(span, message)
        }
    }

    #[must_use]
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// Every error found in one file, with the text needed to show where.
#[derive(Clone, Debug)]
pub struct Diagnostics {
    pub path: PathBuf,
    pub source: String,
    pub items: Vec<Diagnostic>,
}

/// 1-based line and column (in characters) of byte `offset`.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.items {
            let (line, col) = line_col(&self.source, d.span.start);
            writeln!(
                f,
                "{}:{line}:{col}: {}: {}",
                self.path.display(),
                if d.warning { "warning" } else { "error" },
                d.message
            )?;
            if let Some(text) = self.source.lines().nth(line - 1) {
                let width = text
                    .get(col - 1..)
                    .map_or(1, |rest| {
                        let on_line = d.span.len().min(rest.len());
                        rest[..rest.floor_char_boundary(on_line)].chars().count()
                    })
                    .max(1);
                writeln!(f, "{line:>5} | {text}")?;
                writeln!(f, "      | {}{}", " ".repeat(col - 1), "^".repeat(width))?;
            }
            if let Some(hint) = &d.hint {
                writeln!(f, "      = hint: {hint}")?;
            }
        }
        let n = self.items.iter().filter(|d| !d.warning).count();
        let w = self.items.len() - n;
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        if n > 0 {
            write!(f, "{}: {n} error{} found", self.path.display(), plural(n))
        } else {
            write!(f, "{}: {w} warning{}", self.path.display(), plural(w))
        }
    }
}

/// The closest of `candidates` to `name`, if it is close enough to be a
/// plausible typo.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(name, c), c))
        .filter(|&(d, c)| d <= (c.len().max(name.len()) / 2).max(2))
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let src = "a = 1\nbb = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, 9), (2, 4));
    }

    #[test]
    fn suggestions_find_typos_not_strangers() {
        let names = [
            "instagram-elb-security-group",
            "instagram-rds-security-group",
        ];
        assert_eq!(
            did_you_mean("instagram-elb-sg", names),
            Some("instagram-elb-security-group")
        );
        assert_eq!(did_you_mean("zzz", names), None);
        assert_eq!(
            did_you_mean("cidr_block", ["cidr_blocks", "self"]),
            Some("cidr_blocks")
        );
    }
}
