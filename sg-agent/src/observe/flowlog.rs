//! Flow logs in AWS's VPC Flow Logs version 2 default format: one record per
//! flow (5-tuple, direction of the packets, action) per aggregation
//! interval, with packets, bytes, start and end.
//!
//! Where the numbers come from:
//! * ACCEPT, tracked flows: the connection table's per-endpoint packet and
//!   byte counts (counted by the programs while flow logs are on), read at
//!   the end of each interval and when an expired entry is reclaimed; one
//!   record per direction with packets in it, as AWS writes request and
//!   reply apart.
//! * ACCEPT, untracked flows, and REJECT: the programs' per-packet events,
//!   aggregated here per 5-tuple. Their rate is bounded per CPU; when the
//!   bound held events back during an interval, a `SKIPDATA` record for
//!   the interface says so (as AWS does when its capacity is exceeded).

use std::{
    collections::HashMap, fmt::Write as _, io::Write, net::IpAddr, path::PathBuf, time::Duration,
};

use serde::{Deserialize, Serialize};
use sg_common::{
    conntrack::{CtEntry, CtKey},
    flow::{FAMILY_V4, addr_octets, proto},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    Accept,
    Reject,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accept => "ACCEPT",
            Self::Reject => "REJECT",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum LogStatus {
    /// Data logged normally.
    Ok,
    /// Some records of the interval were skipped (events over the bound).
    Skipdata,
}

/// One flow-log record. Field names and order are AWS's version 2 default
/// format; `instance` is this tool's addition (JSON only), naming the
/// instance whose interface saw the flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Record {
    pub version: u8,
    pub account_id: String,
    /// The instance's interface: `netns/ifname`, or `ifname` in the host's
    /// own namespace (interface names repeat across namespaces).
    pub interface_id: String,
    pub srcaddr: Option<IpAddr>,
    pub dstaddr: Option<IpAddr>,
    pub srcport: Option<u16>,
    pub dstport: Option<u16>,
    pub protocol: Option<u8>,
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
    /// Unix seconds.
    pub start: u64,
    pub end: u64,
    pub action: Option<Action>,
    pub log_status: LogStatus,
    pub instance: String,
    /// JSON format only: the rules that allowed the flow (AWS ids where the
    /// file gives them, else `GROUP DIRECTION #N`), on the record of the
    /// interval in which the flow started, in the direction it started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<String>>,
    /// JSON format only: the service the flow went through, when AWS tracks
    /// every connection through it (`[[aws_service]]`): `TYPE NAME`, on the
    /// same record as `rules`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracked_through: Option<String>,
    /// JSON format only: on a `REJECT` record, the network ACL entry that
    /// denied the flow (`network ACL NAME, inbound rule N`), where the
    /// subnet's network ACL, not a security group, refused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_acl: Option<String>,
    /// `flows --live` only: why the packet passed or was dropped, in
    /// words (`pass_rule`, `drop_no_rule`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Record {
    /// The space-separated line of AWS's default format; `-` where a field
    /// has no value (a `SKIPDATA` record).
    pub fn to_text(&self) -> String {
        fn field<T: std::fmt::Display>(v: Option<T>) -> String {
            v.map_or_else(|| "-".to_owned(), |v| v.to_string())
        }
        let mut out = String::new();
        let _ = write!(
            out,
            "{} {} {} {} {} {} {} {} {} {} {} {} {} {}",
            self.version,
            self.account_id,
            self.interface_id,
            field(self.srcaddr),
            field(self.dstaddr),
            field(self.srcport),
            field(self.dstport),
            field(self.protocol),
            field(self.packets),
            field(self.bytes),
            self.start,
            self.end,
            field(self.action.map(Action::as_str)),
            match self.log_status {
                LogStatus::Ok => "OK",
                LogStatus::Skipdata => "SKIPDATA",
            }
        );
        out
    }

    /// A `SKIPDATA` record: what the interval of `interface_id` lost.
    pub fn skipdata(instance: &str, interface_id: &str, start: u64, end: u64) -> Self {
        Self {
            version: 2,
            account_id: "-".into(),
            interface_id: interface_id.to_owned(),
            srcaddr: None,
            dstaddr: None,
            srcport: None,
            dstport: None,
            protocol: None,
            packets: None,
            bytes: None,
            start,
            end,
            action: None,
            log_status: LogStatus::Skipdata,
            instance: instance.to_owned(),
            rules: None,
            tracked_through: None,
            network_acl: None,
            reason: None,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a record serializes")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// AWS's default format: space-separated fields, one record per line.
    Text,
    /// One JSON object per line, the same fields (kebab-case names).
    Json,
}

/// Where records go.
#[derive(Clone, Debug)]
pub enum Sink {
    Stdout,
    File(PathBuf),
}

/// The flow-log settings of `run`.
#[derive(Clone, Debug)]
pub struct Settings {
    pub sink: Sink,
    pub interval: Duration,
    pub format: Format,
    /// A file reaching this size is rotated (`PATH.1`, `PATH.2`, ...);
    /// 0: never.
    pub max_bytes: u64,
    /// Rotated files kept (at least 1).
    pub keep: u32,
}

/// Flows one instance's interval records one by one; the packets of any
/// further flow are summed into one `SKIPDATA` record per action (a flood
/// of random sources costs bounded memory and bounded output).
pub const MAX_FLOWS_PER_INTERVAL: usize = 10_000;

/// A flow as records name it: the packets' addresses, ports and protocol,
/// and the action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub action: Action,
}

/// Packets and bytes of a flow within the interval, and when (Unix s).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub packets: u64,
    pub bytes: u64,
    pub start: u64,
    pub end: u64,
}

