use serde_json::json;

use super::*;

fn record(n: usize, body: &str) -> Record {
    Record {
        at: "2026-12-02T10:00:00.000Z".into(),
        route: "orders".into(),
        event: "new-5xx".into(),
        request_id: Some(format!("r{n}")),
        request: Request {
            method: "GET".into(),
            path: format!("/orders/{n}"),
            query: String::new(),
            headers: vec![("accept".into(), "*/*".into())],
            body: Body::of(json!({ "b": body }).to_string().as_bytes(), false, None),
        },
        side: "new".into(),
        upstream: "new".into(),
        response: None,
        other: None,
        differences: Vec::new(),
        error: None,
        fallback: None,
    }
}

fn lines(path: &Path) -> Vec<Record> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn bodies_keep_text_or_base64_and_json_loses_its_secrets() {
    let b = Body::of(
        br#"{"seat":"1A","password":"hunter2","card":{"number":"4111"}}"#,
        false,
        Some("application/json"),
    );
    assert_eq!(
        b.text,
        r#"{"card":"[redacted]","password":"[redacted]","seat":"1A"}"#
    );
    // What cannot be looked into is not kept: binary, cut, plain text, malformed JSON.
    for (bytes, cut) in [
        (&[0xff, 0x00, 0x01][..], false),
        (br#"{"password":"S","seat":"1A""#, true),
        (b"password: S", false),
        (br#"{"password":"S",}"#, false),
        (br#"{"password":"S","n":1e999}"#, false),
        (b"\xef\xbb\xbf{\"password\":\"S\"}", false),
        (b"<login><password>S</password></login>", false),
        (
            b"--b\r\nContent-Disposition: form-data; name=\"password\"\r\n\r\nS\r\n--b--",
            false,
        ),
        (b"{\"a\":1}\n{\"password\":\"S\"}\n", false),
    ] {
        let b = Body::of(bytes, cut, Some("application/json"));
        assert!(b.withheld && b.truncated && b.text.is_empty(), "{b:?}");
    }
    // A URL echoed in a field, and JSON inside a string, lose their secrets too.
    let b = Body::of(
        br#"{"path":"/api/q?access_token=S&page=2","inner":"{\"password\":\"S\"}"}"#,
        false,
        None,
    );
    assert!(
        !b.text.contains("\"S") && !b.text.contains("=S"),
        "{}",
        b.text
    );
    assert!(b.text.contains("page=2"), "{}", b.text);
}

#[test]
fn secret_headers_are_redacted() {
    let mut h = http::HeaderMap::new();
    h.insert("authorization", "Bearer abc".parse().unwrap());
    h.insert("x-api-key", "k".parse().unwrap());
    h.insert("x-session-token", "t".parse().unwrap());
    h.insert("x-tenant", "acme".parse().unwrap());
    h.insert("x-custom-secret-ish", "s".parse().unwrap());
    let kept = kept_headers(&h, &["x-tenant".to_string()]);
    assert!(kept.iter().all(|(_, v)| v == redact::REDACTED), "{kept:?}");
    h.insert("accept", "*/*".parse().unwrap());
    let kept = kept_headers(&h, &[]);
    assert!(kept.contains(&("accept".into(), "*/*".into())));
}

#[test]
fn the_spool_appends_lines_and_rotates_in_two_halves_under_max_size() {
    let dir = tempfile::tempdir().unwrap();
    let spools = Spools::default();
    let at = dir.path().join("spool");
    let spool = spools.spool(&at, 1 << 20);
    // The same directory is the same writer.
    assert!(Arc::ptr_eq(&spool, &spools.spool(&at, 1 << 30)));
    let body = "x".repeat(10_000);
    for n in 0..120 {
        spool.keep(&record(n, &body));
        if n % 50 == 49 {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let done = std::time::Instant::now();
    while spool.written.load(Relaxed) + spool.dropped.load(Relaxed) < 120 {
        assert!(done.elapsed().as_secs() < 10, "the writer is stuck");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let size = |f: &str| std::fs::metadata(at.join(f)).map_or(0, |m| m.len());
    // Each half stops at half of max-size (the line that crosses it is the last).
    assert!(size(FILE) < 512 << 10, "{}", size(FILE));
    assert!(size(OLDER) <= (512 << 10) + 11_000, "{}", size(OLDER));
    let (now, older) = (lines(&at.join(FILE)), lines(&at.join(OLDER)));
    assert!(!older.is_empty());
    // The newest record is the last line, whole.
    let last = now.last().or(older.last()).unwrap();
    assert_eq!(last.request.path, "/orders/119");
    assert_eq!(last.request.body.text.len(), 10_000 + 8);
}

#[test]
fn a_spool_that_cannot_be_written_counts_and_never_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "").unwrap();
    let spool = Spools::default().spool(&file.join("spool"), 1 << 20);
    for n in 0..5 {
        spool.keep(&record(n, "x"));
    }
    let done = std::time::Instant::now();
    while spool.failed.load(Relaxed) < 5 {
        assert!(done.elapsed().as_secs() < 10);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(spool.written.load(Relaxed), 0);
}

#[test]
fn queries_forms_and_json_of_any_content_type_lose_their_secrets() {
    let extra = vec!["tenant".to_string()];
    assert_eq!(
        kept_query("?access_token=q1&page=2&api_key=k&tenant=t", &extra),
        "?access_token=[redacted]&page=2&api_key=[redacted]&tenant=[redacted]"
    );
    assert_eq!(kept_query("?", &extra), "");
    let mut h = http::HeaderMap::new();
    h.insert(
        "content-type",
        "application/x-www-form-urlencoded".parse().unwrap(),
    );
    let b = kept_body(b"user=ann&password=hunter2&pin=1234", false, &h, &extra);
    assert_eq!(b.text, "user=ann&password=[redacted]&pin=[redacted]");
    // JSON sent as text/plain, and fields named in other ways.
    h.insert("content-type", "text/plain".parse().unwrap());
    let b = kept_body(
        br#"{"private_key":"k","credentials":{"a":1},"pass":"p","pwd":"w","sessionId":"s","auth":"x","seat":"1A"}"#,
        false,
        &h,
        &extra,
    );
    assert_eq!(
        b.text,
        r#"{"auth":"[redacted]","credentials":"[redacted]","pass":"[redacted]","private_key":"[redacted]","pwd":"[redacted]","seat":"1A","sessionId":"[redacted]"}"#
    );
    // A form sent as text/plain is a form all the same.
    let b = kept_body(b"token=abc&x=1", false, &h, &extra);
    assert_eq!(b.text, "token=[redacted]&x=1");
    // A body in a content coding cannot be looked into: it is not kept.
    h.insert("content-encoding", "gzip".parse().unwrap());
    let b = kept_body(&[0x1f, 0x8b, 0x08, 0x00], false, &h, &extra);
    assert_eq!((b.text.as_str(), b.truncated), ("", true));
    let mut sessions = http::HeaderMap::new();
    for name in ["x-credentials", "x-session-id", "x-passwd", "x-auth"] {
        sessions.insert(http::HeaderName::from_static(name), "v".parse().unwrap());
    }
    assert!(kept_headers(&sessions, &[])
        .iter()
        .all(|(_, v)| v == redact::REDACTED));
}

#[test]
fn a_spool_removed_or_replaced_by_a_fifo_is_noticed() {
    let dir = tempfile::tempdir().unwrap();
    let at = dir.path().join("spool");
    let spool = Spools::default().spool(&at, 1 << 20);
    let settled = |n: u64| {
        let done = std::time::Instant::now();
        while spool.written.load(Relaxed) + spool.failed.load(Relaxed) < n {
            assert!(done.elapsed().as_secs() < 10, "the writer is stuck");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    };
    spool.keep(&record(0, "a"));
    settled(1);
    // Removed by hand: the next record makes the file again.
    std::fs::remove_file(at.join(FILE)).unwrap();
    spool.keep(&record(1, "b"));
    settled(2);
    let kept = lines(&at.join(FILE));
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].request.path, "/orders/1");
    // A FIFO there is refused without blocking the writer.
    std::fs::remove_file(at.join(FILE)).unwrap();
    nix::unistd::mkfifo(&at.join(FILE), nix::sys::stat::Mode::S_IRWXU).unwrap();
    spool.keep(&record(2, "c"));
    settled(3);
    assert_eq!(spool.failed.load(Relaxed), 1);
}

#[test]
fn signature_jwt_and_short_secret_headers_and_urls_in_values_are_redacted() {
    let mut h = http::HeaderMap::new();
    for name in [
        "x-signature",
        "x-hub-signature-256",
        "x-jwt",
        "x-pin",
        "x-otp",
        "x-sid",
    ] {
        h.insert(http::HeaderName::from_static(name), "S".parse().unwrap());
    }
    h.insert(
        "referer",
        "https://shop.test/a?access_token=S&page=2".parse().unwrap(),
    );
    let kept = kept_headers(&h, &[]);
    assert!(
        kept.iter().all(|(_, v)| !v.contains("=S") && v != "S"),
        "{kept:?}"
    );
    assert!(
        kept.iter()
            .any(|(n, v)| n == "referer" && v.ends_with("page=2")),
        "{kept:?}"
    );
    assert_eq!(
        kept_query("?pin=1234&private_key=k&q=shoes", &[]),
        "?pin=[redacted]&private_key=[redacted]&q=shoes"
    );
}
