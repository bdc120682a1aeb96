//! `--metrics-listen ADDR:PORT`: Prometheus metrics, encoded by
//! prometheus-client (the Prometheus project's own Rust client, `OpenMetrics`
//! text) from a status snapshot taken at each scrape, so the endpoint and
//! `sg-agent status` never disagree. Served over a minimal HTTP/1.1
//! responder: one GET per connection, `/metrics` only.

use std::{net::SocketAddr, time::Duration};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};

use super::{control::AskStatus, status::Status};

/// A label value from the rules file (an instance's or a group's name),
/// escaped as the exposition format requires: prometheus-client writes
/// label values as they are, so a name with a quote or a newline could
/// otherwise end the label and add lines of its own. Other control
/// characters become U+FFFD.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Name(String);

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c if c.is_control() => encoder.write_char('\u{fffd}')?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PacketLabels {
    instance: Name,
    direction: String,
    verdict: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    instance: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    instance: Name,
    group: Name,
    direction: String,
    rule: String,
}

/// The per-instance metric families.
#[derive(Default)]
struct InstanceFamilies {
    packets: Family<PacketLabels, Counter>,
    conns: Family<InstanceLabels, Gauge>,
    capacity: Family<InstanceLabels, Gauge>,
    exceeded: Family<InstanceLabels, Counter>,
    lost: Family<InstanceLabels, Counter>,
    new_flows: Family<InstanceLabels, Counter>,
    generation: Family<InstanceLabels, Gauge>,
    rule_flows: Family<RuleLabels, Counter>,
}

fn instance_metrics(f: &InstanceFamilies, i: &super::status::InstanceStatus) {
    let inst = InstanceLabels {
        instance: Name(i.name.clone()),
    };
    for (direction, reasons) in &i.packets {
        for (reason, n) in reasons {
            let verdict = if reason.starts_with("pass_") {
                "pass"
            } else {
                "drop"
            };
            f.packets
                .get_or_create(&PacketLabels {
                    instance: Name(i.name.clone()),
                    direction: direction.clone(),
                    verdict: verdict.into(),
                    reason: reason.clone(),
                })
                .inc_by(*n);
        }
    }
    let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    f.conns.get_or_create(&inst).set(gauge(i.conntrack.entries));
    f.capacity
        .get_or_create(&inst)
        .set(gauge(i.conntrack.capacity));
    f.exceeded
        .get_or_create(&inst)
        .inc_by(i.conntrack.allowance_exceeded);
    f.lost.get_or_create(&inst).inc_by(i.events_lost);
    f.new_flows.get_or_create(&inst).inc_by(i.new_flows);
    if let Some(g) = i.generation {
        f.generation.get_or_create(&inst).set(i64::from(g));
    }
    for r in &i.rules {
        f.rule_flows
            .get_or_create(&RuleLabels {
                instance: Name(i.name.clone()),
                group: Name(r.group.clone()),
                direction: r.direction.clone(),
                rule: r.rule.to_string(),
            })
            .inc_by(r.flows);
    }
}

/// The exposition of `status`, in `OpenMetrics` text.
pub fn exposition(status: &Status) -> String {
    let mut registry = Registry::with_prefix("sg_agent");
    let families = InstanceFamilies::default();
    let reloads = Family::<ResultLabels, Counter>::default();
    let records: Counter = Counter::default();
    let apply_seconds: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();

    for i in &status.instances {
        instance_metrics(&families, i);
    }
    let a = &status.agent;
    reloads
        .get_or_create(&ResultLabels {
            result: "applied".into(),
        })
        .inc_by(a.reloads);
    reloads
        .get_or_create(&ResultLabels {
            result: "rejected".into(),
        })
        .inc_by(a.reloads_rejected);
    if let Some(f) = &a.flow_log {
        records.inc_by(f.records_written);
    }
    apply_seconds.set(a.last_apply_seconds);

    let InstanceFamilies {
        packets,
        conns,
        capacity,
        exceeded,
        lost,
        new_flows,
        generation,
        rule_flows,
    } = families;
    registry.register(
        "packets",
        "Packets judged, by instance, direction, verdict and reason",
        packets,
    );
    registry.register(
        "conntrack_entries",
        "Connection-table entries in use",
        conns,
    );
    registry.register(
        "conntrack_capacity",
        "Connection-table capacity (the connection allowance)",
        capacity,
    );
    registry.register(
        "conntrack_allowance_exceeded",
        "New flows refused because the connection table was full (AWS's conntrack_allowance_exceeded)",
        exceeded,
    );
    registry.register(
        "events_lost",
        "Events (flow-log and drop-log data, new flows) the programs could not send",
        lost,
    );
    registry.register("new_flows", "New tracked flows", new_flows);
    registry.register(
        "policy_generation",
        "Policy generation (0 or 1) the programs judge by",
        generation,
    );
    registry.register(
        "rule_flows",
        "Flows each rule allowed (a flow allowed by several rules counts under each)",
        rule_flows,
    );
    registry.register("reloads", "Reloads by result", reloads);
    registry.register("flow_log_records", "Flow-log records written", records);
    registry.register(
        "last_apply_seconds",
        "How long the last applied change took",
        apply_seconds,
    );
    let mut out = String::new();
    encode(&mut out, &registry).expect("encoding into a String cannot fail");
    out
}

/// Serves `/metrics` on `addr` until the runtime stops.
pub async fn serve(listener: TcpListener, ask: AskStatus) {
    let mut gate = super::listen::Gate::new("metrics", super::listen::MAX_CONNECTIONS);
    loop {
        let ((stream, _), permit) = gate.next(|| listener.accept()).await;
        let ask = ask.clone();
        tokio::spawn(async move {
            let _permit = permit;
            // An idle client holds its place for 5 s at most.
            let _ = tokio::time::timeout(Duration::from_secs(5), answer(stream, &ask)).await;
        });
    }
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

async fn answer(mut stream: TcpStream, ask: &AskStatus) -> std::io::Result<()> {
    // The request head, at most 8 KiB.
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next(), parts.next());
    let response = if method == Some("GET")
        && target.is_some_and(|t| t == "/metrics" || t.starts_with("/metrics?"))
    {
        let (tx, rx) = oneshot::channel();
        ask(tx);
        match tokio::time::timeout(Duration::from_secs(5), rx).await {
            Ok(Ok(status)) => reply(
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                &exposition(&status),
            ),
            _ => reply(
                "503 Service Unavailable",
                "text/plain",
                "the agent did not answer within 5 s\n",
            ),
        }
    } else {
        reply("404 Not Found", "text/plain", "metrics are at /metrics\n")
    };
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

fn reply(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
