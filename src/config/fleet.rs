//! Lowering `[admin.fleet]`: several replicas run one progressive rollout. One of them leads
//! (it holds a Kubernetes Lease), sums every replica's counters and writes each step into the
//! ConfigMap all of them load their config from.

use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::raw::RawFleet;
use super::Cx;

/// The validated `[admin.fleet]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fleet {
    /// `(namespace, name)` of the ConfigMap the replicas' config comes from.
    pub configmap: (String, String),
    /// The ConfigMap key that holds the config (`None`: the config file's name).
    pub key: Option<String>,
    /// `(namespace, name)` of the Lease the leader holds.
    pub lease: (String, String),
    /// Every replica's admin API (`HOST:PORT`; a name resolves to every replica).
    pub peers: Vec<String>,
    /// This replica's name in the Lease (`None`: `$POD_NAME`, else the host name).
    pub identity: Option<String>,
    /// The API server (`None`: in-cluster, from `$KUBERNETES_SERVICE_HOST`/`_PORT`).
    pub api: Option<String>,
    pub token_file: PathBuf,
    pub ca_file: PathBuf,
    pub lease_duration: Duration,
}

/// Where shifts are written when the replicas' config comes from a ConfigMap (`[admin]
/// kubernetes-configmap`, or `[admin.fleet]`'s): one shift for the whole fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct ShiftTarget {
    /// `(namespace, name)`.
    pub configmap: (String, String),
    /// The key that holds the config (`None`: the config file's name).
    pub key: Option<String>,
    /// The API server (`None`: in-cluster).
    pub api: Option<String>,
    pub token_file: PathBuf,
    pub ca_file: PathBuf,
}

pub const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);

