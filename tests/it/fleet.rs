//! A fleet's rollout: two strangle instances share one config from a ConfigMap and run one
//! rollout. There is no Kubernetes cluster on this machine, so the API server is a stand-in
//! that serves the two kinds of objects the fleet uses, a `coordination.k8s.io/v1` Lease and a
//! `v1` ConfigMap, as the API server does: a bearer token, `resourceVersion` on every object and
//! 409 Conflict for a write based on an older one, 404 for a Lease not made yet. A kubelet
//! stand-in copies the ConfigMap's data into each instance's mounted file when it changes.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, Response};
use serde_json::{json, Value};

use crate::support::*;

const SA_TOKEN: &str = "fleet-service-account-token";
const ADMIN_TOKEN: &str = "fleet-admin-token";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/shop/leases/strangle-rollout";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/shop/leases";
const CONFIGMAP: &str = "/api/v1/namespaces/shop/configmaps/strangle";

#[derive(Default)]
struct Store {
    version: u64,
    lease: Option<Value>,
    configmap: Value,
    /// Where the kubelet stand-in puts the ConfigMap's `strangle.toml`.
    mounts: Vec<PathBuf>,
    /// Each shift the ConfigMap was written with, in order.
    shifts: Vec<String>,
    conflicts: u64,
    /// Writes of the ConfigMap to answer 409 before taking one (another writer came first).
    interfere: u64,
}

struct ApiServer {
    port: u16,
    store: Arc<Mutex<Store>>,
}

