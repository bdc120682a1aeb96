//! The operator's own SSH session. Enforcing an instance whose addresses
//! carry the SSH session that started the agent (or any session the host's
//! sshd holds) with no rule allowing it cuts the operator off, as a
//! security group without that rule would: `run` refuses it unless
//! `--force`, naming the rule that is missing. The sessions are the
//! agent's `SSH_CONNECTION` and the established TCP connections to the
//! SSH port in the agent's own namespace; each is judged by the reference
//! evaluator exactly as `explain` judges a flow.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{
    config::{Direction, Vpc},
    policy::explain::{self, Query, Remote},
};

/// An SSH session: the client and the server address and port it reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    pub client: IpAddr,
    pub server: IpAddr,
    pub port: u16,
}

/// `SSH_CONNECTION`'s session (`CLIENT_IP CLIENT_PORT SERVER_IP
/// SERVER_PORT`), and the established connections to its server port (22
/// without one) in this namespace.
pub fn sessions() -> Vec<Session> {
    let mut out = Vec::new();
    let from_env = std::env::var("SSH_CONNECTION").ok().and_then(|v| {
        let f: Vec<&str> = v.split_whitespace().collect();
        Some(Session {
            client: f.first()?.parse().ok()?,
            server: f.get(2)?.parse().ok()?,
            port: f.get(3)?.parse().ok()?,
        })
    });
    let port = from_env.map_or(22, |s| s.port);
    out.extend(from_env);
    for (path, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        for line in text.lines().skip(1) {
            if let Some(s) = proc_line(line, v6).filter(|s| s.port == port)
                && !out.contains(&s)
            {
                out.push(s);
            }
        }
    }
    out
}

/// One established connection of `/proc/net/tcp{,6}` to a local port.
fn proc_line(line: &str, v6: bool) -> Option<Session> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.get(3) != Some(&"01") {
        return None;
    }
    let endpoint = |s: &str| -> Option<(IpAddr, u16)> {
        let (addr, port) = s.split_once(':')?;
        let port = u16::from_str_radix(port, 16).ok()?;
        // The kernel prints each 32-bit word in host order.
        let words: Vec<u32> = (0..addr.len() / 8)
            .map(|i| u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16).ok())
            .collect::<Option<_>>()?;
        let ip = if v6 {
            let mut b = [0u8; 16];
            for (i, w) in words.iter().enumerate() {
                b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            let ip = Ipv6Addr::from(b);
            ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4)
        } else {
            IpAddr::V4(Ipv4Addr::from(words.first()?.to_ne_bytes()))
        };
        Some((ip, port))
    };
    let (server, port) = endpoint(f.get(1)?)?;
    let (client, _) = endpoint(f.get(2)?)?;
    Some(Session {
        client,
        server,
        port,
    })
}

/// The sessions `vpc` would cut: an instance enforced here holds the
/// session's server address and no rule of its groups allows the session
/// in. One line each, naming the rule to add.
pub fn cut(vpc: &Vpc, sessions: &[Session]) -> Vec<String> {
    let mut out = Vec::new();
    for s in sessions {
        for inst in vpc
            .instances
            .iter()
            .filter(|i| i.enforced_here() && i.addresses.contains(&s.server))
        {
            let query = Query {
                to: inst.name.clone(),
                remote: Remote::Address(s.client),
                direction: Direction::Ingress,
                protocol: 6,
                port: s.port,
                icmp: (0, 0),
            };
            if explain::explain(vpc, &query).is_ok_and(|e| !e.allowed) {
                let block = match s.client {
                    IpAddr::V4(a) => format!("cidr_blocks = [\"{a}/32\"]"),
                    IpAddr::V6(a) => format!("ipv6_cidr_blocks = [\"{a}/128\"]"),
                };
                out.push(format!(
                    "instance {} holds {} and no rule of its groups allows the SSH session from \
                     {} to port {}: enforcing it would cut that session (and this one, if it is \
                     yours); add to one of its groups [[security_group.ingress]] protocol = \
                     \"tcp\", from_port = {port}, to_port = {port}, {block}",
                    inst.name,
                    s.server,
                    s.client,
                    s.port,
                    port = s.port
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_lines_are_read_as_the_kernel_writes_them() {
        // 10.0.0.5:22 <- 203.0.113.7:51000, established.
        let line = "   0: 0500000A:0016 077100CB:C738 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 20 4 30 10 -1";
        let s = proc_line(line, false).expect("established");
        assert_eq!(
            s,
            Session {
                client: "203.0.113.7".parse().unwrap(),
                server: "10.0.0.5".parse().unwrap(),
                port: 22
            }
        );
        let listening = line.replace(" 01 ", " 0A ");
        assert!(proc_line(&listening, false).is_none());
    }

    #[test]
    fn a_session_no_rule_allows_is_named_with_the_rule_to_add() {
        let text = "[[security_group]]\nname = \"web\"\n  [[security_group.ingress]]\n  protocol = \"tcp\"\n  from_port = 22\n  to_port = 22\n  cidr_blocks = [\"198.51.100.0/24\"]\n\n[[instance]]\nname = \"host\"\ninterface = \"eth0\"\naddresses = [\"10.0.0.5\"]\nsecurity_groups = [\"web\"]\n";
        let vpc = crate::config::from_str("vpc.toml".as_ref(), text).expect("valid");
        let session = |client: &str| Session {
            client: client.parse().unwrap(),
            server: "10.0.0.5".parse().unwrap(),
            port: 22,
        };
        assert!(cut(&vpc, &[session("198.51.100.9")]).is_empty(), "allowed");
        let lines = cut(&vpc, &[session("203.0.113.7")]);
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].contains("cidr_blocks = [\"203.0.113.7/32\"]"),
            "{}",
            lines[0]
        );
        let elsewhere = Session {
            server: "10.0.0.6".parse().unwrap(),
            ..session("203.0.113.7")
        };
        assert!(
            cut(&vpc, &[elsewhere]).is_empty(),
            "not this instance's address"
        );
    }
}
