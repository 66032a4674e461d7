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

/// How long a reload may take to show.
const RELOAD: Duration = Duration::from_secs(5);

/// Long enough for the slower reloads (a FIFO's or a device's refusal, a directory watched
/// again).
const SLOW_RELOAD: Duration = Duration::from_secs(10);

/// A proxy whose `/bookings` shift is read from a file outside its config directory
/// (`${file:..}`), starting at 0%: returns the proxy, its config text and the shift file.
fn start_with_shift_file(
    legacy: &Backend,
    new: &Backend,
) -> (Proxy, String, tempfile::TempDir, std::path::PathBuf) {
    let secrets = tempfile::tempdir().unwrap();
    let shift_file = secrets.path().join("shift");
    std::fs::write(&shift_file, "0%\n").unwrap();
    let text = split_config(
        legacy,
        new,
        &format!("${{file:{}}}", shift_file.display()),
        "none",
    );
    let proxy = Proxy::start(&text);
    assert_eq!(side_of(proxy.port), "legacy");
    (proxy, text, secrets, shift_file)
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
        // The churn rate is the test's subject.
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
    eventually(RELOAD, "a second failure", || {
        proxy
            .stderr()
            .matches("keeping the last good config")
            .count()
            >= 2
    });
    assert_eq!(side_of(proxy.port), "new");

    // Fixed: the new config applies.
    proxy.rewrite(&split_config(&legacy, &new, "0%", "none"));
    eventually(RELOAD, "the fixed config", || {
        side_of(proxy.port) == "legacy"
    });
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
    eventually(RELOAD, "the swapped config", || {
        side_of(proxy.port) == "new"
    });
}

#[test]
fn sighup_reloads_what_the_watcher_cannot_see() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let (proxy, _, _secrets, shift_file) = start_with_shift_file(&legacy, &new);
    // The referenced file lives elsewhere: only SIGHUP notices it changed. (A reload that must
    // not happen has nothing to poll for: this waits as long as a watched edit would take.)
    std::fs::write(&shift_file, "100%\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(side_of(proxy.port), "legacy");
    proxy.signal(nix::sys::signal::Signal::SIGHUP);
    eventually(RELOAD, "the SIGHUP reload", || side_of(proxy.port) == "new");
}

// Operational faults (issue 11 items 8 and 11): what the config path can turn into, and what
// can happen to its directory, without hot reload silently dying.