impl ApiServer {
    fn start(config: &str, mounts: Vec<PathBuf>) -> ApiServer {
        let store = Arc::new(Mutex::new(Store {
            version: 1,
            configmap: json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "strangle", "namespace": "shop", "resourceVersion": "1"},
                "data": {"strangle.toml": config},
            }),
            mounts,
            ..Store::default()
        }));
        let shared = Arc::clone(&store);
        let port = serve_http(move |req| {
            let store = Arc::clone(&shared);
            async move { answer(req, &store).await }
        });
        ApiServer { port, store }
    }

    fn lease(&self) -> Option<Value> {
        self.store.lock().unwrap().lease.clone()
    }

    fn config(&self) -> String {
        let store = self.store.lock().unwrap();
        store.configmap["data"]["strangle.toml"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

fn reply(status: u16, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn status(code: u16, reason: &str, message: &str) -> Response<Full<Bytes>> {
    reply(
        code,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "message": message, "code": code}),
    )
}

/// Stores `object` if it carries the current `resourceVersion`, with a new one.
fn write(store: &mut Store, current: &mut Value, mut object: Value) -> Response<Full<Bytes>> {
    let have = current["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("")
        .to_string();
    if object["metadata"]["resourceVersion"].as_str() != Some(have.as_str()) {
        store.conflicts += 1;
        return status(409, "Conflict", "the object has been modified; please apply your changes to the latest version and try again");
    }
    store.version += 1;
    object["metadata"]["resourceVersion"] = json!(store.version.to_string());
    *current = object.clone();
    reply(200, object)
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    store: &Mutex<Store>,
) -> Response<Full<Bytes>> {
    let authorized = req
        .headers()
        .get("authorization")
        .is_some_and(|v| v.as_bytes() == format!("Bearer {SA_TOKEN}").as_bytes());
    if !authorized {
        return status(401, "Unauthorized", "Unauthorized");
    }
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut s = store.lock().unwrap();
    let s = &mut *s;
    match (method.as_str(), path.as_str()) {
        ("GET", LEASE) => match &s.lease {
            Some(l) => reply(200, l.clone()),
            None => status(
                404,
                "NotFound",
                "leases.coordination.k8s.io \"strangle-rollout\" not found",
            ),
        },
        ("POST", LEASES) => {
            if s.lease.is_some() {
                return status(409, "AlreadyExists", "already exists");
            }
            s.version += 1;
            let mut lease = body;
            lease["metadata"]["resourceVersion"] = json!(s.version.to_string());
            s.lease = Some(lease.clone());
            reply(201, lease)
        }
        ("PUT", LEASE) => {
            let mut current = s.lease.clone().unwrap_or(Value::Null);
            let r = write(s, &mut current, body);
            s.lease = Some(current);
            r
        }
        ("GET", CONFIGMAP) => reply(200, s.configmap.clone()),
        ("PUT", CONFIGMAP) => {
            if s.interfere > 0 {
                // Another writer: the ConfigMap moves on before this write lands.
                s.interfere -= 1;
                s.version += 1;
                s.configmap["metadata"]["resourceVersion"] = json!(s.version.to_string());
            }
            let mut current = s.configmap.clone();
            let r = write(s, &mut current, body);
            if r.status() == 200 {
                s.configmap = current;
                let text = s.configmap["data"]["strangle.toml"]
                    .as_str()
                    .unwrap()
                    .to_string();
                let parsed: toml::Value = toml::from_str(&text).unwrap();
                s.shifts
                    .push(parsed["routes"][0]["shift"].as_str().unwrap().to_string());
                // The kubelet stand-in: every replica's mounted file gets the new data.
                for mount in &s.mounts {
                    write_atomically(mount, &text);
                }
            }
            r
        }
        _ => status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ),
    }
}

struct Replica {
    proxy: Proxy,
}

/// One replica's pod: its directory (where the kubelet stand-in mounts the ConfigMap's file)
/// and its ports.
struct Pod {
    dir: tempfile::TempDir,
    port: u16,
    admin: u16,
}

impl Pod {
    fn mount(&self) -> PathBuf {
        self.dir.path().join("strangle.toml")
    }
}

/// Two pods and the service account token file they share (kept while its directory lives).
fn two_pods() -> ([Pod; 2], PathBuf, tempfile::TempDir) {
    let pod = || Pod {
        dir: tempfile::tempdir().unwrap(),
        port: free_port(),
        admin: free_port(),
    };
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("token");
    std::fs::write(&token_file, format!("{SA_TOKEN}\n")).unwrap();
    ([pod(), pod()], token_file, token_dir)
}

fn replica(name: &str, text: &str, pod: Pod) -> Replica {
    let Pod { dir, port, admin } = pod;
    let config = dir.path().join("strangle.toml");
    std::fs::write(&config, text).unwrap();
    let (port_s, admin_s) = (port.to_string(), admin.to_string());
    let env = [
        ("PORT", port_s.as_str()),
        ("ADMIN_PORT", admin_s.as_str()),
        ("POD_NAME", name),
    ];
    Replica {
        proxy: Proxy::start_at_with_env(dir, config, port, admin, &env),
    }
}

fn status_of(r: &Replica) -> Value {
    let resp = Client::connect(r.proxy.admin_port)
        .request(
            "GET",
            "/status",
            &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
            b"",
        )
        .unwrap();
    serde_json::from_slice(&resp.body).unwrap()
}

#[test]
fn two_replicas_follow_one_leader_through_every_step_and_the_other_takes_over() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let (pods, token_file, _token_dir) = two_pods();
    let (a1, a2) = (pods[0].admin, pods[1].admin);
    let mounts: Vec<PathBuf> = pods.iter().map(Pod::mount).collect();
    let text = |api: u16| {
        format!(
            r#"
[server]
listen = ["127.0.0.1:${{env:PORT}}"]

[admin]
listen = "127.0.0.1:${{env:ADMIN_PORT}}"
token = "{ADMIN_TOKEN}"

[admin.fleet]
configmap = "shop/strangle"
key = "strangle.toml"
lease = "shop/strangle-rollout"
peers = ["127.0.0.1:{a1}", "127.0.0.1:{a2}"]
identity = "${{env:POD_NAME}}"
api = "http://127.0.0.1:{api}"
token-file = "{token}"
lease-duration = "3s"

[log]
access = "access.log"

[upstreams.legacy]
addresses = ["{legacy}"]

[upstreams.new]
addresses = ["{new}"]

[[routes]]
id = "flights"
path = "/flights"
legacy = "legacy"
new = "new"
shift = "0%"   # moved by the fleet's rollout
sticky = "none"
rollout = {{ steps = ["10%", "50%", "100%"], interval = "2s", min-requests = 30, max-error-rate = "5%" }}
"#,
            token = token_file.display(),
            legacy = legacy.addr(),
            new = new.addr(),
        )
    };
    // The stand-in is started first on its own port; the config names it.
    let api = ApiServer::start("", mounts.clone());
    let config = text(api.port);
    api.store.lock().unwrap().configmap["data"]["strangle.toml"] = json!(config);
    let [pa, pb] = pods;
    let (p1, p2) = (pa.port, pb.port);
    let a = replica("strangle-a", &config, pa);
    let b = replica("strangle-b", &config, pb);
    let (_ta, _tb) = (Traffic::start(p1), Traffic::start(p2));
    let done = |r: &Replica| {
        let s = status_of(r);
        let ro = &s["routes"][0]["rollout"];
        ro["phase"] == "done" && s["routes"][0]["shift"] == "100%"
    };
    eventually(
        Duration::from_secs(60),
        "both replicas done at 100%",
        || done(&a) && done(&b),
    );
    // One leader, and both replicas say who it is.
    let lease = api.lease().unwrap();
    let holder = lease["spec"]["holderIdentity"]
        .as_str()
        .unwrap()
        .to_string();
    let (sa, sb) = (status_of(&a), status_of(&b));
    assert_eq!(sa["fleet"]["leader"], holder.as_str(), "{}", sa["fleet"]);
    assert_eq!(sb["fleet"]["leader"], holder.as_str(), "{}", sb["fleet"]);
    assert_ne!(
        sa["fleet"]["leading"], sb["fleet"]["leading"],
        "exactly one leads"
    );
    // Every step was written once, in order, into the ConfigMap, its comment kept.
    assert_eq!(api.store.lock().unwrap().shifts, ["10%", "50%", "100%"]);
    assert!(api
        .config()
        .contains(r#"shift = "100%"   # moved by the fleet's rollout"#));
    // The gates were judged on both replicas' traffic: each served the new side.
    for s in [&sa, &sb] {
        assert!(
            s["routes"][0]["sides"]["new"]["requests"].as_u64().unwrap() > 0,
            "{s}"
        );
    }
    // Each replica followed the steps by reloading the file the kubelet stand-in wrote.
    for r in [&a, &b] {
        let h: Value = serde_json::from_slice(
            &Client::connect(r.proxy.admin_port)
                .request("GET", "/history?route=flights", &[], b"")
                .unwrap()
                .body,
        )
        .unwrap();
        let shifts: Vec<&str> = h["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "shift")
            .map(|e| e["to"].as_str().unwrap())
            .collect();
        assert_eq!(shifts, ["0%", "10%", "50%", "100%"], "{h}");
    }
    // A follower refuses actions and names the leader.
    let follower = if holder == "strangle-a" { &b } else { &a };
    let refused = Client::connect(follower.proxy.admin_port)
        .request(
            "POST",
            "/routes/flights/rollout/pause",
            &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
            b"",
        )
        .unwrap();
    assert_eq!(refused.status, 409);
    assert!(
        refused.text().contains(&format!("the leader is {holder}")),
        "{}",
        refused.text()
    );
    // The leader dies: the other takes the Lease once it expires, and goes on from the state
    // the Lease kept (done, at 100%).
    let (mut leader, other) = if holder == "strangle-a" {
        (a, b)
    } else {
        (b, a)
    };
    leader.proxy.child.kill().unwrap();
    leader.proxy.child.wait().unwrap();
    eventually(Duration::from_secs(15), "the other replica leads", || {
        status_of(&other)["fleet"]["leading"] == true
    });
    let s = status_of(&other);
    assert_eq!(s["routes"][0]["rollout"]["phase"], "done", "{s}");
    let lease = api.lease().unwrap();
    assert_ne!(lease["spec"]["holderIdentity"], holder.as_str());
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
}

/// `PUT /routes/flights/shift` with `body` on the admin API at `port`.
fn put_shift(port: u16, body: &[u8]) -> Resp {
    Client::connect(port)
        .request(
            "PUT",
            "/routes/flights/shift",
            &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
            body,
        )
        .unwrap()
}

/// `strangle shift` on one replica of a fleet whose config comes from a ConfigMap: the shift is
/// written into the ConfigMap (through the stand-in API server, which enforces
/// `resourceVersion`; a conflict is read again and retried), and both replicas get it from
/// their mounted file. Without a cluster here, the API server and the kubelet are stand-ins.
#[test]
fn one_shift_reaches_every_replica_through_the_configmap_with_a_conflict_retried() {
    let legacy = Backend::start("legacy");
    let (pods, token_file, _token_dir) = two_pods();
    let (a1, a2) = (pods[0].admin, pods[1].admin);
    let mounts: Vec<PathBuf> = pods.iter().map(Pod::mount).collect();
    let api = ApiServer::start("", mounts.clone());
    let config = format!(
        r#"
[server]
listen = ["127.0.0.1:${{env:PORT}}"]

[admin]
listen = "127.0.0.1:${{env:ADMIN_PORT}}"
token = "{ADMIN_TOKEN}"
kubernetes-configmap = "shop/strangle"
kubernetes-api = "http://127.0.0.1:{api}"
kubernetes-token-file = "{token}"

[upstreams.legacy]
addresses = ["{legacy}"]

[[routes]]
id = "flights"
path = "/flights"
legacy = "legacy"
new = "legacy"
shift = "0%"   # the fleet's shift
"#,
        api = api.port,
        token = token_file.display(),
        legacy = legacy.addr(),
    );
    api.store.lock().unwrap().configmap["data"]["strangle.toml"] = json!(config);
    let [pa, pb] = pods;
    let a = replica("strangle-a", &config, pa);
    let b = replica("strangle-b", &config, pb);
    // One conflict: the first write is based on a ConfigMap another writer just changed.
    api.store.lock().unwrap().interfere = 1;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strangle"))
        .args(["shift", "/flights", "25%", "--admin"])
        .arg(format!("http://127.0.0.1:{a1}"))
        .args(["--token", ADMIN_TOKEN])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("0% -> 25%") && said.contains("ConfigMap shop/strangle"),
        "{said}"
    );
    {
        let store = api.store.lock().unwrap();
        assert_eq!(store.conflicts, 1, "the conflict was met");
        assert_eq!(store.shifts, ["25%"], "and retried once, written once");
    }
    assert!(api
        .config()
        .contains(r#"shift = "25%"   # the fleet's shift"#));
    for r in [&a, &b] {
        eventually(Duration::from_secs(10), "the replica has 25%", || {
            status_of(r)["routes"][0]["shift"] == "25%"
        });
    }
    // Decided on a stale view (the ConfigMap's shift is 25% now): refused, nothing written.
    let stale = put_shift(a2, br#"{"percent": 50, "from": "10%"}"#);
    assert_eq!(stale.status, 409, "{}", stale.text());
    // The ConfigMap changed by every write: after three conflicts it says so (409).
    api.store.lock().unwrap().interfere = 3;
    let busy = put_shift(a2, br#"{"percent": 50}"#);
    assert_eq!(busy.status, 409, "{}", busy.text());
    assert!(busy.text().contains("409 three times"), "{}", busy.text());
    assert_eq!(api.store.lock().unwrap().shifts, ["25%"]);
    // The API server refusing the account: 502, never a local edit the fleet would not see.
    std::fs::write(&token_file, "wrong\n").unwrap();
    let refused = put_shift(a1, br#"{"percent": 50}"#);
    assert_eq!(refused.status, 502, "{}", refused.text());
    assert!(!std::fs::read_to_string(&mounts[0]).unwrap().contains("50%"));
}
