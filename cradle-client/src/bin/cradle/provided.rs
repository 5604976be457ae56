//! `cradle methods` and `cradle call`: the methods the server answers
//! (its own, compiled in, provided by client processes), and calling a
//! bytes method by name.

use super::{Report, fmt_bytes, fmt_ns};
use cradle_client::{CallOptions, Client, Origin, WaitMode};
use serde::Serialize;
use std::fmt::Write as _;
use std::io::Read;
use std::time::Duration;

/// `cradle methods`'s result.
#[derive(Debug, Serialize)]
pub(crate) struct MethodsReport {
    methods: Vec<MethodRow>,
}

#[derive(Debug, Serialize)]
struct MethodRow {
    name: String,
    version: u32,
    /// `builtin`, `compiled` or `provided`.
    origin: &'static str,
    /// As hex, `0x…`.
    id: String,
    schema_hash: String,
    queued: u32,
    served: u64,
    errors: u64,
    p50_ns: u64,
    providers: Vec<ProviderRow>,
}

#[derive(Debug, Serialize)]
struct ProviderRow {
    session: u64,
    pid: u32,
    concurrency: u32,
    in_flight: u32,
    served: u64,
    errors: u64,
    p50_ns: u64,
}

fn origin_name(o: u8) -> &'static str {
    match Origin::from_u8(o) {
        Some(Origin::Builtin) => "builtin",
        Some(Origin::Compiled) => "compiled",
        Some(Origin::Provided) => "provided",
        None => "unknown",
    }
}

impl Report for MethodsReport {
    fn human(&self) -> String {
        let mut o = String::new();
        let w = self
            .methods
            .iter()
            .map(|m| m.name.len() + 1 + m.version.to_string().len())
            .max()
            .unwrap_or(4)
            .max(4);
        let _ = writeln!(
            o,
            "{:<w$}  {:<8}  {:>9}  {:>6}  {:>10}  {:>8}  {:>9}",
            "NAME", "ORIGIN", "PROVIDERS", "QUEUED", "SERVED", "ERRORS", "P50"
        );
        for m in &self.methods {
            let name = format!("{}@{}", m.name, m.version);
            let p50 = if m.p50_ns == 0 {
                "-".to_owned()
            } else {
                fmt_ns(m.p50_ns)
            };
            let providers = if m.origin == "provided" {
                m.providers.len().to_string()
            } else {
                "-".to_owned()
            };
            let _ = writeln!(
                o,
                "{name:<w$}  {:<8}  {providers:>9}  {:>6}  {:>10}  {:>8}  {p50:>9}",
                m.origin, m.queued, m.served, m.errors
            );
            for p in &m.providers {
                let p50 = if p.p50_ns == 0 {
                    "-".to_owned()
                } else {
                    fmt_ns(p.p50_ns)
                };
                let _ = writeln!(
                    o,
                    "  pid {:<8} session {:<6} in flight {}/{}  served {}  errors {}  p50 {p50}",
                    p.pid, p.session, p.in_flight, p.concurrency, p.served, p.errors
                );
            }
        }
        let provided = self
            .methods
            .iter()
            .filter(|m| m.origin == "provided")
            .count();
        let _ = write!(
            o,
            "{} methods, {provided} provided by client processes",
            self.methods.len()
        );
        o
    }
}

/// Lists the server's methods.
pub(crate) fn methods(client: &Client) -> Result<MethodsReport, String> {
    let list = client
        .methods()
        .map_err(|e| format!("cannot list the methods: {e}"))?;
    Ok(methods_report(list))
}

/// The report of the methods `list` (from a local or a remote server).
pub(crate) fn methods_report(list: Vec<cradle_client::MethodInfo>) -> MethodsReport {
    let mut methods: Vec<MethodRow> = list
        .into_iter()
        .map(|m| MethodRow {
            origin: origin_name(m.origin),
            id: format!("{:#018x}", m.id),
            schema_hash: format!("{:#018x}", m.schema_hash),
            name: m.name,
            version: m.version,
            queued: m.queued,
            served: m.served,
            errors: m.errors,
            p50_ns: m.p50_ns,
            providers: m
                .providers
                .into_iter()
                .map(|p| ProviderRow {
                    session: p.session,
                    pid: p.pid,
                    concurrency: p.concurrency,
                    in_flight: p.in_flight,
                    served: p.served,
                    errors: p.errors,
                    p50_ns: p.p50_ns,
                })
                .collect(),
        })
        .collect();
    methods.sort_by(|a, b| (a.origin, &a.name, a.version).cmp(&(b.origin, &b.name, b.version)));
    MethodsReport { methods }
}

/// `cradle call`'s result.
#[derive(Debug, Serialize)]
pub(crate) struct CallReport {
    name: String,
    version: u32,
    /// The response body, as hex.
    response_hex: String,
    response_bytes: usize,
    /// Result blobs the answer passed back.
    blobs: Vec<BlobRow>,
    seconds: f64,
    #[serde(skip)]
    raw: bool,
    #[serde(skip)]
    body: Vec<u8>,
}

