use super::*;
use strangle_plugin::{Method, StatusCode};

fn plugin(text: &str) -> Result<Box<dyn Plugin>, Error> {
    KIND.from_toml(text)
}

/// Dot segments resolved, as strangle's canonicalisation does (the real one is tested with
/// the proxy); an encoded `/` refused, as a client's would be.
fn canonical(path: &str) -> Result<String, String> {
    if path.to_ascii_lowercase().contains("%2f") {
        return Err("an encoded `/`".into());
    }
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/').skip(1) {
        match seg {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    Ok(format!("/{}", out.join("/")))
}

fn run(p: &dyn Plugin, path: &str) -> (Flow, String) {
    let mut path = path.to_string();
    let mut headers = HeaderMap::new();
    let flow = p.request(&mut Request {
        method: &Method::GET,
        path: &mut path,
        query: "",
        headers: &mut headers,
        canonical: &canonical,
    });
    (flow, path)
}

#[test]
fn a_matching_path_is_rewritten_with_its_captures_and_others_pass() {
    let p = plugin("from = '^/api/v1/(.*)$'\nto = '/$1'").unwrap();
    assert_eq!(
        run(&*p, "/api/v1/bookings/42"),
        (Flow::Continue, "/bookings/42".into())
    );
    assert_eq!(run(&*p, "/other/1"), (Flow::Continue, "/other/1".into()));
    let named = plugin("from = '^/b/(?P<id>[0-9]+)$'\nto = '/bookings/${id}/details'").unwrap();
    assert_eq!(
        run(&*named, "/b/7"),
        (Flow::Continue, "/bookings/7/details".into())
    );
}

#[test]
fn a_capture_never_climbs_out_of_the_templates_fixed_part() {
    let p = plugin("from = '^/api/(.*)$'\nto = '/bookings/$1'").unwrap();
    // `/api/x./..` is not a canonical client path, but a capture can still assemble `..`
    // from pieces: `.$1` with `$1 = .`.
    let tricky = plugin("from = '^/api/x(.*)$'\nto = '/bookings/.$1/admin'").unwrap();
    let (flow, path) = run(&*tricky, "/api/x.");
    assert!(
        matches!(flow, Flow::Answer(ref a) if a.status == StatusCode::BAD_REQUEST),
        "{path}"
    );
    assert_eq!(path, "/api/x.", "the path is left as it was");
    let (flow, _) = run(&*p, "/api/%2F..%2Fadmin");
    assert!(matches!(flow, Flow::Answer(_)));
    assert_eq!(run(&*p, "/api/42"), (Flow::Continue, "/bookings/42".into()));
}

#[test]
fn settings_mistakes_are_named_at_their_key() {
    let key = |text: &str| plugin(text).unwrap_err();
    assert_eq!(key("from = '('\nto = '/'").key.as_deref(), Some("from"));
    assert_eq!(
        key("from = '^/(a)$'\nto = 'x/$1'").key.as_deref(),
        Some("to")
    );
    let e = key("from = '^/(a)$'\nto = '/$2'");
    assert_eq!(e.message, "`from` has no capture `2`");
    assert_eq!(key("from = '^/(a)$'\nto = '/$'").key.as_deref(), Some("to"));
    assert_eq!(
        key("from = '^/(a)$'\nto = '/${1'").key.as_deref(),
        Some("to")
    );
    assert_eq!(
        key("from = '^/(a)$'\nto = '/$1'\nform = 1").key.as_deref(),
        Some("form")
    );
    assert_eq!(key("to = '/'").key, None, "`from` is required");
    assert!(plugin("from = '^/(a)$'\nto = '/$$/$1'").is_ok());
}

#[test]
fn a_template_no_request_could_pass_is_refused_at_load() {
    for to in [
        "/v2/../$1",
        "/v2%2F$1",
        "/v2 x/$1",
        "/v2/\\$1",
        "/v2/%00/$1",
        "/v2;x/$1",
        "/v2/ä/$1",
        "/v2//$1",
        "/v2/./$1",
    ] {
        let e = plugin(&format!("from = '^/r/(.*)$'\nto = '{to}'")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("to"), "{to}");
    }
    // Captures count as a segment's worth: `.$1` and `$1$2` are fine.
    assert!(plugin("from = '^/r/(.*)/(.*)$'\nto = '/v2/.$1/$1$2'").is_ok());
}
