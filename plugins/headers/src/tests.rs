use super::*;
use strangle_plugin::{HeaderMap, Method, StatusCode};

fn plugin(text: &str) -> Result<Box<dyn Plugin>, Error> {
    KIND.from_toml(text)
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    strangle_plugin::header_map(pairs)
}

fn values(h: &HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

#[test]
fn request_headers_are_removed_renamed_set_and_appended_in_that_order() {
    let p = plugin(
        r#"
request-remove = ["X-Debug"]
request-rename = { "x-tenant" = "x-org" }
request-set = { "x-api-version" = "2", "x-org-kind" = "partner" }
request-append = { "accept" = "application/json" }
"#,
    )
    .unwrap();
    let mut h = headers(&[
        ("x-debug", "1"),
        ("x-tenant", "a"),
        ("x-tenant", "b"),
        ("x-org", "spoofed"),
        ("x-api-version", "1"),
        ("accept", "text/html"),
    ]);
    let mut path = "/a".to_string();
    let flow = p.request(&mut Request {
        method: &Method::GET,
        path: &mut path,
        query: "",
        headers: &mut h,
        canonical: &|p| Ok(p.to_string()),
    });
    assert_eq!(flow, Flow::Continue);
    assert!(h.get("x-debug").is_none());
    assert!(h.get("x-tenant").is_none());
    assert_eq!(
        values(&h, "x-org"),
        ["a", "b"],
        "a rename replaces what was there"
    );
    assert_eq!(values(&h, "x-api-version"), ["2"]);
    assert_eq!(values(&h, "x-org-kind"), ["partner"]);
    assert_eq!(values(&h, "accept"), ["text/html", "application/json"]);
}

#[test]
fn response_rules_apply_to_the_answer_only() {
    let p = plugin(
        "response-remove = ['x-powered-by']\nresponse-set = { 'cache-control' = 'no-store' }",
    )
    .unwrap();
    let mut h = headers(&[("x-powered-by", "php"), ("cache-control", "max-age=60")]);
    let mut status = StatusCode::OK;
    let asked = HeaderMap::new();
    p.response(&mut Response {
        method: &Method::GET,
        path: "/a",
        request_headers: &asked,
        status: &mut status,
        headers: &mut h,
    });
    assert!(h.get("x-powered-by").is_none());
    assert_eq!(values(&h, "cache-control"), ["no-store"]);
    let mut req = headers(&[("x-powered-by", "client")]);
    let mut path = "/a".to_string();
    p.request(&mut Request {
        method: &Method::GET,
        path: &mut path,
        query: "",
        headers: &mut req,
        canonical: &|p| Ok(p.to_string()),
    });
    assert_eq!(values(&req, "x-powered-by"), ["client"]);
}

#[test]
fn headers_strangle_owns_and_bad_names_are_refused_at_their_key() {
    let err = |text: &str| plugin(text).unwrap_err();
    // A client's header renamed into one strangle vouches for would pass as vouched for.
    let e = err("request-rename = { 'x-user' = 'X-Strangle-User' }");
    assert_eq!(e.key.as_deref(), Some("request-rename"));
    assert_eq!(e.message, "strangle owns `x-strangle-user`");
    assert_eq!(
        err("request-set = { 'x-forwarded-for' = '1.2.3.4' }")
            .key
            .as_deref(),
        Some("request-set")
    );
    assert_eq!(
        err("request-set = { 'Host' = 'a' }").key.as_deref(),
        Some("request-set")
    );
    // Behind a trusted proxy, strangle passes its client-address headers on: a rename into
    // one would pass a client's value as the proxy's.
    for name in strangle_plugin::CLIENT_ADDRESS_HEADERS {
        let e = err(&format!("request-rename = {{ 'x-b' = '{name}' }}"));
        assert_eq!(e.message, format!("strangle owns `{name}`"));
        assert!(plugin(&format!("request-append = {{ '{name}' = '1.2.3.4' }}")).is_err());
    }
    assert_eq!(
        err("response-remove = ['content-length']").key.as_deref(),
        Some("response-remove")
    );
    assert_eq!(
        err("request-set = { 'bad name' = 'a' }").key.as_deref(),
        Some("request-set")
    );
    assert_eq!(
        err("request-set = { 'x-a' = \"a\\nb\" }").key.as_deref(),
        Some("request-set")
    );
    assert_eq!(
        err("request-set = { 'x-a' = 1 }").key.as_deref(),
        Some("request-set")
    );
    assert_eq!(
        err("request-sett = {}").key.as_deref(),
        Some("request-sett")
    );
}