impl Tally {
    fn add(&mut self, packets: u64, bytes: u64, start: u64, end: u64) {
        if self.packets == 0 {
            self.start = start;
            self.end = end;
        } else {
            self.start = self.start.min(start);
            self.end = self.end.max(end);
        }
        self.packets += packets;
        self.bytes += bytes;
    }
}

/// Packet and byte counts of one connection-table entry as last read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    packets_a: u32,
    packets_b: u32,
    bytes_a: u64,
    bytes_b: u64,
}

impl From<&CtEntry> for Counts {
    fn from(e: &CtEntry) -> Self {
        Self {
            packets_a: e.packets_a,
            packets_b: e.packets_b,
            bytes_a: e.bytes_a,
            bytes_b: e.bytes_b,
        }
    }
}

/// Growth since `last`; an entry whose counts went down was replaced (its
/// flow expired and came back), so all of it is new.
fn growth(now: u64, last: u64) -> u64 {
    if now >= last { now - last } else { now }
}

fn ip(family: u8, addr: &sg_common::flow::Addr) -> IpAddr {
    let o = addr_octets(addr);
    if family == FAMILY_V4 {
        IpAddr::from([o[0], o[1], o[2], o[3]])
    } else {
        IpAddr::from(o)
    }
}

/// Ports as records show them: none for ICMP (its echo identifier stands
/// in for ports inside the data plane only).
fn record_ports(proto_: u8, sport: u16, dport: u16) -> (u16, u16) {
    if proto_ == proto::ICMP || proto_ == proto::ICMPV6 {
        (0, 0)
    } else {
        (sport, dport)
    }
}

/// One interface's interval being aggregated.
#[derive(Debug, Default)]
pub struct Window {
    flows: HashMap<FlowKey, Tally>,
    /// Connection-table counts as last read, per entry.
    baseline: HashMap<CtKey, Counts>,
    /// Whether the baseline was taken (the first read records nothing:
    /// what an entry counted before this agent looked is not this
    /// interval's).
    primed: bool,
    /// Events lost by the interval's start.
    lost_at_start: u64,
    /// The rules that allowed each flow that started in this interval.
    attributed: HashMap<FlowKey, (Vec<String>, Option<String>)>,
    /// The network ACL entry that denied each rejected flow it denied.
    denied_by_acl: HashMap<FlowKey, String>,
    /// Packets and bytes of the flows past [`MAX_FLOWS_PER_INTERVAL`], per
    /// action (accepted, rejected).
    overflow: [Tally; 2],
    /// Packets summed into overflow records since the agent started.
    pub packets_summed: u64,
}

