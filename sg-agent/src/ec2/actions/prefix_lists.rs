//! Managed prefix lists: the file's `[[prefix_list]]` tables, described,
//! created, changed (with AWS's versions) and deleted.

use ipnet::IpNet;
use toml_edit::{Table, value};

use super::{Answer, filtered, tag_filter};
use crate::ec2::{error::ApiError, ids, query::Params, store::Store, view::View, xml::Xml};

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        "InvalidPrefixListID.NotFound",
        format!("The prefix list ID '{id}' does not exist"),
    )
}

/// What a `PrefixList` answer says of a list: as the file has it, or as a
/// change leaves it.
struct Shown {
    id: String,
    name: String,
    ipv6: bool,
    max_entries: usize,
    version: u64,
    tags: Vec<(String, String)>,
    state: &'static str,
}

fn write(x: &mut Xml, s: &Shown, view_account: &crate::ec2::view::Account) {
    x.text("prefixListId", &s.id)
        .text("addressFamily", if s.ipv6 { "IPv6" } else { "IPv4" })
        .text("state", s.state)
        .text(
            "prefixListArn",
            &format!(
                "arn:aws:ec2:{}:{}:prefix-list/{}",
                view_account.region, view_account.id, s.id
            ),
        )
        .text("prefixListName", &s.name)
        .num("maxEntries", s.max_entries)
        .num("version", s.version)
        .tags("tagSet", &s.tags)
        .text("ownerId", &view_account.id);
}

fn shown(view: &View<'_>, i: usize, state: &'static str) -> Shown {
    let pl = &view.vpc.prefix_lists[i];
    Shown {
        id: view.prefix_list_id(pl),
        name: pl.name.clone(),
        ipv6: pl.is_ipv6(),
        max_entries: pl.weight(),
        version: pl.version.unwrap_or(1),
        tags: pl.tags.clone(),
        state,
    }
}

pub async fn describe(p: &Params, store: &Store) -> Result<Answer, ApiError> {
    let snap = store.read().await?;
    let view = snap.view(&store.account);
    let mut lists: Vec<usize> = (0..view.vpc.prefix_lists.len()).collect();
    let ids = p.list("PrefixListId");
    if !ids.is_empty() {
        if let Some(id) = ids.iter().find(|id| view.prefix_list(id).is_none()) {
            return Err(not_found(id));
        }
        lists.retain(|&i| ids.contains(&view.prefix_list_id(&view.vpc.prefix_lists[i])));
    }
    let lists = filtered(lists, &p.filters(), |&i, f| {
        let pl = &view.vpc.prefix_lists[i];
        Some(match f {
            "prefix-list-id" => vec![view.prefix_list_id(pl)],
            "prefix-list-name" => vec![pl.name.clone()],
            "owner-id" => vec![view.account.id.clone()],
            other => return tag_filter(&pl.tags, other),
        })
    })?;
    let mut x = Xml::new();
    x.list("prefixListSet", lists, |x, i| {
        write(x, &shown(&view, i, "create-complete"), view.account);
    });
    Ok(Answer::Ec2(x))
}

pub async fn entries(p: &Params, store: &Store) -> Result<Answer, ApiError> {
    let snap = store.read().await?;
    let view = snap.view(&store.account);
    let id = p.required("PrefixListId")?;
    let i = view.prefix_list(id).ok_or_else(|| not_found(id))?;
    let pl = &view.vpc.prefix_lists[i];
    let mut x = Xml::new();
    x.list("entrySet", &pl.entries, |x, e| {
        x.text("cidr", &e.to_string());
        if let Some(d) = pl.entry_descriptions.get(e) {
            x.text("description", d);
        }
    });
    Ok(Answer::Ec2(x))
}

