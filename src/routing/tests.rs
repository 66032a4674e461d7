use super::*;

fn key(path: &str, kind: PathMatch, methods: Option<&[&str]>) -> RouteKey {
    RouteKey {
        path: path.into(),
        kind,
        methods: methods.map(|m| m.iter().map(|m| m.parse().unwrap()).collect()),
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
    assert!(matches!(normalize("/bookings/42"), Ok(Cow::Borrowed(_))));
    assert!(matches!(
        normalize("/a/.well-known/x"),
        Ok(Cow::Borrowed(_))
    ));
    assert!(matches!(normalize("/a%20b"), Ok(Cow::Borrowed(_))));
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
        assert_eq!(normalize(input).unwrap(), want, "{input}");
    }
}

#[test]
fn hostile_paths_are_refused() {
    assert_eq!(normalize("/a%2Fb"), Err(PathError::EncodedSeparator));
    assert_eq!(normalize("/a%2fb"), Err(PathError::EncodedSeparator));
    assert_eq!(normalize("/a%5Cb"), Err(PathError::EncodedSeparator));
    assert_eq!(normalize("/a%5cb"), Err(PathError::EncodedSeparator));
    assert_eq!(normalize("/a\\b"), Err(PathError::ForbiddenByte));
    assert_eq!(normalize("/a#b"), Err(PathError::ForbiddenByte));
    assert_eq!(normalize("/a\x01"), Err(PathError::InvalidByte));
    assert_eq!(normalize("/a%zz"), Err(PathError::BadEscape));
    assert_eq!(normalize("/a%2"), Err(PathError::BadEscape));
    assert_eq!(normalize("a"), Err(PathError::NotAbsolute));
}