impl Window {
    /// Names the rules that allowed a flow that started now, and the
    /// automatically tracked service it went through, if any.
    pub fn attribute(&mut self, key: FlowKey, rules: Vec<String>, through: Option<String>) {
        if self.attributed.len() < MAX_FLOWS_PER_INTERVAL {
            self.attributed.insert(key, (rules, through));
        }
    }

    /// Names the network ACL entry that denied a rejected flow.
    pub fn denied_by_acl(&mut self, key: FlowKey, entry: String) {
        if self.denied_by_acl.len() < MAX_FLOWS_PER_INTERVAL {
            self.denied_by_acl.insert(key, entry);
        }
    }

    /// A packet seen through an event.
    pub fn add_packet(&mut self, key: FlowKey, bytes: u64, at: u64) {
        self.add(key, 1, bytes, at, at);
    }

    /// Into the flow's tally, or past the bound into its action's sum.
    fn add(&mut self, key: FlowKey, packets: u64, bytes: u64, start: u64, end: u64) {
        let full = self.flows.len() >= MAX_FLOWS_PER_INTERVAL;
        match self.flows.get_mut(&key) {
            Some(t) => t.add(packets, bytes, start, end),
            None if !full => {
                let mut t = Tally::default();
                t.add(packets, bytes, start, end);
                self.flows.insert(key, t);
            }
            None => {
                let i = usize::from(key.action == Action::Reject);
                self.overflow[i].add(packets, bytes, start, end);
                self.packets_summed += packets;
            }
        }
    }

    /// The connection table as read now: growth since the last read, per
    /// direction, into the interval; `gone` entries are forgotten after.
    /// `wall` converts the programs' clock to Unix seconds.
    pub fn add_connections(
        &mut self,
        entries: &[(CtKey, CtEntry)],
        gone: bool,
        start: u64,
        wall: impl Fn(u64) -> u64,
    ) {
        for (key, entry) in entries {
            let now = Counts::from(entry);
            let last = if self.primed || gone {
                self.baseline.get(key).copied().unwrap_or_default()
            } else {
                now
            };
            let end = wall(entry.last_seen_ns).max(start);
            let a = ip(key.family, &key.addr_a);
            let b = ip(key.family, &key.addr_b);
            let (pa, pb) = record_ports(key.proto, key.port_a, key.port_b);
            let ways = [
                (
                    a,
                    b,
                    pa,
                    pb,
                    growth(u64::from(now.packets_a), u64::from(last.packets_a)),
                    growth(now.bytes_a, last.bytes_a),
                ),
                (
                    b,
                    a,
                    pb,
                    pa,
                    growth(u64::from(now.packets_b), u64::from(last.packets_b)),
                    growth(now.bytes_b, last.bytes_b),
                ),
            ];
            for (src, dst, sport, dport, packets, bytes) in ways {
                if packets == 0 {
                    continue;
                }
                let key = FlowKey {
                    src,
                    dst,
                    sport,
                    dport,
                    proto: key.proto,
                    action: Action::Accept,
                };
                self.add(key, packets, bytes, start, end);
            }
            if gone {
                self.baseline.remove(key);
            } else {
                self.baseline.insert(*key, now);
            }
        }
    }

    /// Ends the baseline's first read and drops entries no longer in the
    /// table (`live`: the keys read this time).
    pub fn settle(&mut self, live: &[(CtKey, CtEntry)]) {
        self.primed = true;
        if self.baseline.len() > live.len() {
            let keep: std::collections::HashSet<&CtKey> = live.iter().map(|(k, _)| k).collect();
            self.baseline.retain(|k, _| keep.contains(k));
        }
    }

