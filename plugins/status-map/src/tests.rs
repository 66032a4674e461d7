use super::*;
use strangle_plugin::{HeaderMap, Method};

fn plugin(text: &str) -> Result<Box<dyn Plugin>, Error> {
    KIND.from_toml(text)
}

fn answer(p: &dyn Plugin, status: u16) -> (StatusCode, HeaderMap, BodyUse) {
    let asked = HeaderMap::new();
    let mut headers = HeaderMap::new();
    headers.insert(
        "content-type",
        HeaderValue::from_static("application/problem+json"),
    );
    headers.insert("etag", HeaderValue::from_static("\"1\""));
    let original = StatusCode::from_u16(status).unwrap();
    let mut s = original;
    p.response(&mut Response {
        method: &Method::GET,
        path: "/a",
        request_headers: &asked,
        status: &mut s,
        headers: &mut headers,
    });
    let head = BodyHead {
        original,
        status: s,
        headers: &headers,
    };
    let body_use = p.response_body_use(&head);
    (s, headers.clone(), body_use)
}

#[test]
fn a_mapped_status_gets_the_monoliths_status_and_body_and_others_pass() {
    let p = plugin("status = 404\nto = 410\ncontent-type = 'text/html'\nbody = '<h1>Gone</h1>'")
        .unwrap();
    let (status, headers, body_use) = answer(&*p, 404);
    assert_eq!(status, StatusCode::GONE);
    assert_eq!(headers.get("content-type").unwrap(), "text/html");
    assert!(
        headers.get("etag").is_none(),
        "the side's validators go with its body"
    );
    assert_eq!(body_use, BodyUse::Replace);
    let mut body = b"{\"type\":\"about:blank\"}".to_vec();
    let head = BodyHead {
        original: StatusCode::NOT_FOUND,
        status,
        headers: &headers,
    };
    p.response_body(&head, &mut body);
    assert_eq!(body, b"<h1>Gone</h1>");
    let (status, headers, body_use) = answer(&*p, 200);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers.get("content-type").unwrap(),
        "application/problem+json"
    );
    assert_eq!(body_use, BodyUse::None);
    // A status alone: the body stays the side's.
    let p = plugin("status = 422\nto = 400").unwrap();
    assert_eq!(answer(&*p, 422).0, StatusCode::BAD_REQUEST);
    assert_eq!(answer(&*p, 422).2, BodyUse::None);
}

#[test]
fn settings_mistakes_are_named() {
    let err = |text: &str| plugin(text).unwrap_err();
    assert_eq!(err("to = 404").key, None, "`status` is required");
    assert_eq!(err("status = 99\nto = 404").key.as_deref(), Some("status"));
    assert_eq!(err("status = 404\nto = 101").key.as_deref(), Some("to"));
    assert_eq!(err("status = 404\nto = 700").key.as_deref(), Some("to"));
    assert_eq!(err("status = 404").key, None, "nothing to map");
    assert_eq!(
        err("status = 404\nto = 410\ncontent-type = 'text/html'")
            .key
            .as_deref(),
        Some("content-type")
    );
    assert_eq!(
        err("status = 404\nbody = 'x'\ncontent-type = \"a\\nb\"")
            .key
            .as_deref(),
        Some("content-type")
    );
    assert_eq!(
        err("status = 404\nto = 410\nbdy = 'x'").key.as_deref(),
        Some("bdy")
    );
}

#[test]
fn statuses_without_a_body_are_never_given_or_taken_one() {
    let e = plugin("status = 204\nto = 200\nbody = 'x'").unwrap_err();
    assert_eq!(e.key.as_deref(), Some("status"));
    assert!(plugin("status = 304\nto = 200").is_err());
    let e = plugin("status = 404\nto = 204\nbody = 'x'").unwrap_err();
    assert_eq!(e.key.as_deref(), Some("body"));
    // To 204 without a body: the answer's own body is not passed on (strangle reframes it).
    assert!(plugin("status = 200\nto = 204").is_ok());
}
