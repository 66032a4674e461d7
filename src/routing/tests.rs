use std::borrow::Cow;

use super::*;

fn canon(path: &str) -> Result<Cow<'_, str>, PathError> {
    canonicalize(path, PathParams::Reject)
}

fn key(path: &str, kind: PathMatch, methods: Option<&[&str]>) -> RouteKey {
    RouteKey {
        path: path.into(),
        kind,
        methods: methods.map(|m| m.iter().map(|m| m.parse().unwrap()).collect()),
        case_insensitive: false,
        trailing_slash: false,
        hosts: Vec::new(),
        when: None,
    }
}

#[test]
fn prefixes_are_segment_aware() {
    let t = RouteTable::new(vec![key("/bookings", PathMatch::Prefix, None)]);
    for p in [
        "/bookings",
        "/bookings/",
        "/bookings/42",
        "/bookings/42/seats",
    ] {
        assert_eq!(t.lookup(p, &Method::GET), Some(0), "{p}");
    }
    for p in ["/bookingsx", "/booking", "/", "/x/bookings"] {
        assert_eq!(t.lookup(p, &Method::GET), None, "{p}");
    }
}

#[test]
fn exact_beats_longest_prefix_beats_shorter_and_first_declared_wins() {
    let t = RouteTable::new(vec![
        key("/api", PathMatch::Prefix, None),
        key("/api/bookings", PathMatch::Prefix, None),
        key("/api/bookings/search", PathMatch::Exact, None),
        key("/api/bookings", PathMatch::Prefix, None),
        key("/", PathMatch::Prefix, None),
    ]);
    assert_eq!(t.lookup("/api/bookings/search", &Method::GET), Some(2));
    assert_eq!(t.lookup("/api/bookings/search/x", &Method::GET), Some(1));
    assert_eq!(t.lookup("/api/bookings/1", &Method::GET), Some(1));
    assert_eq!(t.lookup("/api/flights", &Method::GET), Some(0));
    assert_eq!(t.lookup("/other", &Method::GET), Some(4));
    assert_eq!(t.lookup("/", &Method::GET), Some(4));
}

#[test]
fn methods_filter_and_fall_through() {
    let t = RouteTable::new(vec![
        key("/bookings", PathMatch::Prefix, Some(&["POST"])),
        key("/bookings", PathMatch::Prefix, Some(&["GET", "HEAD"])),
        key("/", PathMatch::Prefix, None),
    ]);
    assert_eq!(t.lookup("/bookings/1", &Method::POST), Some(0));
    assert_eq!(t.lookup("/bookings/1", &Method::GET), Some(1));
    assert_eq!(t.lookup("/bookings/1", &Method::DELETE), Some(2));
}

#[test]
fn shadowing_is_detected() {
    let all = key("/a", PathMatch::Prefix, None);
    let get = key("/a", PathMatch::Prefix, Some(&["GET"]));
    let post = key("/a", PathMatch::Prefix, Some(&["POST"]));
    assert!(all.shadows(&get));
    assert!(!get.shadows(&all));
    assert!(!get.shadows(&post));
    assert!(!all.shadows(&key("/a", PathMatch::Exact, None)));
}

#[test]
fn clean_paths_are_borrowed() {
    assert!(matches!(canon("/bookings/42"), Ok(Cow::Borrowed(_))));
    assert!(matches!(canon("/a/.well-known/x"), Ok(Cow::Borrowed(_))));
    assert!(matches!(canon("/a%20b"), Ok(Cow::Borrowed(_))));
}

#[test]
fn dot_segments_and_slashes_are_resolved() {
    let cases = [
        ("//bookings///42", "/bookings/42"),
        ("/a/./b", "/a/b"),
        ("/a/../bookings", "/bookings"),
        ("/../../etc/passwd", "/etc/passwd"),
        ("/a/b/..", "/a/"),
        ("/a/.", "/a/"),
        ("/a/%2e%2e/b", "/b"),
        ("/a/%2E%2E/%2e/b", "/b"),
        ("/bookings/", "/bookings/"),
        ("/..", "/"),
        ("//", "/"),
    ];
    for (input, want) in cases {
        assert_eq!(canon(input).unwrap(), want, "{input}");
    }
}

