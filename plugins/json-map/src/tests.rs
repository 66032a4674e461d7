use super::*;
use serde_json::json;
use strangle_plugin::{HeaderMap, HeaderValue, StatusCode};

fn plugin(text: &str) -> Result<Box<dyn Plugin>, Error> {
    KIND.from_toml(text)
}

fn mapped(p: &dyn Plugin, content_type: &str, body: &[u8]) -> (BodyUse, Vec<u8>) {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_str(content_type).unwrap());
    let head = BodyHead {
        original: StatusCode::OK,
        status: StatusCode::OK,
        headers: &headers,
    };
    let body_use = p.response_body_use(&head);
    let mut body = body.to_vec();
    if body_use != BodyUse::None {
        p.response_body(&head, &mut body);
    }
    (body_use, body)
}

fn doc(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap()
}

const MAP: &str = r#"
rename = { "$.booking" = "$.id", "$.items[*].sku" = "$.items[*].product.code" }
drop = ["$.served_by", "$.items[*].internal"]
default = { "$.currency" = "EUR", "$.meta.version" = 1 }
"#;

#[test]
fn fields_are_renamed_moved_dropped_and_defaulted() {
    let p = plugin(MAP).unwrap();
    let side = json!({
        "booking": "42", "served_by": "bookings-fn",
        "items": [{"sku": "a", "internal": true}, {"sku": "b"}, 3],
    });
    let (use_, body) = mapped(
        &*p,
        "application/json; charset=utf-8",
        side.to_string().as_bytes(),
    );
    assert_eq!(use_, BodyUse::Read(DEFAULT_MAX));
    assert_eq!(
        doc(&body),
        json!({
            "id": "42", "currency": "EUR", "meta": {"version": 1},
            "items": [{"product": {"code": "a"}}, {"product": {"code": "b"}}, 3],
        })
    );
    // A default never replaces what is there.
    let (_, body) = mapped(&*p, "application/vnd.api+json", br#"{"currency":"GBP"}"#);
    assert_eq!(doc(&body)["currency"], "GBP");
}

#[test]
fn other_answers_pass_untouched() {
    let p = plugin(MAP).unwrap();
    assert_eq!(mapped(&*p, "text/html", b"<p>").0, BodyUse::None);
    let (use_, body) = mapped(&*p, "application/json", b"{not json");
    assert_ne!(use_, BodyUse::None);
    assert_eq!(body, b"{not json");
    // A path through a value that is not an object leaves it alone.
    let (_, body) = mapped(&*p, "application/json", br#"{"meta": 5, "booking": 1}"#);
    assert_eq!(doc(&body), json!({"meta": 5, "id": 1, "currency": "EUR"}));
    let (_, body) = mapped(&*p, "application/json", b"[1, 2]");
    assert_eq!(doc(&body), json!([1, 2]));
}

#[test]
fn settings_mistakes_are_named_at_their_key() {
    let key = |text: &str| plugin(text).unwrap_err().key;
    assert_eq!(key("drop = ['a.b']").as_deref(), Some("drop"));
    assert_eq!(key("drop = ['$.']").as_deref(), Some("drop"));
    assert_eq!(key("drop = ['$.items[*]']").as_deref(), Some("drop"));
    assert_eq!(key("drop = ['$[\"a']").as_deref(), Some("drop"));
    assert_eq!(
        key("rename = { '$.a[*].b' = '$.c' }").as_deref(),
        Some("rename")
    );
    assert_eq!(
        key("default = { '$.a' = 1 }\nmax-body = 0").as_deref(),
        Some("max-body")
    );
    assert_eq!(
        key("default = { '$.a' = 1 }\nmax-body = 99999999").as_deref(),
        Some("max-body")
    );
    assert_eq!(key("default = 3").as_deref(), Some("default"));
    assert_eq!(
        plugin("max-body = 10").unwrap_err().key,
        None,
        "nothing to map"
    );
    assert!(plugin("drop = ['$[\"odd name\"].x']").is_ok());
}

fn mapped_request(p: &dyn Plugin, headers: &[(&str, &str)], body: &[u8]) -> (BodyUse, Vec<u8>) {
    let headers = strangle_plugin::header_map(headers);
    let head = RequestHead {
        method: &strangle_plugin::Method::POST,
        path: "/bookings",
        headers: &headers,
    };
    let body_use = p.request_body_use(&head);
    let mut body = body.to_vec();
    if body_use != BodyUse::None {
        p.request_body(&head, &mut body);
    }
    (body_use, body)
}

#[test]
fn a_map_is_on_responses_requests_or_both() {
    let json = [("content-type", "application/json")];
    let map = r#"rename = { "$.id" = "$.booking" }"#;
    // By default answers only: a request's body passes untouched.
    let p = plugin(map).unwrap();
    assert_eq!(mapped_request(&*p, &json, b"{}").0, BodyUse::None);
    assert_eq!(
        mapped(&*p, "application/json", b"{}").0,
        BodyUse::Read(DEFAULT_MAX)
    );

    let p = plugin(&format!("on = \"request\"\nmax-body = 100\n{map}")).unwrap();
    let (use_, body) = mapped_request(&*p, &json, br#"{"id":"42","nights":3}"#);
    assert_eq!(use_, BodyUse::Read(100));
    assert_eq!(doc(&body), json!({"booking": "42", "nights": 3}));
    assert_eq!(mapped(&*p, "application/json", b"{}").0, BodyUse::None);

    let p = plugin(&format!("on = \"both\"\n{map}")).unwrap();
    assert_ne!(mapped_request(&*p, &json, b"{}").0, BodyUse::None);
    assert_ne!(mapped(&*p, "application/json", b"{}").0, BodyUse::None);
}

#[test]
fn hostile_request_bodies_pass_untouched() {
    let p = plugin("on = \"request\"\nrename = { \"$.id\" = \"$.booking\" }").unwrap();
    // Not JSON by its type, encoded, or not JSON at all: not asked for, or left as it is.
    for headers in [
        vec![("content-type", "text/plain")],
        vec![],
        vec![
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        vec![("content-type", "application/jsonx")],
    ] {
        assert_eq!(
            mapped_request(&*p, &headers, br#"{"id":1}"#).0,
            BodyUse::None
        );
    }
    let json = [("content-type", "application/json")];
    for body in [&b"{\"id\": 1"[..], b"\xff\xfe", b"", b"[1,2", b"nul"] {
        assert_eq!(mapped_request(&*p, &json, body).1, body);
    }
    // Deeply nested JSON is refused by the parser's own depth limit, and passes untouched.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(
        mapped_request(&*p, &json, deep.as_bytes()).1,
        deep.as_bytes()
    );
    // A value where the map expects an object is no way through: nothing moves.
    let (_, body) = mapped_request(&*p, &json, br#"[{"id":1}]"#);
    assert_eq!(doc(&body), json!([{"id": 1}]));
}

#[test]
fn on_takes_only_its_three_values() {
    let e = plugin("on = \"requests\"\ndrop = [\"$.a\"]").unwrap_err();
    assert_eq!(e.key.as_deref(), Some("on"));
    assert!(plugin("on = 1\ndrop = [\"$.a\"]").is_err());
}

#[test]
fn a_default_json_cannot_carry_is_refused() {
    let e = plugin("default = { '$.x' = nan }").unwrap_err();
    assert_eq!(e.key.as_deref(), Some("default"));
    assert!(plugin("default = { '$.x' = [1, inf] }").is_err());
}
