//! The client commands that act on a migration under way: `strangle rollout` (a progressive
//! rollout's state and actions) and `strangle replay` (captured requests sent again).

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use http::Method;

use super::{api_error, call, fetch_status, printable, resolve_route, AdminTarget};

/// `strangle rollout ROUTE status|pause|resume|promote|abort`: prints the rollout's state
/// (after the action, for the others).
pub async fn rollout(
    target: &AdminTarget,
    route: &str,
    action: &str,
    json: bool,
) -> anyhow::Result<()> {
    let status = fetch_status(target).await?;
    let id = resolve_route(&status, route)?;
    let state = if action == "status" {
        let r = status.routes.iter().find(|r| r.id == id);
        r.and_then(|r| r.rollout.clone()).ok_or_else(|| {
            anyhow!("route `{id}` has no rollout; add a [routes.rollout] table to its config")
        })?
    } else {
        if crate::rollout::Action::parse(action).is_none() {
            bail!("unknown rollout action `{action}`; use status, pause, resume, promote or abort");
        }
        let path = format!(
            "/routes/{}/rollout/{action}",
            form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>()
        );
        let (code, body) = call(target, Method::POST, &path, None).await?;
        if !code.is_success() {
            return Err(api_error(code, &body));
        }
        serde_json::from_value(body["rollout"].clone()).context("unexpected rollout document")?
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&state)?);
    } else {
        print!("{}", render_rollout(&id, &state));
    }
    Ok(())
}

/// `strangle replay FILE --to legacy|new [--rate N] [--header "NAME: VALUE"]...`: sends every
/// request kept in a capture spool again, through the proxy's admin API, at most `rate` a
/// second, and prints how each went. Headers given replace the record's (a kept `authorization`
/// is redacted: give a fresh one). Fails (exit 1) when any request could not be sent or got a
/// 5xx.
pub async fn replay(
    target: &AdminTarget,
    file: &Path,
    to: &str,
    rate: Option<f64>,
    extra: &[String],
) -> anyhow::Result<()> {
    use std::io::BufRead as _;
    if to != "legacy" && to != "new" {
        bail!("--to is `legacy` or `new`, not `{to}`");
    }
    let mut added = Vec::new();
    for h in extra {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| anyhow!("--header is `NAME: VALUE`, not `{h}`"))?;
        added.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let every = rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(1.0 / r));
    let reader = std::io::BufReader::new(
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?,
    );
    let (mut sent, mut failed) = (0usize, 0usize);
    for (n, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", file.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let mut record: crate::capture::Record = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                println!("{:>4}  not a capture record: {e}", n + 1);
                failed += 1;
                continue;
            }
        };
        let headers = &mut record.request.headers;
        headers.retain(|(name, _)| !added.iter().any(|(a, _)| name.eq_ignore_ascii_case(a)));
        headers.extend(added.iter().cloned());
        if sent > 0 {
            if let Some(every) = every {
                tokio::time::sleep(every).await;
            }
        }
        sent += 1;
        let path = format!(
            "/routes/{}/replay?to={to}",
            form_urlencoded::byte_serialize(record.route.as_bytes()).collect::<String>()
        );
        let was = record.response.as_ref().map_or_else(
            || record.error.clone().unwrap_or_else(|| "-".into()),
            |r| r.status.to_string(),
        );
        let what = format!(
            "{:>4}  {} {}{}",
            n + 1,
            printable(&record.request.method),
            printable(&record.request.path),
            printable(&record.request.query)
        );
        let body = serde_json::to_value(&record)?;
        let (code, answer) = call(target, Method::POST, &path, Some(body)).await?;
        let outcome = if !code.is_success() {
            failed += 1;
            format!("refused: {}", api_error(code, &answer))
        } else if let Some(e) = answer["error"].as_str() {
            failed += 1;
            format!("failed: {}", printable(e))
        } else {
            let status = answer["status"].as_u64().unwrap_or(0);
            if status >= 500 {
                failed += 1;
            }
            format!("{status}")
        };
        println!(
            "{what}  -> {to}: {outcome}  (was {}: {})",
            printable(&record.event),
            printable(&was)
        );
    }
    println!("{sent} replayed to {to}, {failed} failed");
    if failed > 0 {
        bail!("{failed} of the replayed requests failed");
    }
    Ok(())
}

/// A rollout's state as text: where it is, the gates, and why it last moved.
pub fn render_rollout(id: &str, r: &crate::rollout::RolloutStatus) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "rollout {}: {} at {} (step {} of {}: {})\n",
        printable(id),
        r.phase,
        r.shift,
        r.step,
        r.steps.len(),
        r.steps.join(" -> ")
    );
    let _ = writeln!(
        out,
        "step began {} ({} s ago; each step lasts at least {} s and needs {} new-side requests){}",
        r.step_started,
        r.in_step_seconds,
        r.interval_seconds,
        r.min_requests,
        r.next
            .as_ref()
            .map_or(String::new(), |n| format!("; next {n}"))
    );
    for g in &r.gates {
        let verdict = match g.verdict {
            crate::rollout::Verdict::Hold => "holds",
            crate::rollout::Verdict::Fail => "FAILS",
            crate::rollout::Verdict::Pending => "pending",
        };
        let _ = writeln!(
            out,
            "  {:<32} {verdict:<8} {} (limit {}, on {})",
            g.gate, g.value, g.limit, g.over
        );
    }
    if let Some(reason) = &r.reason {
        let _ = writeln!(out, "last: {}", printable(reason));
    }
    out
}