/// `PREFIX.N.Cidr` ranges, in the list's family, each with its
/// `PREFIX.N.Description`.
fn cidrs(p: &Params, prefix: &str, ipv6: bool) -> Result<Vec<(IpNet, Option<String>)>, ApiError> {
    p.indices(prefix)
        .into_iter()
        .map(|n| {
            let text = p.required(&format!("{prefix}.{n}.Cidr"))?;
            let net: IpNet = text
                .parse()
                .map_err(|_| ApiError::invalid_value(format!("Invalid CIDR {text}")))?;
            if net.trunc() != net || net.addr().is_ipv6() != ipv6 {
                return Err(ApiError::invalid_value(format!(
                    "Invalid CIDR {text} for an {} prefix list",
                    if ipv6 { "IPv6" } else { "IPv4" }
                )));
            }
            // Its characters and length are checked where every
            // description in the file is: when the change is admitted.
            let description = p.get(&format!("{prefix}.{n}.Description"));
            Ok((
                net,
                description.filter(|d| !d.is_empty()).map(str::to_owned),
            ))
        })
        .collect()
}

/// The `entries` array: a range alone, or with its description as an
/// inline table.
fn entries_array(entries: &[(IpNet, Option<String>)]) -> toml_edit::Array {
    entries
        .iter()
        .map(|(net, d)| match d {
            None => toml_edit::Value::from(net.to_string()),
            Some(d) => {
                let mut t = toml_edit::InlineTable::new();
                t.insert("cidr", net.to_string().into());
                t.insert("description", d.as_str().into());
                toml_edit::Value::InlineTable(t)
            }
        })
        .collect()
}

pub async fn create(p: &Params, store: &Store) -> Result<Answer, ApiError> {
    let name = p.required("PrefixListName")?.to_owned();
    let max_entries = p
        .int("MaxEntries")?
        .ok_or_else(|| ApiError::missing("MaxEntries"))?;
    if !(1..=1000).contains(&max_entries) {
        return Err(ApiError::invalid_value("MaxEntries must be from 1 to 1000"));
    }
    let ipv6 = match p.required("AddressFamily")? {
        "IPv4" => false,
        "IPv6" => true,
        other => {
            return Err(ApiError::invalid_value(format!(
                "Invalid AddressFamily {other}: IPv4 or IPv6"
            )));
        }
    };
    let entries = cidrs(p, "Entry", ipv6)?;
    if entries.len() > usize::try_from(max_entries).unwrap_or(0) {
        return Err(ApiError::new(
            "PrefixListMaxEntriesExceeded",
            format!("{} entries exceed MaxEntries {max_entries}", entries.len()),
        ));
    }
    let tags = p.tag_specifications("prefix-list")?;
    let id = ids::fresh("pl");
    let account = store.account.clone();
    let shown = store
        .change(move |view, doc| {
            if view.vpc.prefix_lists.iter().any(|pl| pl.name == name) {
                return Err(ApiError::invalid_value(format!(
                    "A prefix list named '{name}' already exists (the rules file names lists by name)"
                )));
            }
            let mut t = Table::new();
            t.insert("name", value(&name));
            t.insert("id", value(&id));
            t.insert("address_family", value(if ipv6 { "IPv6" } else { "IPv4" }));
            t.insert("max_entries", value(max_entries));
            t.insert("entries", value(entries_array(&entries)));
            if !tags.is_empty() {
                let mut it = toml_edit::InlineTable::new();
                for (k, v) in &tags {
                    it.insert(k, v.as_str().into());
                }
                t.insert("tags", value(it));
            }
            doc.push("prefix_list", t);
            Ok(Shown {
                id,
                name,
                ipv6,
                max_entries: usize::try_from(max_entries).unwrap_or(0),
                version: 1,
                tags,
                state: "create-complete",
            })
        })
        .await?;
    let mut x = Xml::new();
    x.elem("prefixList", |x| write(x, &shown, &account));
    Ok(Answer::Ec2(x))
}