fn last_reload_error(proxy: &Proxy) -> String {
    proxy.status()["config"]["last_reload_error"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The peak resident memory of a process, in MB.
fn peak_rss_mb(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024
}

/// `mkfifo .f; mv .f strangle.toml`, then a valid file back: the reload must not block on the
/// FIFO, and every way of changing the config must work again afterwards.
#[cfg(unix)]
#[test]
fn a_config_that_is_briefly_a_fifo_blocks_nothing() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let (proxy, text, _secrets, shift_file) = start_with_shift_file(&legacy, &new);

    let fifo = proxy.dir.path().join(".f");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    std::fs::rename(&fifo, &proxy.config).unwrap();
    eventually(SLOW_RELOAD, "the FIFO refused", || {
        last_reload_error(&proxy).contains("is a FIFO (named pipe), not a regular file")
    });
    assert!(proxy.metric("strangle_config_reload_failures_total") >= 1.0);
    assert_eq!(proxy.metric("strangle_config_reload_in_progress"), 0.0);
    assert_eq!(proxy.metric("strangle_config_last_reload_successful"), 0.0);
    // While it is a FIFO, every way in answers at once with the reason.
    let r = proxy.admin("POST", "/reload", b"");
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("FIFO"), "{}", r.text());
    let out = proxy.cli(&["shift", "/bookings", "10%"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("FIFO"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Still serving the last good config.
    assert_eq!(side_of(proxy.port), "legacy");

    // A valid file back (an editor's save): picked up, and the failure cleared.
    std::fs::remove_file(&proxy.config).unwrap();
    proxy.rewrite(&text);
    eventually(SLOW_RELOAD, "the valid file back", || {
        proxy.status()["config"]["last_reload_error"].is_null()
    });
    assert_eq!(proxy.metric("strangle_config_last_reload_successful"), 1.0);
    // SIGHUP.
    std::fs::write(&shift_file, "100%\n").unwrap();
    proxy.signal(nix::sys::signal::Signal::SIGHUP);
    eventually(SLOW_RELOAD, "the SIGHUP reload", || {
        side_of(proxy.port) == "new"
    });
    // POST /reload.
    std::fs::write(&shift_file, "0%\n").unwrap();
    let r = proxy.admin("POST", "/reload", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(side_of(proxy.port), "legacy");
    // `strangle shift`.
    let out = proxy.cli(&["shift", "/bookings", "100%"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(side_of(proxy.port), "new");
    // And an edit of the file.
    proxy.rewrite(&split_config(&legacy, &new, "0%", "none"));
    eventually(SLOW_RELOAD, "the edit", || side_of(proxy.port) == "legacy");
}

/// A config symlinked to /dev/zero, a `${file:/dev/zero}`, a 9 MB garbage file: each refused
/// with a clear error, quickly, without the proxy's memory growing with what it was fed.
#[cfg(unix)]
#[test]
fn endless_or_huge_config_files_are_refused_with_bounded_memory() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let text = split_config(&legacy, &new, "100%", "none");
    let proxy = Proxy::start(&text);
    assert_eq!(side_of(proxy.port), "new");
    let dir = proxy.dir.path();

    std::os::unix::fs::symlink("/dev/zero", dir.join(".zero")).unwrap();
    std::fs::rename(dir.join(".zero"), &proxy.config).unwrap();
    eventually(SLOW_RELOAD, "/dev/zero refused", || {
        last_reload_error(&proxy).contains("is a character device, not a regular file")
    });

    proxy.rewrite(&split_config(&legacy, &new, "${file:/dev/zero}", "none"));
    eventually(SLOW_RELOAD, "${file:/dev/zero} refused", || {
        let e = last_reload_error(&proxy);
        e.contains("`/dev/zero` is a character device") && e.contains("strangle.toml:")
    });

    let mut garbage = Vec::with_capacity(9 << 20);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    while garbage.len() < 9 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        garbage.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(dir.join(".big"), &garbage).unwrap();
    std::fs::rename(dir.join(".big"), &proxy.config).unwrap();
    eventually(SLOW_RELOAD, "the 9 MB file refused", || {
        last_reload_error(&proxy).contains("is larger than 8 MB")
    });
    let r = proxy.admin("POST", "/reload", b"");
    assert_eq!(r.status, 422);
    assert!(r.text().contains("larger than 8 MB"), "{}", r.text());

    // Everything refused: the last good config served throughout.
    assert_eq!(side_of(proxy.port), "new");
    assert!(proxy.metric("strangle_config_reload_failures_total") >= 4.0);
    let peak = peak_rss_mb(proxy.child.id());
    assert!(peak < 300, "peak resident memory {peak} MB");

    proxy.rewrite(&split_config(&legacy, &new, "0%", "none"));
    eventually(SLOW_RELOAD, "the valid file", || {
        side_of(proxy.port) == "legacy"
    });
}

/// `strangle check` and `strangle serve` on a FIFO, a device or a directory: an error at once,
/// never a hang.
#[cfg(unix)]
#[test]
fn check_and_serve_refuse_what_is_not_a_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let zero = dir.path().join("zero.toml");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    for (file, says) in [
        (&fifo, "is a FIFO"),
        (&zero, "is a character device"),
        (&dir.path().to_path_buf(), "is a directory"),
    ] {
        for verb in [&["check"][..], &["serve", "-c"][..]] {
            let mut child = std::process::Command::new(bin())
                .args(verb)
                .arg(file)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut status = None;
            if !wait_until(Duration::from_secs(10), || {
                status = child.try_wait().unwrap();
                status.is_some()
            }) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`strangle {verb:?} {}` hung", file.display());
            }
            let status = status.unwrap();
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            assert!(!status.success(), "{verb:?} {}", file.display());
            assert!(err.contains(says), "{verb:?} {}: {err}", file.display());
        }
    }
}

/// A config in its own directory, for tests that delete or move that directory. Returns the
/// proxy and the text that renders its config with `{shift}` set.
fn start_in_subdir(
    legacy: &Backend,
    new: &Backend,
    shift: &str,
) -> (Proxy, std::path::PathBuf, impl Fn(&str) -> String) {
    let root = tempfile::tempdir().unwrap();
    let conf = root.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    let config = conf.join("strangle.toml");
    let (port, admin_port) = (free_port(), free_port());
    // The access log outside the directory the test deletes (it is created on first use).
    let log = format!(
        "\n[log]\naccess = \"{}\"\nlevel = \"info\"\n",
        root.path().join("access.log").display()
    );
    let (legacy, new) = (legacy.addr(), new.addr());
    let render = move |shift: &str| {
        let text = Config::new()
            .default("legacy")
            .upstream("legacy", &legacy)
            .upstream("new", &new)
            .route("bookings", "/bookings", |r| {
                r.legacy("legacy").new("new").shift(shift)
            })
            .raw(&log)
            .build();
        Proxy::render(&text, port, admin_port)
    };
    std::fs::write(&config, render(shift)).unwrap();
    let proxy = Proxy::start_at(root, config, port, admin_port);
    // The watcher is a background service: serving does not mean it watches yet, and a test
    // that moves the directory before it does tests another thing.
    assert!(
        proxy.wait_for_log("watching the config directory", Duration::from_secs(10)),
        "{}",
        proxy.stderr()
    );
    (proxy, conf, render)
}

#[test]
fn hot_reload_survives_the_config_directory_being_deleted_and_recreated() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let (proxy, conf, render) = start_in_subdir(&legacy, &new, "0%");
    assert_eq!(side_of(proxy.port), "legacy");

    std::fs::remove_dir_all(&conf).unwrap();
    assert!(
        proxy.wait_for_log("the config directory is gone", SLOW_RELOAD),
        "{}",
        proxy.stderr()
    );
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(&proxy.config, render("100%")).unwrap();
    eventually(SLOW_RELOAD, "the recreated config", || {
        side_of(proxy.port) == "new"
    });
    watched_again(&proxy, &render);
}

/// After the config directory came back: the watcher says it watches it again, and the next
/// edit is applied (watched again, not just read once).
fn watched_again(proxy: &Proxy, render: &dyn Fn(&str) -> String) {
    assert!(
        proxy.wait_for_log(
            "watching the config directory again",
            Duration::from_secs(5)
        ),
        "{}",
        proxy.stderr()
    );
    write_atomically(&proxy.config, &render("0%"));
    eventually(SLOW_RELOAD, "the next edit", || {
        side_of(proxy.port) == "legacy"
    });
}

#[test]
fn hot_reload_survives_the_config_directory_being_moved_away_and_back() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let (proxy, conf, render) = start_in_subdir(&legacy, &new, "0%");
    assert_eq!(side_of(proxy.port), "legacy");

    let away = conf.with_file_name("conf.old");
    std::fs::rename(&conf, &away).unwrap();
    write_atomically(&away.join("strangle.toml"), &render("100%"));
    assert!(
        proxy.wait_for_log("the config directory is gone", SLOW_RELOAD),
        "{}",
        proxy.stderr()
    );
    std::fs::rename(&away, &conf).unwrap();
    eventually(SLOW_RELOAD, "the config changed while away", || {
        side_of(proxy.port) == "new"
    });
    watched_again(&proxy, &render);
}

/// A config whose `auth` line puts `/bookings` behind auth: cut before it, the route is open.
fn guarded_config(backend: &Backend) -> String {
    Config::new()
        .default("monolith")
        .upstream("monolith", &backend.addr())
        .section(
            "[auth.users]",
            "jwks-url = \"http://127.0.0.1:1/jwks.json\"\nissuer = \"https://issuer.example/\"\naudiences = [\"bookings\"]\nalgorithms = [\"RS256\"]",
        )
        .route("bookings", "/bookings", |r| {
            r.legacy("monolith")
                .new("monolith")
                .shift("0%")
                .auth("users")
        })
        .build()
}

/// Writes `text` into `path` in place (truncate, then two writes 1.5 s apart, the second
/// starting at the `auth` line), as `> file`, `curl -o` or an editor saving in place would.
fn write_slowly_in_place(path: std::path::PathBuf, text: String) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        use std::io::Write;
        let cut = text.find("auth = \"users\"").unwrap();
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&text.as_bytes()[..cut]).unwrap();
        f.flush().unwrap();
        // The half-written file is the test's subject: it stays half-written this long.
        std::thread::sleep(Duration::from_millis(1500));
        f.write_all(&text.as_bytes()[cut..]).unwrap();
    })
}

