//! Client commands: `strangle shift` and `strangle status` talk to the admin API; `shift --file`
//! edits a config file offline.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::split::Shift;

mod migrate;
use crate::status::{render, Paint, Status};
pub use migrate::{render_rollout, replay, rollout};

/// Where the admin API is and how to authenticate to it.
#[derive(Debug, Clone)]
pub struct AdminTarget {
    pub url: String,
    pub token: Option<String>,
}

/// One request to the admin API; returns the status and the JSON body.
pub async fn call(
    target: &AdminTarget,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<(StatusCode, serde_json::Value)> {
    let uri: http::Uri = format!("{}{}", target.url.trim_end_matches('/'), path)
        .parse()
        .with_context(|| format!("bad admin URL `{}`", target.url))?;
    if uri.scheme_str() != Some("http") {
        bail!(
            "the admin URL must be http://HOST:PORT, not `{}`",
            target.url
        );
    }
    let host = uri
        .host()
        .ok_or_else(|| anyhow!("no host in the admin URL `{}`", target.url))?;
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect((host, port)))
        .await
        .map_err(|_| anyhow!("timed out connecting to the admin API at {}", target.url))?
        .with_context(|| format!("cannot reach the admin API at {} (is `strangle serve` running? set --admin or STRANGLE_ADMIN)", target.url))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(header::HOST, format!("{host}:{port}"))
        // The history records a change as made by the CLI.
        .header(
            header::USER_AGENT,
            concat!("strangle/", env!("CARGO_PKG_VERSION")),
        );
    if let Some(token) = &target.token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = match body {
        Some(v) => {
            req = req.header(header::CONTENT_TYPE, "application/json");
            Bytes::from(serde_json::to_vec(&v)?)
        }
        None => Bytes::new(),
    };
    let resp = tokio::time::timeout(
        Duration::from_secs(30),
        sender.send_request(req.body(Full::new(body))?),
    )
    .await
    .map_err(|_| anyhow!("the admin API did not answer within 30 s"))??;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let value = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
        })
    };
    Ok((status, value))
}

fn api_error(status: StatusCode, body: &serde_json::Value) -> anyhow::Error {
    let message = body
        .get("error")
        .and_then(|e| e.as_str())
        .map_or_else(|| body.to_string(), str::to_string);
    anyhow!("{message} (HTTP {})", status.as_u16())
}

pub async fn fetch_status(target: &AdminTarget) -> anyhow::Result<Status> {
    let (status, body) = call(target, Method::GET, "/status", None).await?;
    if !status.is_success() {
        return Err(api_error(status, &body));
    }
    serde_json::from_value(body).context("unexpected /status document")
}

/// Parses PERCENT, or says which forms are accepted.
pub fn parse_percent(text: &str) -> anyhow::Result<Shift> {
    Shift::parse(text).map_err(|e| anyhow!("{e}"))
}

/// `strangle shift ROUTE PERCENT` through the admin API. ROUTE is a route id or path.
pub async fn shift(target: &AdminTarget, route: &str, percent: &str) -> anyhow::Result<String> {
    let shift = parse_percent(percent)?;
    let status = fetch_status(target).await?;
    let id = resolve_route(&status, route)?;
    let (code, body) = call(
        target,
        Method::PUT,
        &format!("/routes/{id}/shift"),
        Some(serde_json::json!({ "percent": shift.to_string() })),
    )
    .await?;
    if !code.is_success() {
        return Err(api_error(code, &body));
    }
    Ok(format!(
        "{id}: {} -> {} (saved to {})",
        body.get("from").and_then(|v| v.as_str()).unwrap_or("?"),
        body.get("to").and_then(|v| v.as_str()).unwrap_or("?"),
        body.get("file").and_then(|v| v.as_str()).unwrap_or("?"),
    ))
}

