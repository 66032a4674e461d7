//! The keys a reload cannot apply to a running process.

use crate::config::Config;

/// The keys a reload cannot apply to a running process, named when they changed: they take
/// effect at the next restart.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let (o, n) = (&old.server, &new.server);
    let checks = [
        ("[server] listen", o.listen != n.listen),
        ("[server] threads", o.threads != n.threads),
        (
            "[server] header-timeout",
            o.header_timeout != n.header_timeout,
        ),
        ("[server] grace-period", o.grace_period != n.grace_period),
        ("[server] h2c", o.h2c != n.h2c),
        (
            "[server] max-concurrent-streams",
            o.max_concurrent_streams != n.max_concurrent_streams,
        ),
        ("[[server.tls]]", o.tls != n.tls),
        ("[admin] listen", old.admin.listen != new.admin.listen),
        ("[log] level", old.log.level != new.log.level),
        ("[log] format", old.log.json != new.log.json),
    ];
    checks
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
}

pub(super) fn warn_on_restart_only_changes(old: &Config, new: &Config) -> Option<String> {
    let changed = restart_only_changes(old, new);
    if changed.is_empty() {
        return None;
    }
    let message = format!(
        "changed in the config but applied only at the next restart: {}",
        changed.join(", ")
    );
    tracing::warn!("{message}");
    Some(message)
}