#[test]
fn hostile_paths_are_refused() {
    assert_eq!(canon("/a%2Fb"), Err(PathError::EncodedSeparator));
    assert_eq!(canon("/a%2fb"), Err(PathError::EncodedSeparator));
    assert_eq!(canon("/a%5Cb"), Err(PathError::EncodedSeparator));
    assert_eq!(canon("/a%5cb"), Err(PathError::EncodedSeparator));
    assert_eq!(canon("/a\\b"), Err(PathError::ForbiddenByte));
    assert_eq!(canon("/a#b"), Err(PathError::ForbiddenByte));
    assert_eq!(canon("/a\x01"), Err(PathError::InvalidByte));
    assert_eq!(canon("/a%zz"), Err(PathError::BadEscape));
    assert_eq!(canon("/a%2"), Err(PathError::BadEscape));
    assert_eq!(canon("a"), Err(PathError::NotAbsolute));
}

#[test]
fn escapes_are_canonical() {
    let cases = [
        ("/%61dmin/secret", "/admin/secret"),
        ("/%41%42%7e%2D%5f", "/AB~-_"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/a%20b", "/a%20b"),
        ("/a|b", "/a%7Cb"),
        ("/a%7cb", "/a%7Cb"),
        ("/x/%2e%2E/admin", "/admin"),
        ("/x/.%2e/admin", "/admin"),
        ("/a%25b", "/a%25b"),
        ("/a\"b", "/a%22b"),
    ];
    for (input, want) in cases {
        assert_eq!(canon(input).unwrap(), want, "{input}");
    }
}

#[test]
fn encoded_controls_bad_utf8_and_parameters_are_refused() {
    for p in ["/admin%00", "/a%0a", "/a%0D", "/a%1f", "/a%7F"] {
        assert_eq!(canon(p), Err(PathError::EncodedControl), "{p}");
    }
    // Overlong `/` and `.`, a lone continuation byte, a surrogate, a truncated sequence.
    for p in [
        "/a%C0%AF",
        "/%C0%AE%C0%AE/x",
        "/a%80",
        "/a%ED%A0%80",
        "/a%E2%82",
    ] {
        assert_eq!(canon(p), Err(PathError::InvalidUtf8), "{p}");
    }
    assert_eq!(canon("/caf%C3%A9").unwrap(), "/caf%C3%A9");
    for p in ["/admin;x=1", "/admin%3bx", "/a;/b"] {
        assert_eq!(canon(p), Err(PathError::PathParameter), "{p}");
    }
    let keep = |p| canonicalize(p, PathParams::Keep);
    assert_eq!(keep("/admin;jsessionid=1").unwrap(), "/admin;jsessionid=1");
    assert_eq!(keep("/admin%3Bx"), Err(PathError::PathParameter));
    assert_eq!(without_params("/admin;jsessionid=1/x;y"), "/admin/x");
    for p in ["/public/..;/admin", "/a/.;x/b", "/;x/admin"] {
        assert_eq!(keep(p), Err(PathError::DotParameter), "{p}");
    }
    assert_eq!(check_query(b"?a=1&b=%41"), Ok(()));
    for q in [
        &b"?a=%00"[..],
        b"?a=%0a",
        b"?a=\x01",
        b"?a=#b",
        "?a=é".as_bytes(),
        b"?a=\xff",
    ] {
        assert!(check_query(q).is_err(), "{q:?}");
    }
}

#[test]
fn case_insensitive_routes_and_trailing_slashes() {
    let mut account = key("/account", PathMatch::Exact, None);
    account.trailing_slash = true;
    let mut admin = key("/Admin", PathMatch::Prefix, None);
    admin.case_insensitive = true;
    let t = RouteTable::new(vec![
        account,
        admin,
        key("/admin/open", PathMatch::Prefix, None),
    ]);
    assert_eq!(t.lookup("/account", &Method::GET), Some(0));
    assert_eq!(t.lookup("/account/", &Method::GET), Some(0));
    assert_eq!(t.lookup("/account/x", &Method::GET), None);
    assert_eq!(t.lookup("/ACCOUNT", &Method::GET), None);
    for p in ["/admin", "/ADMIN/x", "/aDmIn/", "/Admin"] {
        assert_eq!(t.lookup(p, &Method::GET), Some(1), "{p}");
    }
    // The longer prefix still wins, and is itself case-sensitive.
    assert_eq!(t.lookup("/admin/open/1", &Method::GET), Some(2));
    assert_eq!(t.lookup("/ADMIN/OPEN/1", &Method::GET), Some(1));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Path pieces that exercise every branch: escapes of every kind, dots, slashes, case.
    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9]{1,4}",
            Just("/".to_string()),
            Just("//".to_string()),
            Just(".".to_string()),
            Just("..".to_string()),
            Just("%2e".to_string()),
            Just("%2E".to_string()),
            Just("%41".to_string()),
            Just("%61".to_string()),
            Just("%7e".to_string()),
            Just("%20".to_string()),
            Just("%c3%a9".to_string()),
            Just("%25".to_string()),
            Just("|".to_string()),
            Just("~".to_string()),
            Just("admin".to_string()),
            Just("ADMIN".to_string()),
            Just("bookings".to_string()),
            (0u8..=255).prop_map(|b| format!("%{b:02x}")),
            (0x20u8..0x7f).prop_map(|b| (b as char).to_string()),
        ]
    }

    fn table() -> RouteTable {
        let mut admin = key("/admin", PathMatch::Prefix, None);
        admin.case_insensitive = true;
        let mut account = key("/account", PathMatch::Exact, None);
        account.trailing_slash = true;
        RouteTable::new(vec![
            admin,
            account,
            key("/bookings", PathMatch::Prefix, Some(&["GET"])),
            key("/~x", PathMatch::Prefix, None),
            key("/bookings/a%20b", PathMatch::Exact, None),
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        #[test]
        fn canonical_is_idempotent_and_routes_alike(pieces in prop::collection::vec(piece(), 0..12)) {
            let raw = format!("/{}", pieces.concat());
            let table = table();
            for params in [PathParams::Reject, PathParams::Keep] {
                if let Ok(once) = canonicalize(&raw, params) {
                    let twice = canonicalize(&once, params);
                    prop_assert_eq!(twice.as_deref(), Ok(&*once), "not idempotent: {}", raw);
                    // What the upstream receives routes exactly as what the client sent.
                    let forwarded = once.to_string();
                    prop_assert_eq!(
                        table.lookup(&once, &Method::GET),
                        table.lookup(&canonicalize(&forwarded, params).unwrap(), &Method::GET)
                    );
                    prop_assert!(once.starts_with('/'));
                    prop_assert!(!once.contains("//"));
                    prop_assert!(once.split('/').all(|s| s != "." && s != ".."));
                }
            }
        }
    }
}

fn hosted(path: &str, kind: PathMatch, hosts: &[&str]) -> RouteKey {
    RouteKey {
        hosts: hosts
            .iter()
            .map(|h| HostPattern::parse(h).unwrap())
            .collect(),
        ..key(path, kind, None)
    }
}

fn on_host<'a>(host: Option<&'a str>, path: &'a str) -> Query<'a> {
    Query {
        host,
        path,
        method: &Method::GET,
        head: None,
    }
}

#[test]
fn a_route_for_the_host_beats_one_for_any_host_then_paths_decide() {
    let t = RouteTable::new(vec![
        key("/bookings", PathMatch::Prefix, None), // 0: any host
        hosted("/bookings", PathMatch::Prefix, &["api.example.com"]), // 1
        hosted("/", PathMatch::Prefix, &["*.partner.example"]), // 2
        hosted("/bookings/v2", PathMatch::Prefix, &["*.partner.example"]), // 3
        hosted("/orders", PathMatch::Exact, &["API.Example.com."]), // 4: the same host
    ]);
    assert!(t.has_hosts());
    let find = |host, path| t.find(&on_host(host, path));
    assert_eq!(find(Some("api.example.com"), "/bookings/1"), Some(1));
    assert_eq!(find(Some("www.example.com"), "/bookings/1"), Some(0));
    assert_eq!(find(None, "/bookings/1"), Some(0));
    // For its host, a route beats any host-less one, even a longer path's.
    assert_eq!(find(Some("a.partner.example"), "/bookings/1"), Some(2));
    assert_eq!(find(Some("a.partner.example"), "/bookings/v2/1"), Some(3));
    // A wildcard is one label: not the parent itself, not two labels.
    assert_eq!(find(Some("partner.example"), "/bookings/1"), Some(0));
    assert_eq!(find(Some("a.b.partner.example"), "/bookings/1"), Some(0));
    assert_eq!(find(Some("api.example.com"), "/orders"), Some(4));
    // The host's routes are tried first, then those for any host.
    assert_eq!(find(Some("api.example.com"), "/other"), None);
}

#[test]
fn hosts_are_compared_without_case_port_or_final_dot() {
    use super::host::normalize;
    for (authority, want) in [
        ("API.Example.com", Some("api.example.com")),
        ("api.example.com:8443", Some("api.example.com")),
        ("api.example.com.", Some("api.example.com")),
        ("api.example.com.:80", Some("api.example.com")),
        ("[::1]:8080", Some("[::1]")),
        ("[::1]", Some("[::1]")),
        ("", None),
        ("host:port", None),
        ("bücher.example", None),
        ("[::1", None),
    ] {
        assert_eq!(normalize(authority).as_deref(), want, "{authority}");
    }
    for bad in [
        "",
        "*",
        "*.",
        "a.*.com",
        "**.a.com",
        "api.example.com:443",
        "https://api.example.com",
        "api.example.com/x",
        "a..b",
        "a b",
        "*.[::1]",
    ] {
        assert!(HostPattern::parse(bad).is_err(), "{bad}");
    }
    assert_eq!(
        HostPattern::parse("*.Partner.Example.").unwrap(),
        HostPattern::Wildcard("partner.example".into())
    );
}

fn conditioned(path: &str, header: &[(&str, &str)], query: &[(&str, &str)]) -> RouteKey {
    RouteKey {
        when: Some(Arc::new(Conditions {
            headers: header
                .iter()
                .map(|(n, v)| {
                    (
                        http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                        Cond::parse(v),
                    )
                })
                .collect(),
            query: query
                .iter()
                .map(|(n, v)| (n.to_string(), Cond::parse(v)))
                .collect(),
        })),
        ..key(path, PathMatch::Prefix, None)
    }
}

#[test]
fn a_route_with_conditions_beats_the_same_path_without_when_they_hold() {
    let t = RouteTable::new(vec![
        key("/bookings", PathMatch::Prefix, None), // 0
        conditioned("/bookings", &[("x-api-version", "2")], &[]), // 1
        conditioned("/bookings", &[], &[("beta", "1"), ("debug", "absent")]), // 2
        conditioned("/bookings", &[("x-canary", "present")], &[]), // 3
    ]);
    assert!(t.has_conditions());
    let find = |headers: &[(&str, &str)], query: &str| {
        let mut h = http::HeaderMap::new();
        for (n, v) in headers {
            h.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        t.find(&Query {
            host: None,
            path: "/bookings/1",
            method: &Method::GET,
            head: Some((&h, &QueryParams::new(query))),
        })
    };
    assert_eq!(find(&[], ""), Some(0));
    assert_eq!(find(&[("x-api-version", "2")], ""), Some(1));
    assert_eq!(find(&[("X-API-Version", "2")], ""), Some(1));
    assert_eq!(find(&[("x-api-version", "3")], ""), Some(0));
    assert_eq!(find(&[("x-api-version", " 2")], ""), Some(0));
    // Given twice, a value is believed neither way.
    assert_eq!(
        find(&[("x-api-version", "2"), ("x-api-version", "1")], ""),
        Some(0)
    );
    assert_eq!(find(&[], "beta=1"), Some(2));
    assert_eq!(find(&[], "a=b&beta=%31"), Some(2), "compared decoded");
    assert_eq!(find(&[], "beta=1&debug"), Some(0), "`debug` must be absent");
    assert_eq!(find(&[], "beta=1&beta=1"), Some(0));
    assert_eq!(find(&[], "betax=1"), Some(0));
    assert_eq!(find(&[("x-canary", "")], ""), Some(3));
    // Both hold: the first declared of those with conditions.
    assert_eq!(
        find(&[("x-api-version", "2"), ("x-canary", "y")], ""),
        Some(1)
    );
    // Without a head to judge, no route with conditions matches.
    assert_eq!(t.find(&Query::path("/bookings/1", &Method::GET)), Some(0));
}

#[test]
fn overlaps_count_hosts_and_conditions() {
    let any = key("/a", PathMatch::Prefix, None);
    let api = hosted("/a", PathMatch::Prefix, &["api.example.com"]);
    let both = hosted(
        "/a",
        PathMatch::Prefix,
        &["api.example.com", "*.example.com"],
    );
    let v2 = conditioned("/a", &[("x-api-version", "2")], &[]);
    let v2_beta = conditioned("/a", &[("x-api-version", "2")], &[("beta", "1")]);
    // A route for a host is not shadowed by one for any host (it comes first), nor the reverse.
    assert!(!any.shadows(&api) && !api.shadows(&any));
    assert!(both.shadows(&api) && !api.shadows(&both));
    // A route with conditions comes before one without; more conditions are taken by fewer.
    assert!(!any.shadows(&v2) && !v2.shadows(&any));
    assert!(v2.shadows(&v2_beta) && !v2_beta.shadows(&v2));
}
