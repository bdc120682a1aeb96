//! The rules-file pipeline on arbitrary bytes: read as `check` and `run`
//! read them (parse -> validate -> compile with its size accounting), then
//! rendered as each shows them (`check`'s diagnostics with lines, the
//! daemon's brief ones, the report). Nothing may panic, and a rendering
//! never carries a raw control character.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sg_agent::{
    config,
    policy::{Refusal, admit, report},
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    let shown = match admit(path, text, true) {
        Ok((vpc, _compiled)) => {
            let mut shown = report::render_table(&report::report(&vpc));
            if let Some(w) = config::render_warnings(path, text, &vpc, true) {
                shown.push_str(&w);
            }
            shown
        }
        Err(Refusal::Invalid(d)) => {
            let full = d.to_string();
            let brief = d.brief().to_string();
            assert!(
                !brief.contains(|c: char| c.is_control() && c != '\n'),
                "the daemon's log is given a control character"
            );
            full
        }
        Err(other) => other.to_string(),
    };
    assert!(
        !shown.contains(|c: char| c.is_control() && c != '\n' && c != '\t'),
        "a control character reaches the terminal"
    );
});
