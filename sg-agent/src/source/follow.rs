//! `run --follow-ec2 URL`: the groups, their rules, the prefix lists and
//! each instance's groups read from another EC2 endpoint (moto's server,
//! `LocalStack`, another sg-agent) with EC2's Describe calls, and enforced
//! on the rules file's instances, matched by `id`. The file then says only
//! where each instance lives (and the VPC's settings); what the endpoint
//! says about groups wins.
//!
//! The endpoint unreachable: the last description stays in force, and
//! `status` says since when.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use toml_edit::{ArrayOfTables, DocumentMut, InlineTable, Item, Table, value};

/// `--follow-ec2` and `--follow-interval`.
#[derive(Clone, Debug)]
pub struct FollowOptions {
    /// `http://HOST:PORT` of the endpoint.
    pub url: String,
    pub interval: Duration,
    /// The access key and secret the requests are signed with
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`; `test` for both
    /// where they are not set, as the emulators accept).
    pub key: (String, String),
    /// `AWS_REGION` (or `AWS_DEFAULT_REGION`; `us-east-1`).
    pub region: String,
}

impl FollowOptions {
    /// Checks the URL: plain HTTP to a host and port.
    pub fn new(url: &str, interval: Duration) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!(
                "--follow-ec2 {url}: give an http:// URL (an emulator's or another sg-agent's \
                 endpoint); https is not supported yet"
            )
        })?;
        if rest.trim_end_matches('/').is_empty() || rest.trim_end_matches('/').contains('/') {
            return Err(format!("--follow-ec2 {url}: give http://HOST:PORT"));
        }
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Ok(Self {
            url: format!("http://{}", rest.trim_end_matches('/')),
            interval,
            key: (
                env("AWS_ACCESS_KEY_ID").unwrap_or_else(|| "test".to_owned()),
                env("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|| "test".to_owned()),
            ),
            region: env("AWS_REGION")
                .or_else(|| env("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".to_owned()),
        })
    }

    fn host(&self) -> &str {
        self.url.trim_start_matches("http://")
    }
}

/// What the endpoint said last.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fetched {
    pub groups: Vec<Group>,
    pub lists: Vec<List>,
    /// Instance id to its group ids.
    pub instances: BTreeMap<String, Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub id: String,
    pub name: String,
    pub description: String,
    pub tags: Vec<(String, String)>,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub protocol: String,
    pub ports: Option<(i64, i64)>,
    pub source: Peer,
    pub description: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    V4(String),
    V6(String),
    List(String),
    Group(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct List {
    pub id: String,
    pub name: String,
    pub ipv6: bool,
    pub max_entries: Option<i64>,
    pub entries: Vec<String>,
}

/// The follower's state, shared with the enforcement thread and `status`.
#[derive(Debug, Default)]
pub struct State {
    pub latest: Option<Fetched>,
    /// Unix time of the last answer, and of the first failure since.
    pub last_ok: Option<u64>,
    pub failing_since: Option<u64>,
    pub error: Option<String>,
}

pub type Shared = Arc<Mutex<State>>;

/// The first description, before anything is attached: an agent that
/// cannot read its endpoint does not start.
pub async fn first_fetch(opts: &FollowOptions) -> Result<Shared, String> {
    let fetched = tokio::time::timeout(Duration::from_secs(30), fetch(opts))
        .await
        .map_err(|_| format!("{}: no answer within 30 s", opts.url))??;
    Ok(Arc::new(Mutex::new(State {
        latest: Some(fetched),
        last_ok: Some(crate::observe::unix_now()),
        ..State::default()
    })))
}

/// Asks the endpoint every interval; `changed` is called when its answer
/// changed.
pub async fn follow(opts: FollowOptions, state: Shared, changed: impl Fn()) {
    let mut tick = tokio::time::interval(opts.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let result = tokio::time::timeout(opts.interval.max(Duration::from_secs(5)), fetch(&opts))
            .await
            .unwrap_or_else(|_| Err("no answer in time".to_owned()));
        let now = crate::observe::unix_now();
        let mut s = state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match result {
            Ok(fetched) => {
                if s.failing_since.take().is_some() {
                    log::info!("{}: answering again", opts.url);
                }
                s.error = None;
                s.last_ok = Some(now);
                if s.latest.as_ref() != Some(&fetched) {
                    s.latest = Some(fetched);
                    drop(s);
                    changed();
                }
            }
            Err(e) => {
                if s.failing_since.is_none() {
                    log::warn!(
                        "{}: {e}; the policy in force stays until it answers again",
                        opts.url
                    );
                    s.failing_since = Some(now);
                }
                s.error = Some(e);
            }
        }
    }
}

/// One signed Query API call: the response's XML.
async fn call(opts: &FollowOptions, params: &str) -> Result<String, String> {
    let body = format!("{params}&Version=2016-11-15");
    let stream = tokio::net::TcpStream::connect(opts.host())
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = hyper::Request::post("/")
        .header("host", opts.host())
        .header("content-type", "application/x-www-form-urlencoded");
    let signed = crate::ec2::sigv4::sign(
        "POST",
        opts.host(),
        "/",
        body.as_bytes(),
        (&opts.key.0, &opts.key.1),
        &opts.region,
        "ec2",
        crate::observe::unix_now(),
    );
    for (k, v) in signed {
        req = req.header(k, v);
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let status = resp.status();
    let bytes = http_body_util::Limited::new(resp.into_body(), 64 << 20)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if !status.is_success() {
        let code = roxmltree::Document::parse(&text)
            .ok()
            .and_then(|d| {
                d.descendants()
                    .find(|n| n.has_tag_name("Code"))
                    .and_then(|n| n.text().map(str::to_owned))
            })
            .unwrap_or_default();
        return Err(format!("{params}: HTTP {status} {code}"));
    }
    Ok(text)
}

/// Every page of a Describe call (`nextToken`).
async fn pages(opts: &FollowOptions, params: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..1000 {
        let p = match &token {
            Some(t) => format!("{params}&NextToken={}", crate::ec2::query::encode(t)),
            None => params.to_owned(),
        };
        let text = call(opts, &p).await?;
        token = roxmltree::Document::parse(&text)
            .map_err(|e| format!("{params}: not XML: {e}"))?
            .root_element()
            .children()
            .find(|n| n.has_tag_name("nextToken"))
            .and_then(|n| n.text().map(str::to_owned))
            .filter(|t| !t.is_empty());
        out.push(text);
        if token.is_none() {
            return Ok(out);
        }
    }
    Err(format!("{params}: more than 1000 pages"))
}

type Node<'a, 'i> = roxmltree::Node<'a, 'i>;

fn child<'a, 'i>(n: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    n.children().find(|c| c.has_tag_name(name))
}

fn text(n: Node<'_, '_>, name: &str) -> Option<String> {
    child(n, name).and_then(|c| c.text().map(str::to_owned))
}

/// The `item`s of list `name` under `n`.
fn items<'a, 'i>(n: Node<'a, 'i>, name: &str) -> Vec<Node<'a, 'i>> {
    child(n, name)
        .map(|l| l.children().filter(|c| c.has_tag_name("item")).collect())
        .unwrap_or_default()
}

fn tags(n: Node<'_, '_>) -> Vec<(String, String)> {
    items(n, "tagSet")
        .into_iter()
        .filter_map(|t| Some((text(t, "key")?, text(t, "value").unwrap_or_default())))
        .collect()
}

fn permissions(n: Node<'_, '_>, name: &str) -> Vec<Rule> {
    let mut out = Vec::new();
    for p in items(n, name) {
        let protocol = text(p, "ipProtocol").unwrap_or_else(|| "-1".to_owned());
        let from = text(p, "fromPort").and_then(|v| v.parse().ok());
        let to = text(p, "toPort").and_then(|v| v.parse().ok());
        let ports = from.zip(to);
        let mut push = |source: Peer, d: Option<String>| {
            out.push(Rule {
                protocol: protocol.clone(),
                ports,
                source,
                description: d.filter(|d| !d.is_empty()),
            });
        };
        for r in items(p, "ipRanges") {
            if let Some(c) = text(r, "cidrIp") {
                push(Peer::V4(c), text(r, "description"));
            }
        }
        for r in items(p, "ipv6Ranges") {
            if let Some(c) = text(r, "cidrIpv6") {
                push(Peer::V6(c), text(r, "description"));
            }
        }
        for r in items(p, "prefixListIds") {
            if let Some(c) = text(r, "prefixListId") {
                push(Peer::List(c), text(r, "description"));
            }
        }
        for r in items(p, "groups") {
            if let Some(c) = text(r, "groupId") {
                push(Peer::Group(c), text(r, "description"));
            }
        }
    }
    out
}

/// Everything the description needs, asked of the endpoint.
pub async fn fetch(opts: &FollowOptions) -> Result<Fetched, String> {
    let mut fetched = Fetched::default();
    for page in pages(opts, "Action=DescribeSecurityGroups").await? {
        let doc = roxmltree::Document::parse(&page).map_err(|e| format!("not XML: {e}"))?;
        for g in items(doc.root_element(), "securityGroupInfo") {
            fetched.groups.push(Group {
                id: text(g, "groupId").unwrap_or_default(),
                name: text(g, "groupName").unwrap_or_default(),
                description: text(g, "groupDescription").unwrap_or_default(),
                tags: tags(g),
                ingress: permissions(g, "ipPermissions"),
                egress: permissions(g, "ipPermissionsEgress"),
            });
        }
    }
    for page in pages(opts, "Action=DescribeManagedPrefixLists").await? {
        let doc = roxmltree::Document::parse(&page).map_err(|e| format!("not XML: {e}"))?;
        for l in items(doc.root_element(), "prefixListSet") {
            fetched.lists.push(List {
                id: text(l, "prefixListId").unwrap_or_default(),
                name: text(l, "prefixListName").unwrap_or_default(),
                ipv6: text(l, "addressFamily").as_deref() == Some("IPv6"),
                max_entries: text(l, "maxEntries").and_then(|v| v.parse().ok()),
                entries: Vec::new(),
            });
        }
    }
    for l in &mut fetched.lists {
        let params = format!(
            "Action=GetManagedPrefixListEntries&PrefixListId={}",
            crate::ec2::query::encode(&l.id)
        );
        for page in pages(opts, &params).await? {
            let doc = roxmltree::Document::parse(&page).map_err(|e| format!("not XML: {e}"))?;
            l.entries.extend(
                items(doc.root_element(), "entrySet")
                    .into_iter()
                    .filter_map(|e| text(e, "cidr")),
            );
        }
    }
    for page in pages(opts, "Action=DescribeInstances").await? {
        let doc = roxmltree::Document::parse(&page).map_err(|e| format!("not XML: {e}"))?;
        for r in items(doc.root_element(), "reservationSet") {
            for i in items(r, "instancesSet") {
                let groups = items(i, "groupSet")
                    .into_iter()
                    .filter_map(|g| text(g, "groupId"))
                    .collect();
                if let Some(id) = text(i, "instanceId") {
                    fetched.instances.insert(id, groups);
                }
            }
        }
    }
    Ok(fetched)
}

/// Names are the file's references: made unique where the endpoint's are
/// not (two VPCs' groups of one name). Id to name.
fn unique_names<'a>(names: impl Iterator<Item = (&'a str, &'a str)>) -> BTreeMap<String, String> {
    let names: Vec<(&str, &str)> = names.collect();
    let mut seen = BTreeMap::<&str, usize>::new();
    for (_, n) in &names {
        *seen.entry(n).or_default() += 1;
    }
    names
        .iter()
        .map(|(id, n)| {
            let name = if seen[n] > 1 {
                format!("{n} ({id})")
            } else {
                (*n).to_owned()
            };
            ((*id).to_owned(), name)
        })
        .collect()
}

fn list_table(l: &List, name: &str) -> Table {
    let mut t = Table::new();
    t.insert("name", value(name));
    if crate::config::is_aws_id("pl", &l.id) {
        t.insert("id", value(&l.id));
    }
    t.insert(
        "address_family",
        value(if l.ipv6 { "IPv6" } else { "IPv4" }),
    );
    if let Some(m) = l.max_entries {
        t.insert("max_entries", value(m));
    }
    t.insert(
        "entries",
        value(l.entries.iter().collect::<toml_edit::Array>()),
    );
    t
}

/// One rule as the file writes it; `None` for a reference to what the
/// endpoint did not list (another account's group, an AWS-managed list it
/// does not describe), which matches nothing here.
fn rule_table(
    r: &Rule,
    groups: &BTreeMap<String, String>,
    lists: &BTreeMap<String, String>,
) -> Option<Table> {
    let (source_key, source) = match &r.source {
        Peer::V4(c) => ("cidr_blocks", c.clone()),
        Peer::V6(c) => ("ipv6_cidr_blocks", c.clone()),
        Peer::List(id) => ("prefix_list_ids", lists.get(id)?.clone()),
        Peer::Group(id) => ("security_groups", groups.get(id)?.clone()),
    };
    let mut b = Table::new();
    let all = r.protocol == "-1";
    b.insert(
        "protocol",
        value(if all { "all" } else { r.protocol.as_str() }),
    );
    if let (Some((from, to)), false) = (r.ports, all) {
        b.insert("from_port", value(from));
        b.insert("to_port", value(to));
    }
    b.insert(
        source_key,
        value([source].iter().collect::<toml_edit::Array>()),
    );
    if let Some(d) = &r.description {
        b.insert("description", value(d));
    }
    Some(b)
}

fn group_table(
    g: &Group,
    groups: &BTreeMap<String, String>,
    lists: &BTreeMap<String, String>,
) -> Table {
    let mut t = Table::new();
    t.insert("name", value(&groups[&g.id]));
    if crate::config::is_aws_id("sg", &g.id) {
        t.insert("id", value(&g.id));
    }
    if !g.description.is_empty() {
        t.insert("description", value(&g.description));
    }
    if !g.tags.is_empty() {
        let mut it = InlineTable::new();
        for (k, v) in &g.tags {
            it.insert(k, v.as_str().into());
        }
        t.insert("tags", value(it));
    }
    for (key, rules) in [("ingress", &g.ingress), ("egress", &g.egress)] {
        let mut blocks = ArrayOfTables::new();
        for b in rules.iter().filter_map(|r| rule_table(r, groups, lists)) {
            blocks.push(b);
        }
        if blocks.is_empty() {
            t.insert(key, value(toml_edit::Array::new()));
        } else {
            t.insert(key, Item::ArrayOfTables(blocks));
        }
    }
    t
}

/// Each instance the endpoint knows (by `id`) in the groups it says; one
/// it does not know keeps those of the file's groups the endpoint has (by
/// name), and with none, the VPC's `default` group.
fn place_instances(doc: &mut DocumentMut, data: &Fetched, groups: &BTreeMap<String, String>) {
    let known: Vec<&String> = groups.values().collect();
    let Some(instances) = doc
        .get_mut("instance")
        .and_then(Item::as_array_of_tables_mut)
    else {
        return;
    };
    for i in instances.iter_mut() {
        let id = i.get("id").and_then(Item::as_str).map(str::to_owned);
        let names: toml_edit::Array = match id.and_then(|id| data.instances.get(&id)) {
            Some(ids) => ids.iter().filter_map(|g| groups.get(g)).collect(),
            None => i
                .get("security_groups")
                .and_then(Item::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(toml_edit::Value::as_str)
                        .filter(|n| known.iter().any(|k| k.as_str() == *n))
                        .collect()
                })
                .unwrap_or_default(),
        };
        i.insert("security_groups", value(names));
    }
}

/// The description to enforce: the rules file with its groups and prefix
/// lists replaced by the endpoint's, and its instances in the endpoint's
/// groups.
pub fn compose(file: &str, data: &Fetched) -> Result<String, String> {
    let mut doc: DocumentMut = file.parse().map_err(|e| format!("the rules file: {e}"))?;
    doc.remove("security_group");
    doc.remove("prefix_list");
    let list_names = unique_names(data.lists.iter().map(|l| (l.id.as_str(), l.name.as_str())));
    let group_names = unique_names(data.groups.iter().map(|g| (g.id.as_str(), g.name.as_str())));
    let mut lists = ArrayOfTables::new();
    for l in &data.lists {
        lists.push(list_table(l, &list_names[&l.id]));
    }
    let mut groups = ArrayOfTables::new();
    for g in &data.groups {
        groups.push(group_table(g, &group_names, &list_names));
    }
    if !lists.is_empty() {
        doc.insert("prefix_list", Item::ArrayOfTables(lists));
    }
    if !groups.is_empty() {
        doc.insert("security_group", Item::ArrayOfTables(groups));
    }
    place_instances(&mut doc, data, &group_names);
    Ok(doc.to_string())
}