    /// The interval's records, sorted, and a fresh interval. `lost`: the
    /// events lost so far (a `SKIPDATA` record when it grew).
    pub fn close(
        &mut self,
        instance: &str,
        interface_id: &str,
        start: u64,
        end: u64,
        lost: u64,
    ) -> Vec<Record> {
        let mut flows: Vec<(FlowKey, Tally)> = self.flows.drain().collect();
        flows.sort_by_key(|(k, t)| (t.start, *k));
        let mut attributed = std::mem::take(&mut self.attributed);
        let mut denied_by_acl = std::mem::take(&mut self.denied_by_acl);
        let mut out: Vec<Record> = flows
            .into_iter()
            .map(|(k, t)| {
                let (rules, tracked_through) = attributed
                    .remove(&k)
                    .map_or((None, None), |(r, t)| (Some(r), t));
                Record {
                    version: 2,
                    account_id: "-".into(),
                    interface_id: interface_id.to_owned(),
                    srcaddr: Some(k.src),
                    dstaddr: Some(k.dst),
                    srcport: Some(k.sport),
                    dstport: Some(k.dport),
                    protocol: Some(k.proto),
                    packets: Some(t.packets),
                    bytes: Some(t.bytes),
                    start: t.start.max(start),
                    end: t.end.clamp(start, end),
                    action: Some(k.action),
                    log_status: LogStatus::Ok,
                    instance: instance.to_owned(),
                    rules,
                    tracked_through,
                    network_acl: denied_by_acl.remove(&k),
                    reason: None,
                }
            })
            .collect();
        for (action, t) in [Action::Accept, Action::Reject]
            .into_iter()
            .zip(std::mem::take(&mut self.overflow))
        {
            if t.packets > 0 {
                out.push(Record {
                    packets: Some(t.packets),
                    bytes: Some(t.bytes),
                    start: t.start.max(start),
                    end: t.end.clamp(start, end),
                    action: Some(action),
                    ..Record::skipdata(instance, interface_id, start, end)
                });
            }
        }
        if lost > self.lost_at_start {
            out.push(Record::skipdata(instance, interface_id, start, end));
        }
        self.lost_at_start = lost;
        out
    }
}

/// Writes records to the sink, in the chosen format: whole records or none
/// (a failed write or rotation, a full disk say, is cut back to the last
/// whole record, the records are counted as lost, and the next write that
/// succeeds starts with a `SKIPDATA` record for the time they cover),
/// rotating the file at its size cap. A file starts with its header
/// whatever failed before.
///
/// Beside a file, `PATH.last-write` says when records were last written and
/// whether the interval since is open: an agent killed (`kill -9`) before
/// it wrote its open interval leaves it open, and the next agent's first
/// write starts with a `SKIPDATA` record from then.
pub struct Writer {
    settings: Settings,
    out: Output,
    pub written: u64,
    /// Records that could not be written, since the agent started.
    pub lost: u64,
    /// From when records were lost and not yet said so in the file.
    unsaid: Option<u64>,
}

enum Output {
    Stdout,
    /// The file, and its length as written.
    File(std::fs::File, u64),
}

impl Writer {
    pub fn open(settings: &Settings) -> std::io::Result<Self> {
        let mut w = Self {
            settings: settings.clone(),
            out: Output::Stdout,
            written: 0,
            lost: 0,
            unsaid: None,
        };
        w.reopen()?;
        if let Some(since) = w.left_open() {
            log::warn!(
                "flow log: the agent before stopped without writing the records of its open \
                 interval (since {since}): they are lost, and a SKIPDATA record says so"
            );
            w.unsaid = Some(since);
        }
        w.mark(false);
        Ok(w)
    }

