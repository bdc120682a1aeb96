//! AWS Signature Version 4, checked: the request's canonical form signed
//! again with the secret of the access key it names, compared in constant
//! time (AWS's "Signature Version 4 signing process").

use std::{collections::BTreeMap, fmt::Write as _};

use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::{Digest as _, Sha256};

use super::{error::ApiError, query::encode};

/// Access keys the API accepts: id to secret.
#[derive(Clone, Debug, Default)]
pub struct Credentials(BTreeMap<String, String>);

impl Credentials {
    /// `--ec2-api-credentials FILE`: one `ACCESS_KEY_ID SECRET_ACCESS_KEY`
    /// per line (`#` starts a comment). The file holds secrets: it must be
    /// readable by its owner only.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.mode() & 0o077 != 0 {
            return Err(format!(
                "{} is readable by others (mode {:o}): chmod 600 it",
                path.display(),
                meta.mode() & 0o7777
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut keys = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(id), Some(secret), None) => {
                    keys.insert(id.to_owned(), secret.to_owned());
                }
                _ => {
                    return Err(format!(
                        "{}:{}: write ACCESS_KEY_ID SECRET_ACCESS_KEY",
                        path.display(),
                        n + 1
                    ));
                }
            }
        }
        if keys.is_empty() {
            return Err(format!("{} names no access key", path.display()));
        }
        Ok(Self(keys))
    }
}

/// What the check needs of a request.
pub struct Signed<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a hyper::HeaderMap,
    pub body: &'a [u8],
}

fn auth_failure(why: &str) -> ApiError {
    ApiError::new(
        "AuthFailure",
        format!("AWS was not able to validate the provided access credentials ({why})"),
    )
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256>>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// The signature of a canonical request: the string to sign (with the
/// credential scope `date/region/service/aws4_request`) under the key
/// derived from `secret`.
fn signature_of(
    secret: &str,
    amz_date: &str,
    (date, region, service): (&str, &str, &str),
    canonical: &str,
) -> Vec<u8> {
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{date}/{region}/{service}/aws4_request\n{}",
        crate::config::hex(&Sha256::digest(canonical.as_bytes()))
    );
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    let k = hmac(&k, b"aws4_request");
    hmac(&k, to_sign.as_bytes())
}

/// Checks the request's signature against `keys`.
pub fn verify(req: &Signed<'_>, keys: &Credentials) -> Result<(), ApiError> {
    let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
    let auth = header("authorization").ok_or_else(|| auth_failure("the request is not signed"))?;
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| auth_failure("not a Signature Version 4 signature"))?;
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed_headers = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let (Some(credential), Some(signed_headers), Some(signature)) =
        (credential, signed_headers, signature)
    else {
        return Err(auth_failure("an incomplete Authorization header"));
    };
    let mut scope = credential.splitn(2, '/');
    let key_id = scope.next().unwrap_or_default();
    let scope = scope.next().unwrap_or_default();
    let secret = keys
        .0
        .get(key_id)
        .ok_or_else(|| auth_failure("an unknown access key"))?;
    let parts: Vec<&str> = scope.split('/').collect();
    let [date, region, service, "aws4_request"] = parts[..] else {
        return Err(auth_failure("a malformed credential scope"));
    };
    let amz_date = header("x-amz-date").ok_or_else(|| auth_failure("no X-Amz-Date"))?;
    if !amz_date.starts_with(date) {
        return Err(auth_failure("X-Amz-Date is not the credential's date"));
    }
    check_fresh(amz_date)?;

    let mut canonical_headers = String::new();
    for name in signed_headers.split(';') {
        let values: Vec<String> = req
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        let _ = writeln!(canonical_headers, "{name}:{}", values.join(","));
    }
    let payload_hash = header("x-amz-content-sha256").map_or_else(
        || crate::config::hex(&Sha256::digest(req.body)),
        str::to_owned,
    );
    let canonical = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{payload_hash}",
        req.method,
        canonical_path(req.path),
        canonical_query(req.query)
    );
    let ours = signature_of(secret, amz_date, (date, region, service), &canonical);
    let theirs = hex_decode(signature).ok_or_else(|| auth_failure("a malformed signature"))?;
    let mut m = <Hmac<Sha256>>::new_from_slice(b"compare").expect("HMAC takes any key length");
    m.update(&ours);
    let expected = m.finalize().into_bytes();
    let mut m = <Hmac<Sha256>>::new_from_slice(b"compare").expect("HMAC takes any key length");
    m.update(&theirs);
    // Compared as HMACs of both: constant time whatever their lengths.
    m.verify_slice(&expected).map_err(|_| {
        ApiError::new(
            "AuthFailure",
            "The request signature we calculated does not match the signature you provided",
        )
    })
}

