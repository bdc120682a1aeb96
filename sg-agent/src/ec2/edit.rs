//! The API's changes, written into the rules file with `toml_edit`: only the
//! tables a change touches are rewritten; comments, order and formatting
//! elsewhere stay as they were.
//!
//! A file's rule block may hold several sources (Terraform's inline
//! rules); AWS's rules are one per source. A change to one of them first
//! splits its block into one block per source, each keeping its id, so
//! the other sources are untouched.

use toml_edit::{ArrayOfTables, DocumentMut, InlineTable, Item, Table, Value, value};

use super::{
    error::ApiError,
    view::{ApiRule, Target},
};
use crate::config::{Direction, Ports, Protocol};

/// One rule as the file writes it: one source, its own id.
#[derive(Clone, Debug)]
pub struct RuleSpec {
    pub id: String,
    pub protocol: Protocol,
    pub ports: Ports,
    pub target: Target,
    pub description: Option<String>,
    pub tags: Vec<(String, String)>,
}

impl RuleSpec {
    pub fn of(r: &ApiRule) -> Self {
        Self {
            id: r.id.clone(),
            protocol: r.protocol,
            ports: r.ports,
            target: r.target.clone(),
            description: r.description.clone(),
            tags: r.tags.clone(),
        }
    }

    /// `[[security_group.ingress]]` (or egress) table; `own` is the
    /// group's name (a reference to it is written by name).
    fn table(&self, prefix_list_name: &dyn Fn(&str) -> String) -> Table {
        let mut t = Table::new();
        t.insert("id", value(&self.id));
        t.insert("protocol", value(file_protocol(self.protocol)));
        match self.ports {
            Ports::All => {}
            Ports::Range { from, to } => {
                t.insert("from_port", value(i64::from(from)));
                t.insert("to_port", value(i64::from(to)));
            }
            Ports::Icmp { ty, code } => {
                t.insert("from_port", value(ty.map_or(-1, i64::from)));
                t.insert("to_port", value(code.map_or(-1, i64::from)));
            }
        }
        let (key, text) = match &self.target {
            Target::V4(c) => ("cidr_blocks", c.clone()),
            Target::V6(c) => ("ipv6_cidr_blocks", c.clone()),
            Target::PrefixList(id) => ("prefix_list_ids", prefix_list_name(id)),
            Target::Group { name, .. } => ("security_groups", name.clone()),
        };
        let mut a = toml_edit::Array::new();
        a.push(text);
        t.insert(key, value(a));
        if let Some(d) = &self.description {
            t.insert("description", value(d));
        }
        if !self.tags.is_empty() {
            t.insert("tags", value(tag_table(&self.tags)));
        }
        t
    }
}

/// The file's name for a protocol.
pub fn file_protocol(p: Protocol) -> String {
    match p {
        Protocol::All => "all".to_owned(),
        other @ Protocol::Number(_) => other.to_string(),
    }
}

fn tag_table(tags: &[(String, String)]) -> InlineTable {
    let mut t = InlineTable::new();
    for (k, v) in tags {
        t.insert(k, Value::from(v.as_str()));
    }
    t
}

/// The rules file as a document being edited.
pub struct Doc(pub DocumentMut);

fn broken(what: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!(
        "the rules file does not have the shape its own parse found ({what}); nothing changed"
    ))
}