    /// `PATH.last-write` of a file sink.
    fn marker(&self) -> Option<PathBuf> {
        let Sink::File(path) = &self.settings.sink else {
            return None;
        };
        let mut p = path.clone().into_os_string();
        p.push(".last-write");
        Some(PathBuf::from(p))
    }

    /// When the interval an earlier agent left open (never written) began.
    fn left_open(&self) -> Option<u64> {
        let text = std::fs::read_to_string(self.marker()?).ok()?;
        let mut fields = text.split_whitespace();
        let at = fields.next()?.parse().ok()?;
        (fields.next() == Some("open")).then_some(at)
    }

    /// Says when records were last written, and whether an interval is
    /// open since (best effort: a failure only weakens what a later agent
    /// can say of a loss).
    fn mark(&self, closed: bool) {
        let Some(marker) = self.marker() else {
            return;
        };
        let text = format!(
            "{} {}\n",
            super::unix_now(),
            if closed { "closed" } else { "open" }
        );
        let tmp = marker.with_extension("last-write.tmp");
        if std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &marker))
            .is_err()
        {
            let _ = std::fs::remove_file(&tmp);
        }
    }

    /// The agent stops, its open interval written: nothing is lost.
    pub fn finish(&self) {
        if self.unsaid.is_none() {
            self.mark(true);
        }
    }

    /// Opens the file again (after logrotate moved it: on SIGHUP). A new
    /// file is created 0640, never through a symlink, and only in a
    /// directory no other user can write; one that exists must be a
    /// regular file of this user's.
    pub fn reopen(&mut self) -> std::io::Result<()> {
        self.out = match &self.settings.sink {
            Sink::Stdout => Output::Stdout,
            Sink::File(path) => {
                let (file, len) = open_log(path)?;
                Output::File(file, len)
            }
        };
        if let Output::File(_, 0) = self.out
            && self.settings.format == Format::Text
        {
            // A new file starts with the field names, as AWS's do (and
            // if this fails, with the next records: see `write`).
            self.write_raw(format!("{TEXT_HEADER}\n").as_bytes())?;
        }
        Ok(())
    }

    pub fn write(&mut self, records: &[Record]) -> std::io::Result<()> {
        let mut text = String::new();
        let mut line = |r: &Record| {
            text.push_str(&match self.settings.format {
                Format::Text => r.to_text(),
                Format::Json => r.to_json(),
            });
            text.push('\n');
        };
        if let Some(since) = self.unsaid {
            line(&Record::skipdata("-", "-", since, super::unix_now()));
        }
        for r in records {
            line(r);
        }
        if records.is_empty() && self.unsaid.is_none() {
            return Ok(());
        }
        let written = self.rotate_for(text.len() as u64).and_then(|()| {
            if let Output::File(_, 0) = self.out
                && self.settings.format == Format::Text
            {
                text.insert_str(0, &format!("{TEXT_HEADER}\n"));
            }
            self.write_raw(text.as_bytes())
        });
        match written {
            Ok(()) => {
                self.written += records.len() as u64;
                self.unsaid = None;
                self.mark(false);
                Ok(())
            }
            Err(e) => {
                self.lost += records.len() as u64;
                self.unsaid.get_or_insert_with(super::unix_now);
                Err(e)
            }
        }
    }

    /// Writes all of `bytes`, or nothing: a file is cut back to its length
    /// before.
    fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.out {
            Output::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(bytes)?;
                out.flush()
            }
            Output::File(file, len) => match file.write_all(bytes) {
                Ok(()) => {
                    *len += bytes.len() as u64;
                    Ok(())
                }
                Err(e) => {
                    let _ = file.set_len(*len);
                    Err(e)
                }
            },
        }
    }

    /// Rotates the file first if `more` bytes would take it past its cap
    /// (`PATH` becomes `PATH.1`, `PATH.1` becomes `PATH.2`, ..., the
    /// oldest past `keep` goes).
    fn rotate_for(&mut self, more: u64) -> std::io::Result<()> {
        let Output::File(_, len) = self.out else {
            return Ok(());
        };
        let Sink::File(path) = self.settings.sink.clone() else {
            return Ok(());
        };
        let cap = self.settings.max_bytes;
        if cap == 0 || len + more <= cap || len <= TEXT_HEADER.len() as u64 + 1 {
            return Ok(());
        }
        let numbered = |n: u32| {
            let mut p = path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        let keep = self.settings.keep.max(1);
        let _ = std::fs::remove_file(numbered(keep));
        for n in (1..keep).rev() {
            match std::fs::rename(numbered(n), numbered(n + 1)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&path, numbered(1))?;
        self.reopen()
    }
}

/// Opens (creating 0640) the flow-log file at `path` for appending, and its
/// length: refused through a symlink, in a directory other users can
/// write, or when it is not a regular file of this user's.
fn open_log(path: &std::path::Path) -> std::io::Result<(std::fs::File, u64)> {
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let refuse = |why: String| {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            why,
        ))
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let d = std::fs::metadata(&dir)?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if d.mode() & 0o002 != 0 || (d.mode() & 0o020 != 0 && d.uid() != me && d.uid() != 0) {
        return refuse(format!(
            "{}: other users can write this directory (mode {:o}): they could replace the \
             flow log; give it a directory of its own",
            dir.display(),
            d.mode() & 0o7777
        ));
    }
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("{}: a symlink, not followed for a flow log", path.display()),
                )
            } else {
                e
            }
        })?;
    let m = file.metadata()?;
    if !m.file_type().is_file() {
        return refuse(format!("{}: not a regular file", path.display()));
    }
    if m.uid() != me {
        return refuse(format!(
            "{}: owned by uid {}, not this user ({me})",
            path.display(),
            m.uid()
        ));
    }
    Ok((file, m.len()))
}

