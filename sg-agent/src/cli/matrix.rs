//! `sg-agent matrix FILE [--ports 22,80,...]`: who can reach whom over TCP,
//! offline (what AWS sells as Reachability Analyzer).

use std::{fmt::Write as _, path::PathBuf, process::ExitCode};

use crate::policy::explain;

#[derive(Debug, clap::Args)]
pub struct MatrixArgs {
    /// The rules file.
    file: PathBuf,
    /// TCP ports to check; default: every single port the inbound rules
    /// name.
    #[arg(long, value_delimiter = ',')]
    ports: Vec<u16>,
}

pub fn matrix(args: &MatrixArgs) -> ExitCode {
    let (vpc, _) = match super::check::load(&args.file, crate::config::MAX_BYTES, true) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let ports = if args.ports.is_empty() {
        explain::named_ports(&vpc)
    } else {
        args.ports.clone()
    };
    let cells = explain::matrix(&vpc, &ports);
    let width = vpc
        .instances
        .iter()
        .map(|i| i.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut out = String::new();
    let _ = write!(out, "{:<width$}  {:<width$}", "FROM", "TO");
    for p in &ports {
        let _ = write!(out, " {:>6}", format!("tcp/{p}"));
    }
    out.push('\n');
    for pair in cells.chunks(ports.len().max(1)) {
        let (from, to) = (&pair[0].0, &pair[0].1);
        let _ = write!(out, "{from:<width$}  {to:<width$}");
        for (_, _, _, allowed) in pair {
            let _ = write!(out, " {:>6}", if *allowed { "allow" } else { "-" });
        }
        out.push('\n');
    }
    print!("{}", crate::config::diagnostics::printable_lines(&out));
    ExitCode::SUCCESS
}
