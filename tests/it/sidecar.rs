//! The sidecar layout (`deploy/kubernetes/sidecar`) run as a pod runs it, with no cluster here:
//! the kustomization is rendered with `kubectl kustomize`, and `tests/fixtures/sidecar_pod.py`
//! runs in new network and mount namespaces (`unshare --net --mount`: the pod's own loopback,
//! nothing else, and its own /etc/hosts for the new side's Service name) with
//! the monolith and strangle, using the container's arguments, ports, probes, preStop delay and
//! the ConfigMap's config as rendered (not copies of them). It checks routing to the monolith on
//! loopback, a ConfigMap update (the kubelet's `..data` swap) moving a route without a restart,
//! and a SIGTERM after the preStop delay that drains an in-flight request.

use std::process::Command;

use crate::support::*;

#[test]
fn the_sidecar_manifest_runs_as_a_pod_in_its_own_network_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let rendered = dir.path().join("sidecar.yaml");
    let out = Command::new("kubectl")
        .args([
            "kustomize",
            concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes/sidecar"),
        ])
        .output()
        .expect("kubectl (make check-deploy installs it)");
    assert!(out.status.success(), "{}", stderr_of(&out));
    std::fs::write(&rendered, &out.stdout).unwrap();
    let work = dir.path().join("pod");
    std::fs::create_dir(&work).unwrap();
    let out = Command::new("unshare")
        .args(["--net", "--mount", "--", "python3"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/sidecar_pod.py"
        ))
        .arg(&rendered)
        .arg(bin())
        .arg(&work)
        .output()
        .unwrap();
    let log = std::fs::read_to_string(work.join("strangle.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "{}\n{}\nstrangle:\n{log}",
        stdout_of(&out),
        stderr_of(&out)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout_of(&out).trim()).unwrap();
    assert_eq!(seen["ok"], true);
    // What was read from the manifest, not assumed.
    assert_eq!(seen["args"][0], "serve");
    assert_eq!(seen["probe"]["path"], "/ready");
    assert_eq!(seen["pre_stop"], 5);
    assert!(log.contains("reloaded"), "{log}");
}
