//! EC2's Query protocol: the request's parameters, flattened as AWS's SDKs
//! send them (`IpPermissions.1.IpRanges.2.CidrIp=...`, lists numbered from
//! 1), from the form body of a POST or the query string of a GET.

use std::{collections::BTreeMap, fmt::Write as _};

use super::error::ApiError;

/// A request's parameters by name.
#[derive(Debug, Default, Clone)]
pub struct Params(BTreeMap<String, String>);

/// Parameters a request may have at most: a Describe with a thousand
/// filter values is still far below it.
const MAX_PARAMS: usize = 20_000;

impl Params {
    /// From `application/x-www-form-urlencoded` bytes.
    pub fn parse(form: &[u8]) -> Result<Self, ApiError> {
        let mut map = BTreeMap::new();
        for pair in form.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
            let (k, v) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &b""[..]),
            };
            let k = decode(k)?;
            let v = decode(v)?;
            map.insert(k, v);
            if map.len() > MAX_PARAMS {
                return Err(ApiError::malformed(format!(
                    "more than {MAX_PARAMS} parameters"
                )));
            }
        }
        Ok(Self(map))
    }

    /// Adds `other`'s parameters (a POST's query string beside its body).
    pub fn merge(&mut self, other: Self) {
        for (k, v) in other.0 {
            self.0.entry(k).or_insert(v);
        }
    }

    pub fn insert(&mut self, key: String, value: &str) {
        self.0.insert(key, value.to_owned());
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// A parameter the action cannot do without.
    pub fn required(&self, key: &str) -> Result<&str, ApiError> {
        self.get(key)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ApiError::missing(key))
    }

    /// An integer parameter.
    pub fn int(&self, key: &str) -> Result<Option<i64>, ApiError> {
        self.get(key)
            .map(|v| {
                v.parse().map_err(|_| {
                    ApiError::invalid_value(format!(
                        "Invalid value '{v}' for {key}: not an integer"
                    ))
                })
            })
            .transpose()
    }

    pub fn bool(&self, key: &str) -> Option<bool> {
        self.get(key).map(|v| v.eq_ignore_ascii_case("true"))
    }

    /// The numbers N of `prefix.N...` parameters, in order.
    pub fn indices(&self, prefix: &str) -> Vec<u32> {
        let head = format!("{prefix}.");
        let mut out: Vec<u32> = self
            .0
            .range(head.clone()..)
            .take_while(|(k, _)| k.starts_with(&head))
            .filter_map(|(k, _)| k[head.len()..].split('.').next()?.parse().ok())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// `prefix.1`, `prefix.2`, ...: a list of strings.
    pub fn list(&self, prefix: &str) -> Vec<String> {
        self.indices(prefix)
            .into_iter()
            .filter_map(|n| self.get(&format!("{prefix}.{n}")).map(str::to_owned))
            .collect()
    }

    /// `Filter.N.Name` and `Filter.N.Value.M`.
    pub fn filters(&self) -> Vec<Filter> {
        self.indices("Filter")
            .into_iter()
            .filter_map(|n| {
                Some(Filter {
                    name: self.get(&format!("Filter.{n}.Name"))?.to_owned(),
                    values: self.list(&format!("Filter.{n}.Value")),
                })
            })
            .collect()
    }

    /// `PREFIX.N.Key` / `PREFIX.N.Value` pairs.
    pub fn tags(&self, prefix: &str) -> Vec<(String, Option<String>)> {
        self.indices(prefix)
            .into_iter()
            .filter_map(|n| {
                let key = self.get(&format!("{prefix}.{n}.Key"))?.to_owned();
                let value = self.get(&format!("{prefix}.{n}.Value")).map(str::to_owned);
                Some((key, value))
            })
            .collect()
    }

    /// `TagSpecification.N` of the resource type `ty`: its tags.
    pub fn tag_specifications(&self, ty: &str) -> Result<Vec<(String, String)>, ApiError> {
        let mut out = Vec::new();
        for n in self.indices("TagSpecification") {
            let rt = self
                .get(&format!("TagSpecification.{n}.ResourceType"))
                .unwrap_or_default();
            if rt != ty {
                return Err(ApiError::invalid_value(format!(
                    "'{rt}' is not a valid taggable resource type for this operation."
                )));
            }
            for (k, v) in self.tags(&format!("TagSpecification.{n}.Tag")) {
                out.push((k, v.unwrap_or_default()));
            }
        }
        Ok(out)
    }
}

/// A `Filter` of a Describe call.
#[derive(Debug, Clone)]
pub struct Filter {
    pub name: String,
    pub values: Vec<String>,
}

impl Filter {
    /// Whether `value` is one the filter names, with EC2's wildcards (`*`
    /// any characters, `?` one).
    pub fn matches(&self, value: &str) -> bool {
        self.values.iter().any(|p| wildcard(p, value))
    }
}

fn wildcard(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Iterative matching with one backtrack point (the last `*`).
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < t.len() {
        if i < p.len() && (p[i] == '?' || p[i] == t[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    while i < p.len() && p[i] == '*' {
        i += 1;
    }
    i == p.len()
}

/// Percent-decoding, `+` as a space (form encoding).
fn decode(bytes: &[u8]) -> Result<String, ApiError> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| ApiError::malformed("a malformed percent-encoding"))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| ApiError::malformed("a parameter that is not UTF-8"))
}

/// Percent-encoding as `SigV4`'s canonical form wants it (RFC 3986
/// unreserved characters kept).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_filters_come_back_in_order() {
        let p = Params::parse(
            b"Action=DescribeSecurityGroups&GroupId.2=sg-b&GroupId.1=sg-a&GroupId.10=sg-c\
              &Filter.1.Name=tag%3AName&Filter.1.Value.1=web+1&Filter.1.Value.2=x*",
        )
        .unwrap();
        assert_eq!(p.list("GroupId"), ["sg-a", "sg-b", "sg-c"]);
        let f = p.filters();
        assert_eq!(f[0].name, "tag:Name");
        assert!(f[0].matches("web 1") && f[0].matches("xyz") && !f[0].matches("web"));
    }

    #[test]
    fn wildcards_match_as_ec2s_do() {
        assert!(wildcard("*", ""));
        assert!(wildcard("a*c", "abbbc"));
        assert!(wildcard("a?c", "abc"));
        assert!(!wildcard("a?c", "ac"));
        assert!(wildcard("*b*", "abc"));
    }

    #[test]
    fn malformed_encoding_is_an_error_not_a_panic() {
        assert!(Params::parse(b"Action=%zz").is_err());
        assert!(Params::parse(b"Action=%4").is_err());
        assert!(Params::parse(b"A=%ff%fe").is_err());
    }
}
