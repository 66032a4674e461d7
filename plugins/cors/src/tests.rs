use super::*;

fn plugin(text: &str) -> Result<Box<dyn Plugin>, Error> {
    KIND.from_toml(text)
}

const APP: &str = "origins = ['https://app.example']\nmethods = ['GET', 'PUT']\nheaders = ['Content-Type', 'authorization']\nexpose = ['x-request-id']\ncredentials = true\nmax-age = 600";

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    strangle_plugin::header_map(pairs)
}

fn request(p: &dyn Plugin, method: Method, pairs: &[(&str, &str)]) -> Flow {
    let mut h = headers(pairs);
    let mut path = "/a".to_string();
    p.request(&mut Request {
        method: &method,
        path: &mut path,
        query: "",
        headers: &mut h,
        canonical: &|p| Ok(p.to_string()),
    })
}

fn response(p: &dyn Plugin, asked: &[(&str, &str)], answer: &[(&str, &str)]) -> HeaderMap {
    let asked = headers(asked);
    let mut h = headers(answer);
    let mut status = StatusCode::OK;
    p.response(&mut Response {
        method: &Method::GET,
        path: "/a",
        request_headers: &asked,
        status: &mut status,
        headers: &mut h,
    });
    h
}

fn get<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h str> {
    h.get(name).map(|v| v.to_str().unwrap())
}

#[test]
fn an_allowed_preflight_is_answered_here_with_what_the_route_allows() {
    let p = plugin(APP).unwrap();
    let asked = [
        ("origin", "https://APP.example"),
        ("access-control-request-method", "PUT"),
        ("access-control-request-headers", "content-type"),
    ];
    let Flow::Answer(a) = request(&*p, Method::OPTIONS, &asked) else {
        panic!("a preflight is answered")
    };
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_eq!(
        get(&a.headers, "access-control-allow-origin"),
        Some("https://APP.example")
    );
    assert_eq!(
        get(&a.headers, "access-control-allow-methods"),
        Some("GET, PUT")
    );
    assert_eq!(
        get(&a.headers, "access-control-allow-headers"),
        Some("content-type, authorization")
    );
    assert_eq!(
        get(&a.headers, "access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(get(&a.headers, "access-control-max-age"), Some("600"));
    assert_eq!(get(&a.headers, "vary"), Some("origin"));
}

#[test]
fn a_foreign_origin_or_method_gets_403_with_no_cors_header_and_plain_requests_pass() {
    let p = plugin(APP).unwrap();
    for asked in [
        [
            ("origin", "https://evil.example"),
            ("access-control-request-method", "GET"),
        ],
        [
            ("origin", "https://app.example.evil"),
            ("access-control-request-method", "GET"),
        ],
        [
            ("origin", "https://app.example"),
            ("access-control-request-method", "DELETE"),
        ],
    ] {
        let Flow::Answer(a) = request(&*p, Method::OPTIONS, &asked) else {
            panic!("answered")
        };
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{asked:?}");
        assert!(a.headers.is_empty(), "{asked:?}");
    }
    // Not a preflight: the side answers it.
    assert_eq!(
        request(&*p, Method::OPTIONS, &[("origin", "https://app.example")]),
        Flow::Continue
    );
    assert_eq!(
        request(&*p, Method::GET, &[("origin", "https://app.example")]),
        Flow::Continue
    );
}

#[test]
fn answers_carry_the_routes_cors_headers_never_the_sides() {
    let p = plugin(APP).unwrap();
    let side = [
        ("access-control-allow-origin", "*"),
        ("access-control-allow-methods", "DELETE"),
        ("content-type", "application/json"),
    ];
    let h = response(&*p, &[("origin", "https://app.example")], &side);
    assert_eq!(
        get(&h, "access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(get(&h, "access-control-allow-methods"), None);
    assert_eq!(
        get(&h, "access-control-expose-headers"),
        Some("x-request-id")
    );
    assert_eq!(get(&h, "access-control-allow-credentials"), Some("true"));
    assert_eq!(get(&h, "content-type"), Some("application/json"));
    // A foreign origin: nothing the side said about CORS is left.
    let h = response(&*p, &[("origin", "https://evil.example")], &side);
    assert_eq!(get(&h, "access-control-allow-origin"), None);
    // `*`, without credentials.
    let any = plugin("origins = ['*']").unwrap();
    let h = response(&*any, &[("origin", "https://x.example")], &[]);
    assert_eq!(get(&h, "access-control-allow-origin"), Some("*"));
    assert_eq!(get(&h, "vary"), None);
}

#[test]
fn settings_mistakes_are_named_at_their_key() {
    let key = |text: &str| plugin(text).unwrap_err().key;
    assert_eq!(
        plugin("methods = ['GET']").unwrap_err().key,
        None,
        "origins are required"
    );
    assert_eq!(
        key("origins = ['*']\ncredentials = true").as_deref(),
        Some("credentials")
    );
    assert_eq!(
        key("origins = ['https://a.example/path']").as_deref(),
        Some("origins")
    );
    assert_eq!(key("origins = ['app.example']").as_deref(), Some("origins"));
    assert_eq!(
        key("origins = ['https://*.example']").as_deref(),
        Some("origins")
    );
    assert_eq!(
        key("origins = ['https://a.example']\nmethods = ['GE T']").as_deref(),
        Some("methods")
    );
    assert_eq!(
        key("origins = ['https://a.example']\nheaders = ['bad name']").as_deref(),
        Some("headers")
    );
    assert_eq!(
        key("origins = ['https://a.example']\nmax-age = 100000").as_deref(),
        Some("max-age")
    );
    assert_eq!(
        key("origins = ['https://a.example']\norigin = 1").as_deref(),
        Some("origin")
    );
}