/// The first line of a text flow-log file, as AWS names the fields.
pub const TEXT_HEADER: &str = "version account-id interface-id srcaddr dstaddr srcport dstport \
                               protocol packets bytes start end action log-status";

#[cfg(test)]
mod tests {
    use super::*;

    fn key(a: [u8; 4], pa: u16, b: [u8; 4], pb: u16) -> CtKey {
        CtKey {
            addr_a: sg_common::flow::addr_from_octets(&a),
            addr_b: sg_common::flow::addr_from_octets(&b),
            port_a: pa,
            port_b: pb,
            proto: proto::TCP,
            family: FAMILY_V4,
            kind: 0,
        }
    }

    fn entry(pa: u32, ba: u64, pb: u32, bb: u64) -> CtEntry {
        CtEntry {
            last_seen_ns: 5_000_000_000,
            packets_a: pa,
            bytes_a: ba,
            packets_b: pb,
            bytes_b: bb,
            ..CtEntry::default()
        }
    }

    #[test]
    fn one_record_per_direction_with_the_growth_of_the_interval() {
        let mut w = Window::default();
        let k = key([10, 0, 0, 1], 40000, [10, 0, 1, 10], 22);
        // The first read is the baseline: nothing is recorded for it.
        w.add_connections(&[(k, entry(3, 300, 2, 200))], false, 100, |_| 105);
        w.settle(&[(k, entry(3, 300, 2, 200))]);
        assert!(w.close("app", "sg-app/eth0", 100, 160, 0).is_empty());
        w.add_connections(&[(k, entry(10, 1300, 7, 900))], false, 160, |_| 170);
        let records = w.close("app", "sg-app/eth0", 160, 220, 0);
        let lines: Vec<String> = records.iter().map(Record::to_text).collect();
        assert_eq!(
            lines,
            [
                "2 - sg-app/eth0 10.0.0.1 10.0.1.10 40000 22 6 7 1000 160 170 ACCEPT OK",
                "2 - sg-app/eth0 10.0.1.10 10.0.0.1 22 40000 6 5 700 160 170 ACCEPT OK",
            ]
        );
        // A reclaimed entry gives its last growth, then is forgotten.
        w.add_connections(&[(k, entry(11, 1400, 7, 900))], true, 220, |_| 225);
        let records = w.close("app", "sg-app/eth0", 220, 280, 0);
        assert_eq!(records.len(), 1);
        assert_eq!((records[0].packets, records[0].bytes), (Some(1), Some(100)));
        assert!(w.baseline.is_empty());
    }

