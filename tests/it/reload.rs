//! Hot reload: file watching (editor rename, ConfigMap symlink swap), SIGHUP, broken files,
//! and no failed request while the config churns.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;

fn side_of(port: u16) -> String {
    get(port, "/bookings", &[])
        .header("x-backend")
        .unwrap_or("?")
        .to_string()
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn no_request_fails_while_the_config_is_rewritten_every_200ms() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let proxy = Proxy::start(&split_config(&legacy, &new, "10%", "none"));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let port = proxy.port;
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
            std::thread::spawn(move || {
                let mut c = Client::connect(port);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    // Every 50th request on a fresh connection, as real clients come and go.
                    if i % 2 == 0 && n % 50 == 0 {
                        c = Client::connect(port);
                    }
                    let path = if n % 3 == 0 { "/other" } else { "/bookings/1" };
                    match c.get(path, &[]) {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        Ok(r) => {
                            eprintln!("status {} for {path}", r.status);
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(e) => {
                            eprintln!("error {e} for {path}");
                            c = Client::connect(port);
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();

    let start = Instant::now();
    let mut rewrites = 0;
    while start.elapsed() < Duration::from_secs(30) {
        let shift = if rewrites % 2 == 0 { "90%" } else { "10%" };
        let mut text = split_config(&legacy, &new, shift, "none");
        if rewrites % 3 == 0 {
            text.push_str(
                "\n[[routes]]\nid = \"flights\"\npath = \"/flights\"\nlegacy = \"legacy\"\n",
            );
        }
        proxy.rewrite(&text);
        rewrites += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("{rewrites} rewrites, {ok} requests ok, {failed} failed");
    assert_eq!(failed, 0, "{failed} requests failed during reloads");
    assert!(ok > 1000, "too little load to mean anything: {ok}");
    let reloads = proxy.stderr().matches("config reloaded").count();
    assert!(
        reloads >= 50,
        "only {reloads} reloads for {rewrites} rewrites"
    );
    assert!(new.count() > 0 && legacy.count() > 0);
}

#[test]
fn a_broken_file_keeps_the_last_good_config_serving() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let proxy = Proxy::start(&split_config(&legacy, &new, "100%", "none"));
    assert_eq!(side_of(proxy.port), "new");

    let broken =
        split_config(&legacy, &new, "0%", "none").replace("new = \"new\"", "new = \"nwe\"");
    proxy.rewrite(&broken);
    assert!(proxy.wait_for_log("keeping the last good config", Duration::from_secs(5)));
    let log = proxy.stderr();
    let path = proxy.config.display().to_string();
    assert!(
        log.contains(&format!("{path}:17:7: unknown upstream `nwe`")),
        "{log}"
    );
    // Still the old config: 100% new.
    for _ in 0..20 {
        assert_eq!(side_of(proxy.port), "new");
    }
    // A syntax error too.
    proxy.rewrite("[server\nlisten = ");
    eventually("a second failure", || {
        proxy
            .stderr()
            .matches("keeping the last good config")
            .count()
            >= 2
    });
    assert_eq!(side_of(proxy.port), "new");

    // Fixed: the new config applies.
    proxy.rewrite(&split_config(&legacy, &new, "0%", "none"));
    eventually("the fixed config", || side_of(proxy.port) == "legacy");
}

#[cfg(unix)]
#[test]
fn a_configmap_style_symlink_swap_is_picked_up() {
    use std::os::unix::fs::symlink;
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let dir = tempfile::tempdir().unwrap();
    let (port, admin_port) = (free_port(), free_port());
    // Kubernetes mounts: strangle.toml -> ..data/strangle.toml, ..data -> ..2026_v1
    let v1 = dir.path().join("..2026_v1");
    std::fs::create_dir(&v1).unwrap();
    std::fs::write(
        v1.join("strangle.toml"),
        Proxy::render(&split_config(&legacy, &new, "0%", "none"), port, admin_port),
    )
    .unwrap();
    symlink("..2026_v1", dir.path().join("..data")).unwrap();
    symlink("..data/strangle.toml", dir.path().join("strangle.toml")).unwrap();
    let config = dir.path().join("strangle.toml");
    let proxy = Proxy::start_at(dir, config, port, admin_port);
    assert_eq!(side_of(proxy.port), "legacy");

    // The kubelet writes a new version dir, then atomically renames a new `..data` link over.
    let d = proxy.dir.path();
    let v2 = d.join("..2026_v2");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(
        v2.join("strangle.toml"),
        Proxy::render(
            &split_config(&legacy, &new, "100%", "none"),
            port,
            admin_port,
        ),
    )
    .unwrap();
    symlink("..2026_v2", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    std::fs::remove_dir_all(&v1).unwrap();
    eventually("the swapped config", || side_of(proxy.port) == "new");
}

#[test]
fn sighup_reloads_what_the_watcher_cannot_see() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let secrets = tempfile::tempdir().unwrap();
    let shift_file = secrets.path().join("shift");
    std::fs::write(&shift_file, "0%\n").unwrap();
    let text = split_config(
        &legacy,
        &new,
        &format!("${{file:{}}}", shift_file.display()),
        "none",
    );
    let proxy = Proxy::start(&text);
    assert_eq!(side_of(proxy.port), "legacy");
    // The referenced file lives elsewhere: only SIGHUP notices it changed.
    std::fs::write(&shift_file, "100%\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(side_of(proxy.port), "legacy");
    proxy.signal(nix::sys::signal::Signal::SIGHUP);
    eventually("the SIGHUP reload", || side_of(proxy.port) == "new");
}