pub async fn modify(p: &Params, store: &Store) -> Result<Answer, ApiError> {
    let id = p.required("PrefixListId")?.to_owned();
    let current = p.int("CurrentVersion")?;
    let new_name = p.get("PrefixListName").map(str::to_owned);
    let max_entries = p.int("MaxEntries")?;
    let params = p.clone();
    let account = store.account.clone();
    let shown = store
        .change(move |view, doc| {
            let i = view.prefix_list(&id).ok_or_else(|| not_found(&id))?;
            let pl = &view.vpc.prefix_lists[i];
            let version = pl.version.unwrap_or(1);
            if let Some(v) = current
                && u64::try_from(v).ok() != Some(version)
            {
                return Err(ApiError::new(
                    "PrefixListVersionMismatch",
                    format!("The prefix list {id} is at version {version}, not {v}"),
                ));
            }
            let ipv6 = pl.is_ipv6();
            let add = cidrs(&params, "AddEntry", ipv6)?;
            let remove: Vec<IpNet> = cidrs(&params, "RemoveEntry", ipv6)?
                .into_iter()
                .map(|(net, _)| net)
                .collect();
            if let Some((both, _)) = add.iter().find(|(a, _)| remove.contains(a)) {
                return Err(ApiError::invalid_value(format!(
                    "Request cannot contain Cidr {both} in both AddPrefixListEntries and \
                     RemovePrefixListEntries"
                )));
            }
            if let Some(gone) = remove.iter().find(|r| !pl.entries.contains(r)) {
                return Err(ApiError::invalid_value(format!(
                    "The prefix list {id} has no entry {gone} to remove"
                )));
            }
            let mut entries: Vec<(IpNet, Option<String>)> = pl
                .entries
                .iter()
                .filter(|e| !remove.contains(e))
                .map(|e| (*e, pl.entry_descriptions.get(e).cloned()))
                .collect();
            // An entry added again takes the description it is added with.
            for (net, d) in add {
                match entries.iter_mut().find(|(e, _)| *e == net) {
                    Some(kept) => kept.1 = d,
                    None => entries.push((net, d)),
                }
            }
            let max = max_entries.map_or(pl.weight(), |m| usize::try_from(m).unwrap_or(0));
            if entries.len() > max {
                return Err(ApiError::new(
                    "PrefixListMaxEntriesExceeded",
                    format!("{} entries exceed MaxEntries {max}", entries.len()),
                ));
            }
            let old_name = pl.name.clone();
            let name = new_name.clone().unwrap_or_else(|| old_name.clone());
            if name != old_name && view.vpc.prefix_lists.iter().any(|o| o.name == name) {
                return Err(ApiError::invalid_value(format!(
                    "A prefix list named '{name}' already exists"
                )));
            }
            let t = doc
                .named("prefix_list", &old_name)
                .ok_or_else(|| ApiError::internal("the prefix list is not in the rules file"))?;
            t.insert("id", value(view.prefix_list_id(pl)));
            t.insert("entries", value(entries_array(&entries)));
            t.insert("address_family", value(if ipv6 { "IPv6" } else { "IPv4" }));
            t.insert(
                "version",
                value(i64::try_from(version + 1).unwrap_or(i64::MAX)),
            );
            if let Some(m) = max_entries {
                t.insert("max_entries", value(m));
            }
            if name != old_name {
                t.insert("name", value(&name));
                doc.rename_in_rules("prefix_list_ids", &old_name, &name);
            }
            Ok(Shown {
                id: view.prefix_list_id(pl),
                name,
                ipv6,
                max_entries: max,
                version: version + 1,
                tags: pl.tags.clone(),
                state: "modify-complete",
            })
        })
        .await?;
    let mut x = Xml::new();
    x.elem("prefixList", |x| write(x, &shown, &account));
    Ok(Answer::Ec2(x))
}

pub async fn delete(p: &Params, store: &Store) -> Result<Answer, ApiError> {
    let id = p.required("PrefixListId")?.to_owned();
    let account = store.account.clone();
    let shown = store
        .change(move |view, doc| {
            let i = view.prefix_list(&id).ok_or_else(|| not_found(&id))?;
            let pid = view.prefix_list_id(&view.vpc.prefix_lists[i]);
            if let Some(r) = view
                .all_rules()
                .into_iter()
                .find(|r| matches!(&r.target, crate::ec2::view::Target::PrefixList(t) if *t == pid))
            {
                return Err(ApiError::new(
                    "DependencyViolation",
                    format!(
                        "The prefix list {pid} is referenced by rule {} of {}: remove all references first",
                        r.id,
                        view.group_id(&view.vpc.groups[r.group])
                    ),
                ));
            }
            let s = shown(view, i, "delete-complete");
            doc.remove("prefix_list", &view.vpc.prefix_lists[i].name)?;
            Ok(s)
        })
        .await?;
    let mut x = Xml::new();
    x.elem("prefixList", |x| write(x, &shown, &account));
    Ok(Answer::Ec2(x))
}