    #[test]
    fn rejected_packets_aggregate_per_flow_and_lost_events_mark_the_interval() {
        let mut w = Window::default();
        let k = FlowKey {
            src: "198.51.100.7".parse().unwrap(),
            dst: "10.0.1.10".parse().unwrap(),
            sport: 5555,
            dport: 3306,
            proto: 6,
            action: Action::Reject,
        };
        for t in [101, 102, 104] {
            w.add_packet(k, 60, t);
        }
        let records = w.close("app", "eth0", 100, 160, 4);
        let lines: Vec<String> = records.iter().map(Record::to_text).collect();
        assert_eq!(
            lines,
            [
                "2 - eth0 198.51.100.7 10.0.1.10 5555 3306 6 3 180 101 104 REJECT OK",
                "2 - eth0 - - - - - - - 100 160 - SKIPDATA",
            ]
        );
        assert!(
            w.close("app", "eth0", 160, 220, 4).is_empty(),
            "no new loss"
        );
        let json: serde_json::Value = serde_json::from_str(&records[0].to_json()).unwrap();
        assert_eq!(json["action"], "REJECT");
        assert_eq!(json["interface-id"], "eth0");
        assert_eq!(json["log-status"], "OK");
    }

    #[test]
    fn flows_past_the_bound_are_summed_into_one_record_per_action() {
        let mut w = Window::default();
        let flow = |n: u32, action| FlowKey {
            src: IpAddr::from((0xc633_6400_u32 + n).to_be_bytes()),
            dst: "10.0.1.10".parse().unwrap(),
            sport: 1000,
            dport: 80,
            proto: 6,
            action,
        };
        let n = u32::try_from(MAX_FLOWS_PER_INTERVAL).unwrap();
        for i in 0..n + 5 {
            w.add_packet(flow(i, Action::Reject), 60, 101);
        }
        w.add_packet(flow(n + 6, Action::Accept), 100, 102);
        w.add_packet(flow(0, Action::Reject), 60, 103);
        let records = w.close("app", "eth0", 100, 160, 0);
        assert_eq!(records.len(), MAX_FLOWS_PER_INTERVAL + 2);
        let summed: Vec<String> = records[MAX_FLOWS_PER_INTERVAL..]
            .iter()
            .map(Record::to_text)
            .collect();
        assert_eq!(
            summed,
            [
                "2 - eth0 - - - - - 1 100 102 102 ACCEPT SKIPDATA",
                "2 - eth0 - - - - - 5 300 101 101 REJECT SKIPDATA",
            ]
        );
        assert_eq!(w.packets_summed, 6);
        assert_eq!(
            records[0].packets,
            Some(2),
            "a flow already recorded still counts"
        );
    }

    fn settings(path: &std::path::Path, max_bytes: u64, keep: u32) -> Settings {
        Settings {
            sink: Sink::File(path.to_owned()),
            interval: Duration::from_mins(1),
            format: Format::Text,
            max_bytes,
            keep,
        }
    }

    fn record(n: u16) -> Record {
        Record {
            srcaddr: Some("198.51.100.7".parse().unwrap()),
            dstaddr: Some("10.0.1.10".parse().unwrap()),
            srcport: Some(n),
            dstport: Some(80),
            protocol: Some(6),
            packets: Some(1),
            bytes: Some(60),
            action: Some(Action::Reject),
            log_status: LogStatus::Ok,
            ..Record::skipdata("app", "eth0", 100, 160)
        }
    }

