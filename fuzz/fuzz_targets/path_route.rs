//! Path canonicalisation and route matching: never a panic; a canonical path canonicalises to
//! itself; it is absolute, has no `//` and no dot-segments; and it routes exactly as the path
//! the upstream receives (the canonical form) would.
#![no_main]

use std::sync::OnceLock;

use http::Method;
use libfuzzer_sys::fuzz_target;
use strangle::routing::{
    canonicalize, check_query, without_params, PathMatch, PathParams, RouteKey, RouteTable,
};

fn table() -> &'static RouteTable {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let key = |path: &str, kind, ci, ts| RouteKey {
            path: path.into(),
            kind,
            methods: None,
            case_insensitive: ci,
            trailing_slash: ts,
        };
        RouteTable::new(vec![
            key("/admin", PathMatch::Prefix, true, false),
            key("/account", PathMatch::Exact, false, true),
            key("/bookings", PathMatch::Prefix, false, false),
            key("/bookings/search", PathMatch::Exact, true, false),
            key("/caf%C3%A9", PathMatch::Prefix, false, false),
            key("/", PathMatch::Prefix, false, false),
        ])
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = check_query(data);
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    for params in [PathParams::Reject, PathParams::Keep] {
        let Ok(once) = canonicalize(raw, params) else {
            continue;
        };
        let twice = canonicalize(&once, params).expect("a canonical path is valid");
        assert_eq!(&*once, &*twice, "not idempotent: {raw:?}");
        assert!(once.starts_with('/'));
        assert!(!once.contains("//"), "{once:?}");
        assert!(once.split('/').all(|s| s != "." && s != ".."), "{once:?}");
        assert!(once.is_ascii());
        let routed = without_params(&once);
        let forwarded = without_params(&twice);
        assert_eq!(
            table().lookup(&routed, &Method::GET),
            table().lookup(&forwarded, &Method::GET)
        );
    }
});