#[derive(Debug, Serialize)]
struct BlobRow {
    /// A local blob's handle; through the gateway, `blake3:` and the
    /// digest of its bytes.
    handle: String,
    bytes: u64,
}

impl CallReport {
    /// With `--raw`: the body goes to stdout as is, nothing else.
    pub(crate) fn raw_body(&self) -> Option<&[u8]> {
        self.raw.then_some(&self.body)
    }
}

impl Report for CallReport {
    fn human(&self) -> String {
        let mut o = self.response_hex.clone();
        for b in &self.blobs {
            let _ = write!(o, "\nblob {} ({})", b.handle, fmt_bytes(b.bytes));
        }
        o
    }
}

/// Splits `NAME[@VERSION]` (version 1 by default).
pub(crate) fn parse_target(target: &str) -> Result<(String, u32), String> {
    match target.rsplit_once('@') {
        Some((name, v)) => {
            let v = v
                .parse::<u32>()
                .map_err(|_| format!("{target:?}: the version after @ must be a number"))?;
            Ok((name.to_owned(), v))
        }
        None => Ok((target.to_owned(), 1)),
    }
}

/// Decodes hex digits (spaces and a `0x` prefix allowed).
pub(crate) fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let s = s.strip_prefix("0x").unwrap_or(&s);
    if !s.len().is_multiple_of(2) {
        return Err("--raw-hex needs an even number of hex digits".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&s[i..i + 2], 16)
                .map_err(|_| format!("--raw-hex: {:?} is not a hex byte", &s[i..i + 2]))
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// What `cradle call` sends.
pub(crate) struct CallArgs {
    pub(crate) target: String,
    pub(crate) raw_hex: Option<String>,
    pub(crate) stdin: bool,
    pub(crate) timeout: f64,
    pub(crate) raw: bool,
}

/// The request body `a` names: `--raw-hex`, `--stdin`, or empty; and the
/// deadline, checked.
pub(crate) fn call_body(a: &CallArgs) -> Result<(Vec<u8>, Duration), String> {
    let body = match (&a.raw_hex, a.stdin) {
        (Some(h), false) => parse_hex(h)?,
        (None, true) => {
            let mut b = Vec::new();
            std::io::stdin()
                .read_to_end(&mut b)
                .map_err(|e| format!("reading stdin: {e}"))?;
            b
        }
        (None, false) => Vec::new(),
        (Some(_), true) => return Err("give --raw-hex or --stdin, not both".into()),
    };
    if !(a.timeout > 0.0 && a.timeout.is_finite()) {
        return Err("--timeout must be a positive number of seconds".into());
    }
    Ok((body, Duration::from_secs_f64(a.timeout)))
}

/// Calls a bytes method by name.
pub(crate) fn call(client: &Client, a: CallArgs) -> Result<CallReport, String> {
    let (name, version) = parse_target(&a.target)?;
    let (body, timeout) = call_body(&a)?;
    let opts = CallOptions {
        timeout,
        wait: WaitMode::default(),
    };
    let start = std::time::Instant::now();
    let (resp, blobs) = client
        .call_bytes_opts(&name, version, &body, &[], opts)
        .map_err(|e| format!("{name}@{version}: {e}"))?;
    let blobs = blobs
        .iter()
        .map(|b| BlobRow {
            handle: b.handle().to_string(),
            bytes: b.len() as u64,
        })
        .collect();
    Ok(call_report(name, version, resp, blobs, start, a.raw))
}

/// Calls a bytes method by name through the gateway (`--remote`): result
/// blobs come back as bytes and are named by their BLAKE3 digest.
pub(crate) fn call_remote(
    remote: &cradle_client::RemoteClient,
    a: CallArgs,
) -> Result<CallReport, String> {
    let (name, version) = parse_target(&a.target)?;
    let (body, _) = call_body(&a)?;
    let start = std::time::Instant::now();
    let (resp, blobs) = remote
        .call_bytes(&name, version, &body, &[])
        .map_err(|e| format!("{name}@{version}: {e}"))?;
    let blobs = blobs
        .iter()
        .map(|b| BlobRow {
            handle: format!("blake3:{}", cradle_client::ContentDigest::of(b).hex()),
            bytes: b.len() as u64,
        })
        .collect();
    Ok(call_report(name, version, resp, blobs, start, a.raw))
}

fn call_report(
    name: String,
    version: u32,
    resp: Vec<u8>,
    blobs: Vec<BlobRow>,
    start: std::time::Instant,
    raw: bool,
) -> CallReport {
    CallReport {
        name,
        version,
        response_hex: hex(&resp),
        response_bytes: resp.len(),
        blobs,
        seconds: start.elapsed().as_secs_f64(),
        raw,
        body: resp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_hex_parse() {
        assert_eq!(parse_target("a.b").unwrap(), ("a.b".into(), 1));
        assert_eq!(parse_target("a.b@3").unwrap(), ("a.b".into(), 3));
        assert!(parse_target("a.b@x").is_err());
        assert_eq!(parse_hex("0x01 ff").unwrap(), [1, 255]);
        assert!(parse_hex("abc").is_err());
        assert!(parse_hex("zz").is_err());
        assert_eq!(hex(&[0, 171]), "00ab");
    }
}
