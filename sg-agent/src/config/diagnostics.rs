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

/// At most this many diagnostics are shown; the rest are counted.
pub const SHOWN: usize = 100;
/// At most this many characters of a diagnostic's line are shown.
const SHOWN_LINE: usize = 160;

/// Every error found in one file, with the text needed to show where.
#[derive(Clone, Debug)]
pub struct Diagnostics {
    pub path: PathBuf,
    pub source: String,
    pub items: Vec<Diagnostic>,
    /// Shown without the file's lines (the daemon's log): where, what and
    /// the hint only, so a log never carries more of a file than the
    /// offending token, whatever file the agent was pointed at.
    pub brief: bool,
}

impl Diagnostics {
    pub fn new(path: PathBuf, source: String, items: Vec<Diagnostic>) -> Self {
        Self {
            path,
            source,
            items,
            brief: false,
        }
    }

    /// The same, shown without the file's lines.
    #[must_use]
    pub fn brief(mut self) -> Self {
        self.brief = true;
        self
    }
}

/// 1-based line and column (in characters) of byte `offset`.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    Lines::of(source).line_col(offset)
}

/// Where each line starts: a diagnostic's line and column in O(log n), so
/// rendering many errors of a large file stays linear.
struct Lines<'a> {
    source: &'a str,
    starts: Vec<usize>,
}

impl<'a> Lines<'a> {
    fn of(source: &'a str) -> Self {
        let starts = std::iter::once(0)
            .chain(source.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { source, starts }
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.source.len());
        while !self.source.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.starts.partition_point(|&s| s <= offset);
        let start = self.starts[line - 1];
        (line, self.source[start..offset].chars().count() + 1)
    }

    /// Line `line` (1-based), without its newline.
    fn text(&self, line: usize) -> Option<&'a str> {
        let start = *self.starts.get(line - 1)?;
        let end = self.starts.get(line).map_or(self.source.len(), |e| e - 1);
        Some(self.source[start..end].trim_end_matches('\r'))
    }
}

/// `text` safe to print: control characters (terminal escapes included)
/// shown escaped, never sent to the terminal or the log as they are.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    escaped(text, char::is_control)
}

/// `text` with the characters `escape` picks shown escaped.
fn escaped(text: &str, escape: impl Fn(char) -> bool) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(&escape) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if escape(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.into()
}

/// [`printable`] for text of many lines: line ends and tabs kept, every
/// other control character (a terminal escape in an interface name from
/// the kernel, an error text, a libvirt domain's name) shown escaped. What
/// every command prints to a terminal, and the text log, goes through it.
pub fn printable_lines(text: &str) -> std::borrow::Cow<'_, str> {
    escaped(text, |c| c.is_control() && c != '\n' && c != '\t')
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines = Lines::of(&self.source);
        let path = printable(&self.path.to_string_lossy()).into_owned();
        for d in self.items.iter().take(SHOWN) {
            let (line, col) = lines.line_col(d.span.start);
            let label = if d.warning { "warning" } else { "error" };
            let message = printable(&d.message);
            if self.brief {
                write!(f, "{path}:{line}:{col}: {label}: {message}")?;
                if let Some(hint) = &d.hint {
                    write!(f, " (hint: {})", printable(hint))?;
                }
                writeln!(f)?;
                continue;
            }
            writeln!(f, "{path}:{line}:{col}: {label}: {message}")?;
            if let Some(text) = lines.text(line) {
                // At most SHOWN_LINE characters of the line, around the
                // token; one character for one, so the caret stays under it.
                let (skip, caret_col) = if col > SHOWN_LINE / 2 {
                    (col - SHOWN_LINE / 2, SHOWN_LINE / 2 + 1)
                } else {
                    (0, col)
                };
                let shown: String = text
                    .chars()
                    .skip(skip)
                    .take(SHOWN_LINE)
                    .map(|c| {
                        if c.is_control() && c != '\t' {
                            '\u{fffd}'
                        } else {
                            c
                        }
                    })
                    .collect();
                let width = text
                    .get(col - 1..)
                    .map_or(1, |rest| {
                        let on_line = d.span.len().min(rest.len());
                        rest[..rest.floor_char_boundary(on_line)].chars().count()
                    })
                    .clamp(1, SHOWN_LINE / 2);
                writeln!(f, "{line:>5} | {shown}")?;
                writeln!(
                    f,
                    "      | {}{}",
                    " ".repeat(caret_col - 1),
                    "^".repeat(width)
                )?;
            }
            if let Some(hint) = &d.hint {
                writeln!(f, "      = hint: {}", printable(hint))?;
            }
        }
        if self.items.len() > SHOWN {
            writeln!(f, "... and {} more not shown", self.items.len() - SHOWN)?;
        }
        let n = self.items.iter().filter(|d| !d.warning).count();
        let w = self.items.len() - n;
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        if n > 0 {
            write!(f, "{path}: {n} error{} found", plural(n))
        } else {
            write!(f, "{path}: {w} warning{}", plural(w))
        }
    }
}

thread_local! {
    /// Suggestions left for the file being checked: only the first
    /// [`SHOWN`] diagnostics are shown, so thousands of unknown names do
    /// not each pay a comparison with every known one.
    static SUGGESTIONS_LEFT: std::cell::Cell<usize> = const { std::cell::Cell::new(SHOWN) };
}

/// Gives the next file its own budget of suggestions.
pub fn reset_suggestions() {
    SUGGESTIONS_LEFT.with(|c| c.set(SHOWN));
}

/// The closest of `candidates` to `name`, if it is close enough to be a
/// plausible typo.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    // Bounded: a budget per file, names of at most 64 bytes, the first
    // 1,000 candidates of a plausible length.
    if name.len() > 64 || SUGGESTIONS_LEFT.with(std::cell::Cell::get) == 0 {
        return None;
    }
    SUGGESTIONS_LEFT.with(|c| c.set(c.get() - 1));
    candidates
        .into_iter()
        .filter(|c| c.len() <= 64 && c.len().abs_diff(name.len()) <= name.len().max(4))
        .take(1_000)
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