impl Doc {
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        text.parse::<DocumentMut>()
            .map(Self)
            .map_err(|e| ApiError::internal(format!("the rules file is not TOML: {e}")))
    }

    pub fn render(&self) -> String {
        self.0.to_string()
    }

    /// How the file indents its rule tables: before the header, before
    /// each key (the first rule table found; none: no indentation).
    fn rule_style(&self) -> (String, String) {
        let indent = |raw: Option<&toml_edit::RawString>| -> String {
            raw.and_then(toml_edit::RawString::as_str)
                .and_then(|s| s.rsplit('\n').next())
                .map(|s| s.chars().take_while(|c| *c == ' ' || *c == '\t').collect())
                .unwrap_or_default()
        };
        let groups = self
            .0
            .get("security_group")
            .and_then(Item::as_array_of_tables);
        for g in groups.into_iter().flat_map(ArrayOfTables::iter) {
            for dir in ["ingress", "egress"] {
                let Some(t) = g
                    .get(dir)
                    .and_then(Item::as_array_of_tables)
                    .and_then(|a| a.iter().next())
                else {
                    continue;
                };
                let key = t
                    .iter()
                    .next()
                    .and_then(|(k, _)| t.key(k))
                    .map(|k| indent(k.leaf_decor().prefix()))
                    .unwrap_or_default();
                return (indent(t.decor().prefix()), key);
            }
        }
        (String::new(), String::new())
    }

    /// A rule table written as the file writes its others.
    fn styled(&self, mut t: Table) -> Table {
        let (header, key) = self.rule_style();
        t.decor_mut().set_prefix(format!("\n{header}"));
        let keys: Vec<String> = t.iter().map(|(k, _)| k.to_owned()).collect();
        for k in keys {
            if let Some(mut km) = t.key_mut(&k) {
                km.leaf_decor_mut().set_prefix(key.clone());
            }
        }
        t
    }

    /// `[[name]]` tables of the root.
    fn array(&mut self, name: &str) -> Option<&mut ArrayOfTables> {
        self.0.get_mut(name)?.as_array_of_tables_mut()
    }

    /// The `[[kind]]` table whose `name` is `name`.
    pub fn named(&mut self, kind: &str, name: &str) -> Option<&mut Table> {
        self.array(kind)?
            .iter_mut()
            .find(|t| t.get("name").and_then(Item::as_str) == Some(name))
    }

    fn group(&mut self, name: &str) -> Result<&mut Table, ApiError> {
        self.named("security_group", name)
            .ok_or_else(|| broken(format!("no [[security_group]] named {name:?}")))
    }

    /// Appends a `[[kind]]` table (after the last one of its kind).
    pub fn push(&mut self, kind: &str, table: Table) {
        if self.array(kind).is_none() {
            self.0
                .insert(kind, Item::ArrayOfTables(ArrayOfTables::new()));
        }
        if let Some(a) = self.array(kind) {
            a.push(table);
        }
    }

    /// Removes the `[[kind]]` table named `name`.
    pub fn remove(&mut self, kind: &str, name: &str) -> Result<(), ApiError> {
        let a = self
            .array(kind)
            .ok_or_else(|| broken(format!("no [[{kind}]]")))?;
        let i = a
            .iter()
            .position(|t| t.get("name").and_then(Item::as_str) == Some(name))
            .ok_or_else(|| broken(format!("no [[{kind}]] named {name:?}")))?;
        a.remove(i);
        if a.is_empty() {
            self.0.remove(kind);
        }
        Ok(())
    }

    /// A new group's table.
    pub fn add_group(
        &mut self,
        name: &str,
        id: &str,
        description: &str,
        vpc: Option<&str>,
        tags: &[(String, String)],
    ) {
        let mut t = Table::new();
        t.insert("name", value(name));
        t.insert("id", value(id));
        t.insert("description", value(description));
        if let Some(v) = vpc {
            t.insert("vpc", value(v));
        }
        if !tags.is_empty() {
            t.insert("tags", value(tag_table(tags)));
        }
        // No rules until they are added: nothing in, nothing out.
        t.insert("egress", value(toml_edit::Array::new()));
        self.push("security_group", t);
    }

    /// The rule blocks of a group in one direction, made an array of
    /// tables (from none, or `egress = []`).
    fn blocks(&mut self, group: &str, dir: Direction) -> Result<&mut ArrayOfTables, ApiError> {
        let g = self.group(group)?;
        let key = dir.as_str();
        let is_aot = g.get(key).is_some_and(Item::is_array_of_tables);
        if !is_aot {
            let empty = g
                .get(key)
                .is_none_or(|i| i.as_array().is_some_and(toml_edit::Array::is_empty));
            if !empty {
                return Err(broken(format!(
                    "{key} of {group:?} is not a list of tables"
                )));
            }
            g.remove(key);
            g.insert(key, Item::ArrayOfTables(ArrayOfTables::new()));
        }
        g.get_mut(key)
            .and_then(Item::as_array_of_tables_mut)
            .ok_or_else(|| broken("rules"))
    }

    /// Writes the group's implicit default egress (no `egress` key) as
    /// the blocks it stands for, with the ids they have.
    pub fn materialize_egress(
        &mut self,
        group: &str,
        implicit: &[ApiRule],
        pl: &dyn Fn(&str) -> String,
    ) -> Result<(), ApiError> {
        if self.group(group)?.contains_key("egress") {
            return Ok(());
        }
        let mut a = ArrayOfTables::new();
        for r in implicit {
            a.push(self.styled(RuleSpec::of(r).table(pl)));
        }
        self.group(group)?.insert("egress", Item::ArrayOfTables(a));
        Ok(())
    }

    /// Splits block `block` into one block per source (`rules`: its AWS
    /// rules, in order), each with its id; a single-source block only gets
    /// its id written.
    pub fn split(
        &mut self,
        group: &str,
        dir: Direction,
        block: usize,
        rules: &[ApiRule],
        pl: &dyn Fn(&str) -> String,
    ) -> Result<(), ApiError> {
        let pieces: Vec<Table> = rules
            .iter()
            .map(|r| self.styled(RuleSpec::of(r).table(pl)))
            .collect();
        let a = self.blocks(group, dir)?;
        let original = a
            .get(block)
            .ok_or_else(|| broken(format!("{group:?} has no {} block {block}", dir.as_str())))?
            .clone();
        if rules.len() == 1 {
            if let Some(t) = a.get_mut(block) {
                t.insert("id", value(&rules[0].id));
            }
            return Ok(());
        }
        let mut rebuilt = ArrayOfTables::new();
        for (i, t) in std::mem::take(a).into_iter().enumerate() {
            if i != block {
                rebuilt.push(t);
                continue;
            }
            for piece in &pieces {
                let mut piece = piece.clone();
                piece.set_position(original.position());
                rebuilt.push(piece);
            }
        }
        *a = rebuilt;
        Ok(())
    }

    /// Appends rules to a group.
    pub fn push_rules(
        &mut self,
        group: &str,
        dir: Direction,
        rules: &[RuleSpec],
        pl: &dyn Fn(&str) -> String,
    ) -> Result<(), ApiError> {
        let tables: Vec<Table> = rules.iter().map(|r| self.styled(r.table(pl))).collect();
        let a = self.blocks(group, dir)?;
        for t in tables {
            a.push(t);
        }
        Ok(())
    }

    /// The single-source block whose `id` is `id`.
    pub fn rule_block(
        &mut self,
        group: &str,
        dir: Direction,
        id: &str,
    ) -> Result<&mut Table, ApiError> {
        self.blocks(group, dir)?
            .iter_mut()
            .find(|t| t.get("id").and_then(Item::as_str) == Some(id))
            .ok_or_else(|| broken(format!("no rule {id} in {group:?}")))
    }

    /// Removes the single-source blocks with these ids; a group left with
    /// no egress blocks says `egress = []` (none, not the default).
    pub fn remove_rules(
        &mut self,
        group: &str,
        dir: Direction,
        ids: &[String],
    ) -> Result<(), ApiError> {
        let a = self.blocks(group, dir)?;
        let kept: Vec<Table> = std::mem::take(a)
            .into_iter()
            .filter(|t| {
                !t.get("id")
                    .and_then(Item::as_str)
                    .is_some_and(|id| ids.iter().any(|i| i == id))
            })
            .collect();
        let empty = kept.is_empty();
        for t in kept {
            a.push(t);
        }
        if empty {
            let g = self.group(group)?;
            g.remove(dir.as_str());
            if dir == Direction::Egress {
                g.insert("egress", value(toml_edit::Array::new()));
            }
        }
        Ok(())
    }

    /// Replaces a single-source block's contents, keeping its place.
    pub fn replace_rule(
        &mut self,
        group: &str,
        dir: Direction,
        spec: &RuleSpec,
        pl: &dyn Fn(&str) -> String,
    ) -> Result<(), ApiError> {
        let new = self.styled(spec.table(pl));
        let t = self.rule_block(group, dir, &spec.id)?;
        let position = t.position();
        let decor = t.decor().clone();
        *t = new;
        t.set_position(position);
        *t.decor_mut() = decor;
        Ok(())
    }

    /// Sets (`Some`) or removes (`None`) tags on a table; `None` values
    /// in `remove` remove the key whatever its value.
    pub fn set_tags(t: &mut Table, add: &[(String, String)], remove: &[(String, Option<String>)]) {
        let mut tags: Vec<(String, String)> = t
            .get("tags")
            .and_then(Item::as_inline_table)
            .map(|it| {
                it.iter()
                    .map(|(k, v)| (k.to_owned(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .or_else(|| {
                t.get("tags").and_then(Item::as_table).map(|tt| {
                    tt.iter()
                        .map(|(k, v)| (k.to_owned(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
            })
            .unwrap_or_default();
        for (k, v) in add {
            match tags.iter_mut().find(|(tk, _)| tk == k) {
                Some(e) => e.1.clone_from(v),
                None => tags.push((k.clone(), v.clone())),
            }
        }
        tags.retain(|(k, v)| {
            !remove
                .iter()
                .any(|(rk, rv)| rk == k && rv.as_ref().is_none_or(|rv| rv == v))
        });
        if tags.is_empty() {
            t.remove("tags");
        } else {
            t.insert("tags", value(tag_table(&tags)));
        }
    }

    /// Renames `old` to `new` in every rule block's `key` list (a prefix
    /// list or group renamed: the file names them by name).
    pub fn rename_in_rules(&mut self, key: &str, old: &str, new: &str) {
        let Some(groups) = self.array("security_group") else {
            return;
        };
        for g in groups.iter_mut() {
            for dir in ["ingress", "egress"] {
                let Some(blocks) = g.get_mut(dir).and_then(Item::as_array_of_tables_mut) else {
                    continue;
                };
                for b in blocks.iter_mut() {
                    let Some(list) = b.get_mut(key).and_then(Item::as_array_mut) else {
                        continue;
                    };
                    for v in list.iter_mut() {
                        if v.as_str() == Some(old) {
                            let decor = v.decor().clone();
                            *v = Value::from(new);
                            *v.decor_mut() = decor;
                        }
                    }
                }
            }
        }
    }

    /// Sets a string array key of the `[[kind]]` table named `name`.
    pub fn set_strings(
        &mut self,
        kind: &str,
        name: &str,
        key: &str,
        values: &[String],
    ) -> Result<(), ApiError> {
        let t = self
            .named(kind, name)
            .ok_or_else(|| broken(format!("no [[{kind}]] named {name:?}")))?;
        let mut a = toml_edit::Array::new();
        for v in values {
            a.push(v.as_str());
        }
        t.insert(key, value(a));
        Ok(())
    }
}

/// Removes what a write cut short left beside `path` (its temporary file,
/// `.NAME.sg-agent-PID`, of a process that is gone).
pub fn remove_stale_temporaries(path: &std::path::Path) {
    let Ok(path) = std::fs::canonicalize(path) else {
        return;
    };
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let prefix = format!(".{}.sg-agent-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = file
            .strip_prefix(&prefix)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            match std::fs::remove_file(e.path()) {
                Ok(()) => log::info!("removed {}, left by a write cut short", e.path().display()),
                Err(err) => log::warn!("{}: {err}", e.path().display()),
            }
        }
    }
}

/// Writes `text` over `path` atomically: a temporary file in the same
/// directory with the original's owner and mode, fsync, rename, fsync of
/// the directory.
pub fn write_atomically(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::{
        io::Write as _,
        os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    };
    // A symlink (a mounted ConfigMap's, a user's) stays one: its target
    // is what is replaced.
    let path = &std::fs::canonicalize(path)?;
    let meta = std::fs::metadata(path)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.sg-agent-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()))?;
        f.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ec2::view::{Account, View};

    const FILE: &str = r#"# The lab's rules: kept as written.
[[security_group]]
name = "web"                # the web tier
  [[security_group.ingress]]
  protocol = "tcp"
  from_port = 22
  to_port = 22
  cidr_blocks = ["10.0.0.0/24", "10.1.0.0/24"]   # two sources, one block

  [[security_group.ingress]]
  protocol = "tcp"          # HTTP
  from_port = 80
  to_port = 80
  cidr_blocks = ["0.0.0.0/0"]

[[instance]]
name = "web"
addresses = ["10.0.0.1"]
security_groups = ["web"]
"#;

    fn account() -> Account {
        Account {
            id: "000000000000".to_owned(),
            region: "us-east-1".to_owned(),
        }
    }

    #[test]
    fn one_source_split_out_and_removed_leaves_the_rest_as_written() {
        let vpc = crate::config::from_str("vpc.toml".as_ref(), FILE).expect("valid");
        let account = account();
        let view = View::new(&vpc, &account);
        let rules = view.rules(0, Direction::Ingress);
        let first: Vec<ApiRule> = rules.iter().filter(|r| r.block == 0).cloned().collect();
        let gone = first[1].id.clone();
        let mut doc = Doc::parse(FILE).expect("TOML");
        doc.split("web", Direction::Ingress, 0, &first, &|s| s.to_owned())
            .expect("split");
        doc.remove_rules("web", Direction::Ingress, std::slice::from_ref(&gone))
            .expect("remove");
        let out = doc.render();
        let kept = format!(
            "  [[security_group.ingress]]\n  id = \"{}\"\n  protocol = \"tcp\"\n  from_port = 22\n  to_port = 22\n  cidr_blocks = [\"10.0.0.0/24\"]\n",
            first[0].id
        );
        assert!(
            out.contains(&kept),
            "the split block in the file's style:\n{out}"
        );
        assert!(
            !out.contains("10.1.0.0/24"),
            "the revoked source is gone:\n{out}"
        );
        assert!(
            out.contains("  protocol = \"tcp\"          # HTTP\n"),
            "the untouched block keeps its comment:\n{out}"
        );
        assert!(out.starts_with("# The lab's rules: kept as written.\n"));
        assert!(out.contains("name = \"web\"                # the web tier\n"));
        // The result is a file that validates, with the same ids.
        let again = crate::config::from_str("vpc.toml".as_ref(), &out).expect("still valid");
        let view = View::new(&again, &account);
        let ids: Vec<String> = view
            .rules(0, Direction::Ingress)
            .into_iter()
            .map(|r| r.id)
            .collect();
        let want: Vec<String> = rules
            .iter()
            .filter(|r| r.id != gone)
            .map(|r| r.id.clone())
            .collect();
        assert_eq!(ids, want, "every other rule keeps its id");
    }
}