/// Signs a request (AWS's Signature Version 4, headers `host`,
/// `x-amz-date` and, with temporary credentials, `x-amz-security-token`):
/// the headers to add, `authorization` last.
#[allow(clippy::too_many_arguments)]
pub fn sign(
    method: &str,
    host: &str,
    path: &str,
    body: &[u8],
    key: &Key,
    region: &str,
    service: &str,
    now: u64,
) -> Vec<(&'static str, String)> {
    let amz_date = amz_date(now);
    let date = &amz_date[..8];
    let mut headers = vec![("x-amz-date", amz_date.clone())];
    if let Some(token) = &key.token {
        headers.push(("x-amz-security-token", token.clone()));
    }
    let mut canonical_headers = String::new();
    for (k, v) in
        std::iter::once(("host", host)).chain(headers.iter().map(|(k, v)| (*k, v.as_str())))
    {
        let _ = writeln!(canonical_headers, "{k}:{}", v.trim());
    }
    let signed_headers = std::iter::once("host")
        .chain(headers.iter().map(|(k, _)| *k))
        .collect::<Vec<_>>()
        .join(";");
    let canonical = format!(
        "{method}\n{}\n\n{canonical_headers}\n{signed_headers}\n{}",
        canonical_path(path),
        crate::config::hex(&Sha256::digest(body))
    );
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let signature = crate::config::hex(&signature_of(
        &key.secret,
        &amz_date,
        (date, region, service),
        &canonical,
    ));
    headers.push((
        "authorization",
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            key.id
        ),
    ));
    headers
}

/// The credentials a request is signed with.
#[derive(Clone)]
pub struct Key {
    pub id: String,
    pub secret: String,
    /// A session token (temporary credentials: `AWS_SESSION_TOKEN`).
    pub token: Option<String>,
}

