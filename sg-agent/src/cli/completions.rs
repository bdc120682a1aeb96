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

/// `sg-agent manpage`: sg-agent(1), the top-level page with each verb's
/// options in a section of its own (no page per verb is cited: there is
/// none); `--section 5`: sg-agent.toml(5), the rules file reference.
pub fn manpage(args: &ManpageArgs) -> ExitCode {
    let out = if args.section == 5 {
        rules_file_page().into_bytes()
    } else {
        match command_page() {
            Ok(out) => out,
            Err(()) => return ExitCode::from(1),
        }
    };
    if std::io::stdout().write_all(&out).is_err() {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

#[derive(Debug, clap::Args)]
pub struct ManpageArgs {
    /// 1: the command (sg-agent(1)); 5: the rules file (sg-agent.toml(5)).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    section: u8,
}

fn command_page() -> Result<Vec<u8>, ()> {
    let cmd = super::Cli::command();
    let mut out = Vec::new();
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(&mut out).map_err(drop)?;
    man.render_name_section(&mut out).map_err(drop)?;
    man.render_synopsis_section(&mut out).map_err(drop)?;
    man.render_description_section(&mut out).map_err(drop)?;
    man.render_options_section(&mut out).map_err(drop)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("sg-agent {}", sub.get_name());
        let page = clap_mangen::Man::new(sub.clone());
        let mut section = Vec::new();
        page.render_options_section(&mut section).map_err(drop)?;
        out.extend_from_slice(format!(".SH \"{}\"\n", name.to_uppercase()).as_bytes());
        if let Some(about) = sub.get_about() {
            out.extend_from_slice(format!("{about}\n").as_bytes());
        }
        // The options section's own heading is replaced by the verb's.
        let text = String::from_utf8_lossy(&section).replacen(".SH OPTIONS\n", ".PP\n", 1);
        out.extend_from_slice(text.as_bytes());
    }
    man.render_extra_section(&mut out).map_err(drop)?;
    out.extend_from_slice(b".SH \"SEE ALSO\"\nsg\\-agent.toml(5)\n");
    man.render_version_section(&mut out).map_err(drop)?;
    Ok(out)
}

/// The rules file reference (docs/rules-file.md, the same text) as roff:
/// headings, paragraphs, code blocks and tables, which is all it uses.
fn rules_file_page() -> String {
    const SOURCE: &str = include_str!("../../../docs/rules-file.md");
    let mut out = format!(
        ".TH SG-AGENT.TOML 5 \"\" \"sg-agent {}\"\n.SH NAME\nsg\\-agent.toml \\- the rules file of sg\\-agent: security groups and instances\n",
        env!("CARGO_PKG_VERSION")
    );
    let mut code = false;
    for line in SOURCE.lines() {
        if line.starts_with("```") {
            out.push_str(if code { ".fi\n" } else { ".PP\n.nf\n" });
            code = !code;
            continue;
        }
        if code {
            out.push_str(&roff_escape(line));
            out.push('\n');
        } else if line.starts_with("# ") {
            out.push_str(".SH DESCRIPTION\n");
        } else if let Some(h) = line
            .strip_prefix("## ")
            .or_else(|| line.strip_prefix("### "))
        {
            out.push_str(".SH \"");
            out.push_str(&roff_escape(&h.to_uppercase()));
            out.push_str("\"\n");
        } else if line.starts_with("| ---") || line.starts_with("|---") {
        } else if let Some(row) = line.strip_prefix('|') {
            let cells: Vec<&str> = row
                .trim_end_matches('|')
                .split(" | ")
                .map(str::trim)
                .collect();
            out.push_str(".TP\n");
            out.push_str(&roff_escape(&plain(
                cells.first().copied().unwrap_or_default(),
            )));
            out.push('\n');
            out.push_str(&roff_escape(&plain(&cells[1..].join(" "))));
            out.push('\n');
        } else if line.trim().is_empty() {
            out.push_str(".PP\n");
        } else {
            out.push_str(&roff_escape(&plain(line)));
            out.push('\n');
        }
    }
    out.push_str(".SH \"SEE ALSO\"\nsg\\-agent(1)\n");
    out
}

/// Markdown's marks and links, as plain text.
fn plain(text: &str) -> String {
    let mut out = text.replace(['`', '*'], "");
    // [label](target) -> label
    while let (Some(open), Some(mid)) = (out.find('['), out.find("](")) {
        let Some(close) = out[mid..].find(')').map(|c| mid + c) else {
            break;
        };
        if open > mid {
            break;
        }
        out = format!(
            "{}{}{}",
            &out[..open],
            &out[open + 1..mid],
            &out[close + 1..]
        );
    }
    out
}

/// A line as roff text: backslashes and hyphens escaped, a leading dot or
/// quote kept from being read as a request.
fn roff_escape(line: &str) -> String {
    let s = line.replace('\\', "\\e").replace('-', "\\-");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}