    #[test]
    fn the_file_is_made_0640_rotated_at_its_cap_and_keeps_n() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.log");
        let mut w = Writer::open(&settings(&path, 1_000, 2)).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        for n in 0..40 {
            w.write(&[record(n)]).unwrap();
        }
        assert_eq!(w.written, 40);
        let numbered = |n| dir.path().join(format!("flows.log.{n}"));
        for p in [path.clone(), numbered(1), numbered(2)] {
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(text.len() <= 1_000, "{}: {} bytes", p.display(), text.len());
            assert!(
                text.starts_with(TEXT_HEADER),
                "{} starts with the header",
                p.display()
            );
        }
        assert!(!numbered(3).exists(), "two rotated files kept");
        let last = std::fs::read_to_string(&path).unwrap();
        assert!(
            last.contains(" 39 80 6 "),
            "the newest record is in PATH: {last}"
        );
    }

    #[test]
    fn a_symlink_a_shared_directory_or_another_users_file_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "").unwrap();
        let link = dir.path().join("flows.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = Writer::open(&settings(&link, 0, 1))
            .err()
            .expect("a symlink is refused");
        assert!(err.to_string().contains("symlink"), "{err}");

        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let err = Writer::open(&settings(&shared.join("flows.log"), 0, 1))
            .err()
            .expect("a world-writable directory is refused");
        assert!(err.to_string().contains("other users can write"), "{err}");

        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Opened without blocking: with no reader the open itself fails
        // (ENXIO), with one it is refused as not a regular file.
        let err = Writer::open(&settings(&fifo, 0, 1))
            .err()
            .expect("a FIFO is refused");
        assert!(
            err.raw_os_error() == Some(libc::ENXIO)
                || err.to_string().contains("not a regular file"),
            "{err}"
        );
    }

    /// A rotation that fails (here its rename: `PATH.1` is a directory; a
    /// full disk fails it the same way) loses its records counted and
    /// marked, never silently; the next write says so, and the file has
    /// its header whatever failed.
    #[test]
    fn a_failed_rotation_is_counted_and_marked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.log");
        let mut w = Writer::open(&settings(&path, 300, 1)).unwrap();
        let blocker = dir.path().join("flows.log.1");
        std::fs::create_dir(&blocker).unwrap();
        std::fs::write(blocker.join("x"), "").unwrap();
        let mut failed = 0;
        for n in 0..10 {
            if w.write(&[record(n)]).is_err() {
                failed += 1;
            }
        }
        assert!(failed > 0, "the cap forced a rotation that failed");
        assert_eq!(w.lost, failed, "every record not written is counted");
        std::fs::remove_dir_all(&blocker).unwrap();
        w.write(&[record(99)]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(TEXT_HEADER), "{text}");
        assert!(
            text.lines().any(|l| l.ends_with("SKIPDATA")),
            "the loss is marked: {text}"
        );
    }

    /// An agent killed with its interval open (never written) leaves the
    /// file's marker open: the next agent's first write starts with a
    /// `SKIPDATA` record from when the loss began. One that stopped
    /// cleanly leaves nothing to mark.
    #[test]
    fn an_interval_left_open_by_a_killed_agent_is_marked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.log");
        {
            let mut w = Writer::open(&settings(&path, 0, 1)).unwrap();
            w.write(&[record(1)]).unwrap();
            // Killed here: no finish().
        }
        let mut w = Writer::open(&settings(&path, 0, 1)).unwrap();
        w.write(&[record(2)]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text.lines().filter(|l| l.ends_with("SKIPDATA")).count(),
            1,
            "{text}"
        );
        w.finish();
        drop(w);
        let mut w = Writer::open(&settings(&path, 0, 1)).unwrap();
        w.write(&[record(3)]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text.lines().filter(|l| l.ends_with("SKIPDATA")).count(),
            1,
            "a clean stop leaves nothing more to mark: {text}"
        );
    }
}