impl std::fmt::Debug for Key {
    /// The access key id only: the secret and the token stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// `YYYYMMDDTHHMMSSZ` for a Unix time (the civil date by Howard
/// Hinnant's algorithm).
fn amz_date(now: u64) -> String {
    let secs = i64::try_from(now).unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A signature older (or newer) than 15 minutes is refused, as AWS's.
fn check_fresh(amz_date: &str) -> Result<(), ApiError> {
    // 20261207T101500Z
    let field = |r: std::ops::Range<usize>| amz_date.get(r).and_then(|v| v.parse::<i64>().ok());
    let (Some(year), Some(month), Some(day), Some(hour), Some(minute), Some(second)) = (
        field(0..4),
        field(4..6),
        field(6..8),
        field(9..11),
        field(11..13),
        field(13..15),
    ) else {
        return Err(auth_failure("a malformed X-Amz-Date"));
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y2, m2) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let then = days * 86_400 + hour * 3600 + minute * 60 + second;
    let now = i64::try_from(crate::observe::unix_now()).unwrap_or(i64::MAX);
    if (now - then).abs() > 15 * 60 {
        return Err(ApiError::new(
            "RequestExpired",
            "Request has expired (its X-Amz-Date is more than 15 minutes from now)",
        ));
    }
    Ok(())
}

fn canonical_path(path: &str) -> String {
    if path.is_empty() {
        return "/".to_owned();
    }
    path.split('/')
        .map(|seg| encode(&percent_decoded(seg)))
        .collect::<Vec<_>>()
        .join("/")
}

fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (encode(&percent_decoded(k)), encode(&percent_decoded(v)))
        })
        .collect();
    pairs.sort();
    pairs
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request's headers: `host`, and those `sign` gave.
    fn header_map(host: &str, signed: &[(&'static str, String)]) -> hyper::HeaderMap {
        let mut map = hyper::HeaderMap::new();
        map.insert("host", host.parse().unwrap());
        for (k, v) in signed {
            map.insert(*k, v.parse().unwrap());
        }
        map
    }

    /// A verifier that accepts one key.
    fn accepting(id: &str, secret: &str) -> Credentials {
        Credentials([(id.to_owned(), secret.to_owned())].into_iter().collect())
    }

    /// AWS's published example (the GET `ListUsers` request of the `SigV4`
    /// documentation's "Examples of the complete Signature Version 4
    /// signing process"), key and signature as published.
    #[test]
    fn what_sign_signs_verify_accepts() {
        let now = crate::observe::unix_now();
        assert_eq!(amz_date(1_449_014_400), "20151202T000000Z");
        let body = b"Action=DescribeVpcs&Version=2016-11-15";
        let key = Key {
            id: "AKID".to_owned(),
            secret: "s3cret".to_owned(),
            token: None,
        };
        let headers = sign(
            "POST",
            "127.0.0.1:4566",
            "/",
            body,
            &key,
            "us-east-1",
            "ec2",
            now,
        );
        let map = header_map("127.0.0.1:4566", &headers);
        let keys = accepting("AKID", "s3cret");
        let req = Signed {
            method: "POST",
            path: "/",
            query: "",
            headers: &map,
            body,
        };
        assert!(verify(&req, &keys).is_ok());
        let wrong = accepting("AKID", "other");
        assert_eq!(verify(&req, &wrong).unwrap_err().code, "AuthFailure");
        let tampered = Signed {
            body: b"Action=DeleteSecurityGroup",
            ..req
        };
        assert_eq!(verify(&tampered, &keys).unwrap_err().code, "AuthFailure");
    }

    /// Temporary credentials: the session token is sent and signed, so
    /// a verifier that reads `SignedHeaders` checks it too.
    #[test]
    fn a_session_token_is_signed() {
        let body = b"Action=DescribeVpcs&Version=2016-11-15";
        let key = Key {
            id: "ASIA".to_owned(),
            secret: "s3cret".to_owned(),
            token: Some("session".to_owned()),
        };
        let now = crate::observe::unix_now();
        let headers = sign("POST", "h:1", "/", body, &key, "us-east-1", "ec2", now);
        let names: Vec<&str> = headers.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            names,
            ["x-amz-date", "x-amz-security-token", "authorization"]
        );
        assert!(
            headers[2]
                .1
                .contains("SignedHeaders=host;x-amz-date;x-amz-security-token,")
        );
        let map = header_map("h:1", &headers);
        let keys = accepting("ASIA", "s3cret");
        let req = Signed {
            method: "POST",
            path: "/",
            query: "",
            headers: &map,
            body,
        };
        assert!(verify(&req, &keys).is_ok());
        let mut forged = map.clone();
        forged.insert("x-amz-security-token", "forged".parse().unwrap());
        let req = Signed {
            headers: &forged,
            ..req
        };
        assert_eq!(verify(&req, &keys).unwrap_err().code, "AuthFailure");
    }

    #[test]
    fn aws_documented_example_verifies() {
        let k = hmac(b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", b"20150830");
        let k = hmac(&k, b"us-east-1");
        let k = hmac(&k, b"iam");
        let k = hmac(&k, b"aws4_request");
        assert_eq!(
            crate::config::hex(&k),
            "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
        );
    }
}