fn resolve_route(status: &Status, route: &str) -> anyhow::Result<String> {
    let found = status
        .routes
        .iter()
        .find(|r| r.id == route)
        .or_else(|| status.routes.iter().find(|r| r.path == route));
    match found {
        Some(r) => Ok(r.id.clone()),
        None => {
            let known: Vec<String> = status
                .routes
                .iter()
                .map(|r| format!("{} ({})", r.id, r.path))
                .collect();
            bail!(
                "no route `{route}`; known routes: {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )
        }
    }
}

/// `strangle shift --file FILE ROUTE PERCENT`: edits the file without a running proxy.
pub fn shift_file(file: &Path, route: &str, percent: &str) -> anyhow::Result<String> {
    let shift = parse_percent(percent)?;
    let config = crate::config::load_to_edit(file).map_err(|e| anyhow!("{e}"))?;
    let id = config
        .routes
        .iter()
        .find(|r| r.id == route)
        .or_else(|| config.routes.iter().find(|r| r.path == route))
        .map(|r| r.id.clone())
        .ok_or_else(|| {
            let known: Vec<String> = config
                .routes
                .iter()
                .map(|r| format!("{} ({})", r.id, r.path))
                .collect();
            anyhow!(
                "no route `{route}` in {}; known routes: {}",
                file.display(),
                known.join(", ")
            )
        })?;
    let old = crate::edit::set_shift_in_file(file, &id, shift)?;
    let mut said = format!("{id}: {old} -> {shift} (saved to {})", file.display());
    if let Some(k) = &config.admin.kubernetes {
        // This file is one replica's copy: the fleet's shift is in the ConfigMap.
        said.push_str(&format!(
            "\nnote: this config's shifts live in the ConfigMap {}/{}; this edit is this file's only, and the next ConfigMap update replaces it (run `strangle shift` against a replica's admin API for the fleet)",
            k.configmap.0, k.configmap.1
        ));
    }
    Ok(said)
}

/// `strangle status`: prints the table (or JSON), once or every `interval`.
pub async fn status(
    target: &AdminTarget,
    json: bool,
    watch: Option<Duration>,
) -> anyhow::Result<()> {
    let terminal = std::io::stdout().is_terminal();
    let paint = Paint {
        on: terminal && std::env::var_os("NO_COLOR").is_none(),
    };
    loop {
        let s = fetch_status(target).await?;
        let text = if json {
            serde_json::to_string_pretty(&s)? + "\n"
        } else {
            render(&s, &paint)
        };
        match watch {
            None => {
                print!("{text}");
                return Ok(());
            }
            Some(every) => {
                if terminal {
                    // Home the cursor and clear the screen: the table refreshes in place.
                    print!("\x1b[H\x1b[2J{text}");
                } else {
                    println!("{text}");
                }
                use std::io::Write;
                let _ = std::io::stdout().flush();
                tokio::time::sleep(every).await;
            }
        }
    }
}

/// `GET path` of the admin API: printed as JSON when `json` (then `None`), else returned.
async fn read_or_print(
    target: &AdminTarget,
    path: &str,
    json: bool,
) -> anyhow::Result<Option<serde_json::Value>> {
    let (code, body) = call(target, Method::GET, path, None).await?;
    if !code.is_success() {
        return Err(api_error(code, &body));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(None);
    }
    Ok(Some(body))
}

/// `strangle history [ROUTE]`: the shifts and reloads the proxy recorded, one per line.
pub async fn history(
    target: &AdminTarget,
    route: Option<&str>,
    limit: usize,
    json: bool,
) -> anyhow::Result<()> {
    let id = match route {
        Some(r) => Some(resolve_route(&fetch_status(target).await?, r)?),
        None => None,
    };
    let mut query: form_urlencoded::Serializer<'_, String> =
        form_urlencoded::Serializer::new(String::new());
    query.append_pair("limit", &limit.clamp(1, crate::history::KEEP).to_string());
    if let Some(id) = &id {
        query.append_pair("route", id);
    }
    let Some(body) = read_or_print(target, &format!("/history?{}", query.finish()), json).await?
    else {
        return Ok(());
    };
    let entries: Vec<crate::history::Entry> =
        serde_json::from_value(body["entries"].clone()).context("unexpected /history document")?;
    if entries.is_empty() {
        println!("no history yet ({})", body["file"].as_str().unwrap_or("?"));
    }
    for e in &entries {
        println!("{}", history_line(e));
    }
    Ok(())
}

/// One history entry as a line: when, what, how.
pub fn history_line(e: &crate::history::Entry) -> String {
    use crate::history::{How, What};
    let what = match &e.what {
        What::Shift { route, from, to } => match from {
            Some(from) => format!("shift  {route}: {from} -> {to}"),
            None => format!("shift  {route}: {to}"),
        },
        What::Rollout {
            route,
            event,
            reason,
        } => format!("rollout {route}: {event}: {reason}"),
        What::Reload { ok: true, .. } => "reload applied".to_string(),
        What::Reload { error, .. } => format!(
            "reload refused: {}",
            error
                .as_deref()
                .unwrap_or("?")
                .lines()
                .next()
                .unwrap_or("?")
        ),
    };
    let how = match e.how {
        How::File => "file edit",
        How::Signal => "SIGHUP",
        How::Admin => "admin API",
        How::Cli => "strangle CLI",
        How::Start => "found at start",
        How::Rollout => "rollout",
    };
    let client = e
        .client
        .as_deref()
        .map(|c| format!(" from {c}"))
        .unwrap_or_default();
    printable(&format!("{}  {what}  ({how}{client})", e.at))
}

/// `strangle inventory`: the templates the monolith still serves, largest first.
pub async fn inventory(target: &AdminTarget, limit: usize, json: bool) -> anyhow::Result<()> {
    let limit = limit.clamp(1, crate::inventory::MAX_TEMPLATES);
    let Some(body) = read_or_print(target, &format!("/inventory?limit={limit}"), json).await?
    else {
        return Ok(());
    };
    let report: crate::inventory::report::Report =
        serde_json::from_value(body).context("unexpected /inventory document")?;
    print!("{}", render_inventory(&report));
    Ok(())
}

/// `strangle diffs ROUTE`: the route's shadow results and its last mismatches, each with the
/// paths that differed.
pub async fn diffs(target: &AdminTarget, route: &str, json: bool) -> anyhow::Result<()> {
    let id = resolve_route(&fetch_status(target).await?, route)?;
    let path = format!(
        "/routes/{}/diffs",
        form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>()
    );
    let Some(body) = read_or_print(target, &path, json).await? else {
        return Ok(());
    };
    let shadow: crate::shadow::ShadowStatus =
        serde_json::from_value(body["shadow"].clone()).context("unexpected diffs document")?;
    println!(
        "route {}: {} of requests shadowed; {} compared, {} mismatched ({:.1}%), {} dropped, {} failed",
        printable(&id),
        shadow.percent,
        shadow.matched + shadow.mismatched,
        shadow.mismatched,
        shadow.mismatch_rate * 100.0,
        shadow.dropped,
        shadow.errors
    );
    if !shadow.learned.is_empty() {
        println!(
            "noise learned by calibration: {}",
            printable(&shadow.learned.join(", "))
        );
    }
    let samples = body["samples"].as_array().cloned().unwrap_or_default();
    if samples.is_empty() {
        println!("no mismatch seen");
    }
    for s in &samples {
        let text = |k: &str| printable(s[k].as_str().unwrap_or("?"));
        println!(
            "\n{}  {} {}  (client got {}; legacy {}, new {}; body by {})",
            text("at"),
            text("method"),
            text("path"),
            text("answered_by"),
            s["legacy"]["status"],
            s["new"]["status"],
            text("body")
        );
        for d in s["differences"].as_array().into_iter().flatten() {
            let v = |k: &str| printable(d[k].as_str().unwrap_or("?"));
            println!(
                "    {}: legacy {}  new {}",
                v("path"),
                v("legacy"),
                v("new")
            );
        }
        let (count, shown) = (
            s["count"].as_u64().unwrap_or(0),
            s["differences"].as_array().map_or(0, Vec::len),
        );
        if count > shown as u64 {
            println!("    ... {} more", count - shown as u64);
        }
    }
    Ok(())
}

/// `text` with control characters (a terminal's escape sequences) shown as `?`: what the
/// inventory and the history print can come from files on disk.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The inventory as text: a line per template, its route entry below it.
pub fn render_inventory(r: &crate::inventory::report::Report) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "{} requests the monolith served, in {} templates{}\n",
        r.requests,
        r.templates,
        if r.templates >= r.max_templates {
            " (the most kept: newer ones count as `other`)"
        } else {
            ""
        }
    );
    for row in &r.rows {
        let source = if row.source == crate::stats::DEFAULT_ROUTE {
            "unmatched".to_string()
        } else {
            format!("route {}", printable(&row.source))
        };
        let p99 = row.p99_ms.map_or("-".to_string(), |p| format!("{p:.1} ms"));
        let _ = writeln!(
            out,
            "\n{:>5.1}%  {} requests  {}  errors {:.1}%  p99 {p99}  {}  ({source})",
            row.share * 100.0,
            row.requests,
            row.methods.join(","),
            row.error_rate * 100.0,
            printable(&row.template),
        );
        match &row.route {
            Some(entry) => {
                for line in entry.lines() {
                    let _ = writeln!(out, "    {}", printable(line));
                }
            }
            None if row.template == crate::inventory::OTHER => {
                out.push_str("    (templates past the most the inventory keeps)\n")
            }
            None => out.push_str("    (no route more specific than the one it takes)\n"),
        }
    }
    out
}
