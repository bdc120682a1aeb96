//! How errors are told: every layer logs an error with its causes, and the
//! command line prints them the same way.

/// An error and its causes, `outer: inner: innermost`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
