//! `sg-agent completions SHELL` and the man page, generated from the clap
//! definitions by clap's own generators (`clap_complete`, `clap_mangen`), so
//! they never drift from the options the binary takes.

use std::{io::Write as _, process::ExitCode};

use clap::CommandFactory;

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

pub fn completions(args: &CompletionsArgs) -> ExitCode {
    let mut cmd = super::Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "sg-agent", &mut std::io::stdout());
    ExitCode::SUCCESS
}

/// sg-agent(1): the top-level page, each verb's options in a section of
/// its own.
pub fn manpage() -> ExitCode {
    let cmd = super::Cli::command();
    let mut out = Vec::new();
    let man = clap_mangen::Man::new(cmd.clone());
    if man.render(&mut out).is_err() {
        return ExitCode::from(1);
    }
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("sg-agent {}", sub.get_name());
        let page = clap_mangen::Man::new(sub.clone());
        let mut section = Vec::new();
        if page.render_options_section(&mut section).is_err() {
            return ExitCode::from(1);
        }
        out.extend_from_slice(format!(".SH \"{}\"\n", name.to_uppercase()).as_bytes());
        if let Some(about) = sub.get_about() {
            out.extend_from_slice(format!("{about}\n").as_bytes());
        }
        // The options section's own heading is replaced by the verb's.
        let text = String::from_utf8_lossy(&section).replacen(".SH OPTIONS\n", ".PP\n", 1);
        out.extend_from_slice(text.as_bytes());
    }
    if std::io::stdout().write_all(&out).is_err() {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