#[test]
fn a_config_written_slowly_in_place_never_serves_its_first_half() {
    let backend = Backend::start("monolith");
    let proxy = Proxy::start(&guarded_config(&backend));
    assert_eq!(get(proxy.port, "/bookings", &[]).status, 401);
    // The same config rewritten in place, slowly, with one change (a shift) so it reloads.
    let text = std::fs::read_to_string(&proxy.config)
        .unwrap()
        .replace("shift = \"0%\"", "shift = \"0.5%\"");
    let writer = write_slowly_in_place(proxy.config.clone(), text);
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(2500) {
        let status = get(proxy.port, "/bookings", &[]).status;
        assert_eq!(status, 401, "the half-written config was served");
        // Asked again and again for the whole write: it must hold throughout.
        std::thread::sleep(Duration::from_millis(50));
    }
    writer.join().unwrap();
    eventually(RELOAD, "the whole file is loaded", || {
        proxy.status()["routes"][0]["shift"] == "0.5%"
    });
    assert_eq!(get(proxy.port, "/bookings", &[]).status, 401);
}

#[test]
fn a_shift_during_a_slow_in_place_write_never_saves_the_half() {
    let backend = Backend::start("monolith");
    let proxy = Proxy::start(&guarded_config(&backend));
    let text = std::fs::read_to_string(&proxy.config).unwrap();
    let writer = write_slowly_in_place(proxy.config.clone(), text);
    // Into the writer's 1.5 s pause: the shift must land in the middle of the write.
    std::thread::sleep(Duration::from_millis(400));
    let out = std::process::Command::new(bin())
        .args(["shift", "--file"])
        .arg(&proxy.config)
        .args(["bookings", "10%"])
        .output()
        .unwrap();
    writer.join().unwrap();
    let file = std::fs::read_to_string(&proxy.config).unwrap();
    // The edit waited for the writer and applied on the whole file.
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(file.contains("auth = \"users\""), "{file}");
    assert!(file.contains("shift = \"10%\""), "{file}");
    eventually(RELOAD, "the shift is live", || {
        proxy.status()["routes"][0]["shift"] == "10%"
    });
    assert_eq!(get(proxy.port, "/bookings", &[]).status, 401);
}

#[test]
fn a_reload_names_every_key_it_can_only_apply_at_restart() {
    let backend = Backend::start("monolith");
    let proxy = Proxy::start(&monolith_config(&backend, ""));
    let text = std::fs::read_to_string(&proxy.config).unwrap().replace(
        "default = \"monolith\"",
        "default = \"monolith\"\nheader-timeout = \"3s\"\ngrace-period = \"7s\"",
    );
    proxy.rewrite(&text);
    assert!(
        proxy.wait_for_log(
            "applied only at the next restart: [server] header-timeout, [server] grace-period",
            Duration::from_secs(10)
        ),
        "{}",
        proxy.stderr()
    );
}