impl Cx<'_> {
    /// A Kubernetes object named `NAMESPACE/NAME`.
    fn k8s_object(&mut self, v: &Spanned<String>, what: &str) -> (String, String) {
        match v.get_ref().split_once('/') {
            Some((ns, name)) if dns_label(ns) && dns_name(name) => {
                (ns.to_string(), name.to_string())
            }
            _ => {
                let hint = Some(format!(
                    "write the {what} as `NAMESPACE/NAME`, like `shop/strangle`"
                ));
                self.err_at(v, format!("bad {what} `{}`", v.get_ref()), hint);
                (String::new(), String::new())
            }
        }
    }

    /// An API server URL.
    fn k8s_api(&mut self, a: &Spanned<String>, what: &str) -> String {
        let url = a.get_ref().trim_end_matches('/').to_string();
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            let hint = Some("like `https://kubernetes.default.svc`".into());
            self.err_at(a, format!("bad {what} `{url}`"), hint);
        }
        url
    }

    /// Where shifts go: `[admin] kubernetes-configmap` (the fleet's API server and account
    /// when there is a fleet, else in-cluster), or the fleet's ConfigMap.
    pub(super) fn shift_target(
        &mut self,
        raw: &super::raw::RawAdmin,
        fleet: Option<&Fleet>,
    ) -> Option<ShiftTarget> {
        let from_fleet = |f: &Fleet| ShiftTarget {
            configmap: f.configmap.clone(),
            key: f.key.clone(),
            api: f.api.clone(),
            token_file: f.token_file.clone(),
            ca_file: f.ca_file.clone(),
        };
        let Some(cm) = &raw.kubernetes_configmap else {
            for (key, given) in [
                ("kubernetes-api", &raw.kubernetes_api),
                ("kubernetes-token-file", &raw.kubernetes_token_file),
                ("kubernetes-ca-file", &raw.kubernetes_ca_file),
            ] {
                if let Some(v) = given {
                    let hint = Some("name the ConfigMap the replicas load their config from: `kubernetes-configmap = \"NAMESPACE/NAME\"`".into());
                    self.err_at(v, format!("`{key}` without `kubernetes-configmap`"), hint);
                }
            }
            return fleet.map(from_fleet);
        };
        let configmap = self.k8s_object(cm, "ConfigMap");
        if let Some(f) = fleet.filter(|f| f.configmap != configmap && !configmap.0.is_empty()) {
            let hint = Some(format!(
                "the fleet's rollout writes {}/{}: name the same ConfigMap, or leave `kubernetes-configmap` out",
                f.configmap.0, f.configmap.1
            ));
            self.err_at(
                cm,
                "`kubernetes-configmap` is not the fleet's ConfigMap",
                hint,
            );
        }
        let api = match &raw.kubernetes_api {
            Some(a) => Some(self.k8s_api(a, "`kubernetes-api`")),
            None => fleet.and_then(|f| f.api.clone()),
        };
        Some(ShiftTarget {
            configmap,
            key: fleet.and_then(|f| f.key.clone()),
            api,
            token_file: match (&raw.kubernetes_token_file, fleet) {
                (Some(p), _) => self.base.join(p.get_ref()),
                (None, Some(f)) => f.token_file.clone(),
                (None, None) => PathBuf::from(SERVICE_ACCOUNT).join("token"),
            },
            ca_file: match (&raw.kubernetes_ca_file, fleet) {
                (Some(p), _) => self.base.join(p.get_ref()),
                (None, Some(f)) => f.ca_file.clone(),
                (None, None) => PathBuf::from(SERVICE_ACCOUNT).join("ca.crt"),
            },
        })
    }

    pub(super) fn fleet(&mut self, raw: &Spanned<RawFleet>) -> Fleet {
        let raw = raw.get_ref();
        let configmap = self.k8s_object(&raw.configmap, "ConfigMap");
        let lease = self.k8s_object(&raw.lease, "Lease");
        let mut peers = Vec::new();
        for p in raw.peers.get_ref() {
            let text = p.get_ref().trim();
            let ok = text.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if ok {
                peers.push(text.to_string());
            } else {
                let hint = Some("write each replica's admin API as `HOST:PORT`; a headless Service's name resolves to every replica".into());
                self.err_at(p, format!("bad fleet peer `{text}`"), hint);
            }
        }
        if raw.peers.get_ref().is_empty() {
            let hint = Some("list the replicas' admin APIs, like [\"strangle-admin.shop.svc.cluster.local:9901\"]".into());
            self.err_at(&raw.peers, "fleet `peers` is empty", hint);
        }
        let api = raw.api.as_ref().map(|a| self.k8s_api(a, "fleet `api`"));
        let path = |v: &Option<Spanned<String>>, default: &str| {
            v.as_ref().map_or_else(
                || PathBuf::from(SERVICE_ACCOUNT).join(default),
                |p| self.base.join(p.get_ref()),
            )
        };
        let token_file = path(&raw.token_file, "token");
        let ca_file = path(&raw.ca_file, "ca.crt");
        let lease_duration = self.duration(
            &raw.lease_duration,
            "lease-duration",
            DEFAULT_LEASE_DURATION,
        );
        if let Some(d) = raw
            .lease_duration
            .as_ref()
            .filter(|_| lease_duration < Duration::from_secs(3))
        {
            self.err_at(d, "`lease-duration` must be at least 3s", None);
        }
        let key = raw.key.as_ref().map(|k| k.get_ref().clone());
        if let Some(k) = raw.key.as_ref().filter(|k| !config_key(k.get_ref())) {
            self.err_at(k, format!("bad ConfigMap key `{}`", k.get_ref()), None);
        }
        Fleet {
            configmap,
            key,
            lease,
            peers,
            identity: raw.identity.as_ref().map(|i| i.get_ref().clone()),
            api,
            token_file,
            ca_file,
            lease_duration,
        }
    }
}

/// An RFC 1123 label (a namespace).
fn dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// An RFC 1123 subdomain (an object name).
fn dns_name(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns_label)
}

/// A ConfigMap data key: `[-._a-zA-Z0-9]+`.
fn config_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}
