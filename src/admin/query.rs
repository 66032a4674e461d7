//! The query strings of the admin API's reads: `GET /status?series=`, `GET /history?route=&limit=`,
//! `GET /inventory?limit=`, `POST /routes/{id}/replay?to=`. Anything else is a 400 that says what is accepted.

use super::clip;

/// `?route=ID&limit=N` of `GET /history` (every route, the newest 100 entries by default).
pub(super) fn history_query(query: Option<&str>) -> Result<(Option<String>, usize), String> {
    let (mut route, mut limit) = (None, 100);
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*key {
            "route" => route = Some(value.into_owned()),
            "limit" => limit = parse_limit(&value, crate::history::KEEP)?,
            other => {
                return Err(format!(
                    "unknown parameter `{}`; `GET /history` takes `route=ID` and `limit=N`",
                    clip(other)
                ))
            }
        }
    }
    Ok((route, limit))
}

/// `?limit=N` of `GET /inventory` (1 to `MAX_TEMPLATES` rows).
pub(super) fn limit_query(query: Option<&str>, default: usize) -> Result<usize, String> {
    let mut limit = default;
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if key != "limit" {
            return Err(format!(
                "unknown parameter `{}`; `GET /inventory` takes `limit=N`",
                clip(&key)
            ));
        }
        limit = parse_limit(&value, crate::inventory::MAX_TEMPLATES)?;
    }
    Ok(limit)
}

/// `?to=legacy|new` of `POST /routes/{id}/replay`.
pub(super) fn replay_to(query: Option<&str>) -> Result<crate::split::Side, String> {
    let mut to = None;
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        to = match (&*key, &*value) {
            ("to", "new") => Some(crate::split::Side::New),
            ("to", "legacy") => Some(crate::split::Side::Legacy),
            _ => {
                return Err(format!(
                    "`{}={}` is not `to=legacy` or `to=new`",
                    clip(&key),
                    clip(&value)
                ))
            }
        };
    }
    to.ok_or_else(|| "say which side: `?to=legacy` or `?to=new`".to_string())
}

/// A `limit=N` value: 1 to `max`.
fn parse_limit(value: &str, max: usize) -> Result<usize, String> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| format!("`limit` is a number from 1 to {max}"))
}

/// `?series=RANGE` of `GET /status`: how far back the time series reach (`None`: no series).
pub(super) fn series_range(query: Option<&str>) -> Result<Option<std::time::Duration>, String> {
    let longest = crate::stats::series::TIERS
        .iter()
        .map(|t| t.keep)
        .max()
        .unwrap_or_default();
    let mut range = None;
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if key != "series" {
            return Err(format!(
                "unknown parameter `{}`; `GET /status` takes `series=RANGE` (e.g. `1h`)",
                clip(&key)
            ));
        }
        if range.is_some() {
            return Err("`series` given twice".into());
        }
        let d = humantime::parse_duration(&value).map_err(|e| {
            format!(
                "bad `series` range `{}`: {e}; e.g. `15m`, `1h`, `7d`",
                clip(&value)
            )
        })?;
        if d < std::time::Duration::from_secs(1) || d > longest {
            return Err(format!(
                "`series` range `{}` is not between 1s and {}",
                clip(&value),
                humantime::format_duration(longest)
            ));
        }
        range = Some(d);
    }
    Ok(range)
}
