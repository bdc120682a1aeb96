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

/// `--follow-ec2`, `--follow-interval` and `--follow-ec2-ca`.
#[derive(Clone, Debug)]
pub struct FollowOptions {
    /// `http://HOST:PORT` or `https://HOST[:PORT]`, as status shows it.
    pub url: String,
    pub interval: Duration,
    /// What the requests are signed with (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`; `test` for the first
    /// two where they are not set, as the emulators accept).
    pub key: crate::ec2::sigv4::Key,
    /// `AWS_REGION` (or `AWS_DEFAULT_REGION`; `us-east-1`).
    pub region: String,
    /// Where to connect: host (an IPv6 address without its brackets) and
    /// port.
    connect: (String, u16),
    /// The `Host` header, as signed: the port only where it is not the
    /// scheme's.
    authority: String,
    /// https: the certificate must be valid for the host and chain to one
    /// of the trusted roots.
    tls: Option<Tls>,
}

#[derive(Clone, Debug)]
struct Tls {
    config: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
}

impl FollowOptions {
    /// Checks the URL (`http://HOST:PORT`, or `https://HOST[:PORT]`, AWS's
    /// own endpoints among them) and, for https, reads the roots its
    /// certificate must chain to: `ca` (`--follow-ec2-ca`, PEM) or else
    /// the system's (`SSL_CERT_FILE`, or Debian's
    /// /etc/ssl/certs/ca-certificates.crt).
    pub fn new(
        url: &str,
        interval: Duration,
        ca: Option<&std::path::Path>,
    ) -> Result<Self, String> {
        let bad = |why: &str| format!("--follow-ec2 {url}: {why}");
        let uri: hyper::Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad("give an http:// or https:// URL")),
        };
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad("give the endpoint's scheme, host and port, no path"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad(
                "credentials do not go in the URL: set AWS_ACCESS_KEY_ID",
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = match (authority.port_u16(), https) {
            (Some(p), _) => p,
            (None, true) => 443,
            (None, false) => return Err(bad("give http://HOST:PORT")),
        };
        let default_port = if https { 443 } else { 80 };
        let authority = if port == default_port {
            authority.host().to_owned()
        } else {
            format!("{}:{port}", authority.host())
        };
        let tls = if https {
            let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| bad(&format!("{host}: {e}")))?;
            Some(Tls {
                config: Arc::new(client_config(ca)?),
                name,
            })
        } else {
            if ca.is_some() {
                return Err(bad("--follow-ec2-ca is for an https:// endpoint"));
            }
            None
        };
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Ok(Self {
            url: format!("{}://{authority}", if https { "https" } else { "http" }),
            interval,
            key: crate::ec2::sigv4::Key {
                id: env("AWS_ACCESS_KEY_ID").unwrap_or_else(|| "test".to_owned()),
                secret: env("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|| "test".to_owned()),
                token: env("AWS_SESSION_TOKEN"),
            },
            region: env("AWS_REGION")
                .or_else(|| env("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".to_owned()),
            connect: (host.to_owned(), port),
            authority,
            tls,
        })
    }
}

/// Debian's bundle of the CAs the system trusts (`ca-certificates`).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// rustls (with ring, as etcd's client already builds it) trusting `ca`'s
/// certificates, or the system's.
fn client_config(ca: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    let path = ca.map_or_else(
        || {
            std::env::var_os("SSL_CERT_FILE")
                .filter(|v| !v.is_empty())
                .map_or_else(|| std::path::PathBuf::from(SYSTEM_ROOTS), Into::into)
        },
        std::path::Path::to_path_buf,
    );
    let hint = if ca.is_some() {
        ""
    } else {
        " (the system's trusted CAs: install ca-certificates, or pass --follow-ec2-ca FILE)"
    };
    let certs = CertificateDer::pem_file_iter(&path)
        .map_err(|e| format!("{}{hint}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!(
            "{}{hint}: no CA certificate in it (PEM, -----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

/// What the endpoint said last.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fetched {
    pub vpcs: Vec<FollowedVpc>,
    pub groups: Vec<Group>,
    pub lists: Vec<List>,
    /// Instance id to its group ids.
    pub instances: BTreeMap<String, Vec<String>>,
}

/// A VPC of the endpoint: its groups go into the file's VPC of the same
/// name (the importers name VPCs by id), `Name` tag or range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FollowedVpc {
    pub id: String,
    pub name: Option<String>,
    pub cidrs: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub id: String,
    pub vpc_id: String,
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
    /// Each entry's range and description.
    pub entries: Vec<(String, Option<String>)>,
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
    let (host, port) = &opts.connect;
    let stream = tokio::net::TcpStream::connect((host.as_str(), *port))
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let (status, bytes) = match &opts.tls {
        None => exchange(stream, opts, body).await?,
        Some(tls) => {
            let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
                .connect(tls.name.clone(), stream)
                .await
                .map_err(|e| {
                    let hint = if e.to_string().contains("certificate") {
                        " (pass --follow-ec2-ca FILE with the CA that signed the endpoint's \
                         certificate)"
                    } else {
                        ""
                    };
                    format!("TLS: {e}{hint}")
                })?;
            exchange(stream, opts, body).await?
        }
    };
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

/// The request over `stream` (plain TCP, or TLS on it): the answer's
/// status and body (at most 64 MiB).
async fn exchange<S>(
    stream: S,
    opts: &FollowOptions,
    body: String,
) -> Result<(hyper::StatusCode, Bytes), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = hyper::Request::post("/")
        .header("host", &opts.authority)
        .header("content-type", "application/x-www-form-urlencoded");
    let signed = crate::ec2::sigv4::sign(
        "POST",
        &opts.authority,
        "/",
        body.as_bytes(),
        &opts.key,
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
    Ok((status, bytes))
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
    for page in pages(opts, "Action=DescribeVpcs").await? {
        let doc = roxmltree::Document::parse(&page).map_err(|e| format!("not XML: {e}"))?;
        for v in items(doc.root_element(), "vpcSet") {
            let mut cidrs: Vec<String> = text(v, "cidrBlock").into_iter().collect();
            for c in items(v, "cidrBlockAssociationSet") {
                if let Some(c) = text(c, "cidrBlock")
                    && !cidrs.contains(&c)
                {
                    cidrs.push(c);
                }
            }
            fetched.vpcs.push(FollowedVpc {
                id: text(v, "vpcId").unwrap_or_default(),
                name: tags(v)
                    .into_iter()
                    .find(|(k, _)| k == "Name")
                    .map(|(_, v)| v),
                cidrs,
            });
        }
    }
    for page in pages(opts, "Action=DescribeSecurityGroups").await? {
        let doc = roxmltree::Document::parse(&page).map_err(|e| format!("not XML: {e}"))?;
        for g in items(doc.root_element(), "securityGroupInfo") {
            fetched.groups.push(Group {
                id: text(g, "groupId").unwrap_or_default(),
                vpc_id: text(g, "vpcId").unwrap_or_default(),
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
                    .filter_map(|e| {
                        Some((
                            text(e, "cidr")?,
                            text(e, "description").filter(|d| !d.is_empty()),
                        ))
                    }),
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
        value(
            l.entries
                .iter()
                .map(|(cidr, d)| match d {
                    None => toml_edit::Value::from(cidr.as_str()),
                    Some(d) => {
                        let mut e = InlineTable::new();
                        e.insert("cidr", cidr.as_str().into());
                        e.insert("description", d.as_str().into());
                        toml_edit::Value::InlineTable(e)
                    }
                })
                .collect::<toml_edit::Array>(),
        ),
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
    vpc: Option<&str>,
    groups: &BTreeMap<String, String>,
    lists: &BTreeMap<String, String>,
) -> Table {
    let mut t = Table::new();
    t.insert("name", value(&groups[&g.id]));
    if let Some(vpc) = vpc {
        t.insert("vpc", value(vpc));
    }
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

/// With several `[[vpc]]` in the file: each of the endpoint's VPCs to the
/// file's VPC named by its id (as the importers name them) or its `Name`
/// tag, or else holding one of its ranges. A group of a VPC the file does
/// not have stays in the file's default VPC, where `check` refuses an
/// instance of another VPC in it: the follow then fails loudly and the
/// policy in force stays. One VPC (or none): every group is in it.
fn file_vpcs(doc: &DocumentMut, theirs: &[FollowedVpc]) -> BTreeMap<String, String> {
    let ours: Vec<(String, Vec<String>)> = doc
        .get("vpc")
        .and_then(Item::as_array_of_tables)
        .map(|a| {
            a.iter()
                .filter_map(|t| {
                    let name = t.get("name").and_then(Item::as_str)?.to_owned();
                    let cidrs = t
                        .get("cidr_blocks")
                        .and_then(Item::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(|v| v.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default();
                    Some((name, cidrs))
                })
                .collect()
        })
        .unwrap_or_default();
    if ours.len() < 2 {
        return BTreeMap::new();
    }
    let same_range = |a: &str, b: &str| {
        matches!(
            (a.parse::<ipnet::IpNet>(), b.parse::<ipnet::IpNet>()),
            (Ok(x), Ok(y)) if x.trunc() == y.trunc()
        )
    };
    theirs
        .iter()
        .filter_map(|v| {
            let found = ours
                .iter()
                .find(|(name, _)| *name == v.id)
                .or_else(|| ours.iter().find(|(name, _)| Some(name) == v.name.as_ref()))
                .or_else(|| {
                    ours.iter().find(|(_, cidrs)| {
                        cidrs
                            .iter()
                            .any(|c| v.cidrs.iter().any(|t| same_range(c, t)))
                    })
                })?;
            Some((v.id.clone(), found.0.clone()))
        })
        .collect()
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
    let vpcs = file_vpcs(&doc, &data.vpcs);
    let mut groups = ArrayOfTables::new();
    for g in &data.groups {
        let vpc = vpcs.get(&g.vpc_id).map(String::as_str);
        groups.push(group_table(g, vpc, &group_names, &list_names));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Two VPCs, an instance in each, matched to the endpoint's by id; the
    /// file's own groups are replaced.
    const FILE: &str = r#"
[[vpc]]
name = "vpc-0aaa0aaa0aaa0aaa0"
cidr_blocks = ["10.1.0.0/16"]

[[vpc]]
name = "data"
cidr_blocks = ["10.2.0.0/16"]

[[vpc_peering]]
vpcs = ["vpc-0aaa0aaa0aaa0aaa0", "data"]

[[security_group]]
name = "the file's own"

[[instance]]
name = "app-1"
id = "i-0000000000000000a"
interface = "veth-app"
addresses = ["10.1.0.10"]
security_groups = ["the file's own"]

[[instance]]
name = "db-1"
id = "i-0000000000000000b"
vpc = "data"
interface = "veth-db"
addresses = ["10.2.0.10"]
security_groups = []
"#;

    fn group(id: &str, vpc: &str, name: &str, ingress: Vec<Rule>) -> Group {
        Group {
            id: id.to_owned(),
            vpc_id: vpc.to_owned(),
            name: name.to_owned(),
            description: String::new(),
            tags: Vec::new(),
            ingress,
            egress: Vec::new(),
        }
    }

    fn fetched() -> Fetched {
        let tcp = |port, source| Rule {
            protocol: "tcp".to_owned(),
            ports: Some((port, port)),
            source,
            description: None,
        };
        Fetched {
            vpcs: vec![
                // The file names this one by its id (as the importers do).
                FollowedVpc {
                    id: "vpc-0aaa0aaa0aaa0aaa0".to_owned(),
                    name: None,
                    cidrs: vec!["10.1.0.0/16".to_owned()],
                },
                // This one by its range.
                FollowedVpc {
                    id: "vpc-0bbb0bbb0bbb0bbb0".to_owned(),
                    name: Some("analytics".to_owned()),
                    cidrs: vec!["10.2.0.0/16".to_owned()],
                },
            ],
            groups: vec![
                group(
                    "sg-0000000000000000a",
                    "vpc-0aaa0aaa0aaa0aaa0",
                    "app",
                    vec![tcp(443, Peer::List("pl-0000000000000000a".to_owned()))],
                ),
                group(
                    "sg-0000000000000000b",
                    "vpc-0bbb0bbb0bbb0bbb0",
                    "db",
                    vec![tcp(5432, Peer::Group("sg-0000000000000000a".to_owned()))],
                ),
            ],
            lists: vec![List {
                id: "pl-0000000000000000a".to_owned(),
                name: "office".to_owned(),
                ipv6: false,
                max_entries: Some(5),
                entries: vec![
                    ("198.51.100.0/24".to_owned(), Some("head office".to_owned())),
                    ("203.0.113.0/24".to_owned(), None),
                ],
            }],
            instances: [
                (
                    "i-0000000000000000a".to_owned(),
                    vec!["sg-0000000000000000a".to_owned()],
                ),
                (
                    "i-0000000000000000b".to_owned(),
                    vec!["sg-0000000000000000b".to_owned()],
                ),
            ]
            .into_iter()
            .collect(),
        }
    }

    #[test]
    fn each_group_goes_into_the_file_vpc_of_its_own() {
        let text = compose(FILE, &fetched()).expect("composed");
        let vpc = crate::policy::validate_as(
            std::path::Path::new("followed.toml"),
            &text,
            false,
            crate::policy::Enforcer::Everyone,
        )
        .unwrap_or_else(|e| panic!("check accepts what the follower composes: {e}\n{text}"));
        let of = |name: &str| {
            let g = vpc.groups.iter().find(|g| g.name == name).expect(name);
            vpc.vpc_of_group(g).to_owned()
        };
        assert_eq!(of("app"), "vpc-0aaa0aaa0aaa0aaa0", "by the VPC's id");
        assert_eq!(of("db"), "data", "by its range");
        assert!(
            !text.contains("the file's own"),
            "the endpoint's groups win:\n{text}"
        );
        let db = vpc
            .instances
            .iter()
            .find(|i| i.name == "db-1")
            .expect("db-1");
        let groups: Vec<&str> = db.groups.iter().map(|(g, _)| g.as_str()).collect();
        assert_eq!(groups, ["db"]);
    }

    #[test]
    fn a_list_keeps_each_entry_description() {
        let text = compose(FILE, &fetched()).expect("composed");
        let vpc = crate::config::from_str(std::path::Path::new("followed.toml"), &text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let office = &vpc.prefix_lists[0];
        assert_eq!(office.entries.len(), 2);
        let described: Vec<(String, &str)> = office
            .entry_descriptions
            .iter()
            .map(|(n, d)| (n.to_string(), d.as_str()))
            .collect();
        assert_eq!(described, [("198.51.100.0/24".to_owned(), "head office")]);
    }

    #[test]
    fn one_vpc_takes_every_group() {
        let one = FILE
            .replace(
                "[[vpc]]\nname = \"data\"\ncidr_blocks = [\"10.2.0.0/16\"]\n",
                "",
            )
            .replace(
                "[[vpc_peering]]\nvpcs = [\"vpc-0aaa0aaa0aaa0aaa0\", \"data\"]\n",
                "",
            )
            .replace("vpc = \"data\"\n", "")
            .replace("10.2.0.10", "10.1.0.11");
        let text = compose(&one, &fetched()).expect("composed");
        assert!(
            !text.contains("\nvpc = "),
            "no group is given a VPC:\n{text}"
        );
    }
}
