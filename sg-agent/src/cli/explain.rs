//! `sg-agent explain FILE --to INSTANCE --from ADDRESS --protocol tcp --port
//! 80`: whether a flow is allowed and by which rules, or why not, offline.

use std::{net::IpAddr, path::PathBuf, process::ExitCode};

use clap::ValueEnum;

use crate::{
    config::Direction,
    policy::explain::{self, Query, Remote},
};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DirectionArg {
    /// The remote end opens the flow to the instance.
    Ingress,
    /// The instance opens the flow to the remote end.
    Egress,
}

#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("remote").required(true).args(["from", "from_instance"]))]
pub struct ExplainArgs {
    /// The rules file.
    file: PathBuf,
    /// The instance whose security groups judge the flow.
    #[arg(long, value_name = "INSTANCE")]
    to: String,
    /// The other end's address.
    #[arg(long, value_name = "ADDRESS")]
    from: Option<IpAddr>,
    /// The other end as an instance of the file: its own rules the other
    /// way are judged too.
    #[arg(long, value_name = "INSTANCE")]
    from_instance: Option<String>,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, another protocol's name (as in the
    /// rules file, any case) or a number.
    #[arg(long, default_value = "tcp")]
    protocol: String,
    /// The destination port: required for TCP and UDP.
    #[arg(long)]
    port: Option<u16>,
    /// ICMP type and code (ICMP, `ICMPv6`), e.g. 8 0 for an echo request.
    #[arg(long, num_args = 2, value_names = ["TYPE", "CODE"], default_values_t = [8, 0])]
    icmp: Vec<u8>,
    /// Which way the flow goes: into the instance (default) or out of it.
    #[arg(long, value_enum, default_value_t = DirectionArg::Ingress)]
    direction: DirectionArg,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// A protocol as the rules file names it (any case) or its number.
fn protocol_number(name: &str) -> Option<u8> {
    let name = name.to_ascii_lowercase();
    crate::config::PROTOCOL_NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, p)| *p)
        .or_else(|| name.parse().ok())
}

/// Exit status when the flow is denied.
pub const DENIED: u8 = 4;

pub fn explain(args: &ExplainArgs) -> ExitCode {
    let Some(protocol) = protocol_number(&args.protocol) else {
        eprintln!(
            "error: --protocol {}: expected tcp, udp, icmp, icmpv6 or a number (0-255)",
            args.protocol
        );
        return ExitCode::from(2);
    };
    let port = match (protocol, args.port) {
        (6 | 17, None) => {
            eprintln!(
                "error: --port is needed for {}: which destination port (e.g. --port 22)?",
                args.protocol.to_ascii_lowercase()
            );
            return ExitCode::from(2);
        }
        (_, p) => p.unwrap_or(0),
    };
    let (vpc, _) = match super::check::load(&args.file, crate::config::MAX_BYTES, true) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let query = Query {
        to: args.to.clone(),
        remote: match (&args.from, &args.from_instance) {
            (Some(a), _) => Remote::Address(*a),
            (None, Some(i)) => Remote::Instance(i.clone()),
            (None, None) => unreachable!("clap requires one"),
        },
        direction: match args.direction {
            DirectionArg::Ingress => Direction::Ingress,
            DirectionArg::Egress => Direction::Egress,
        },
        protocol,
        port,
        icmp: (args.icmp[0], args.icmp[1]),
    };
    let e = match explain::explain(&vpc, &query) {
        Ok(e) => e,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(1);
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&e).expect("serialisable")
        );
    } else {
        print!(
            "{}",
            crate::config::diagnostics::printable_lines(&explain::render(&e))
        );
    }
    if e.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(DENIED)
    }
}
