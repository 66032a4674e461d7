use bytes::BytesMut;

use super::*;

/// A request head as Pingora's HTTP/1 parser leaves it: with each name's case as received.
fn parsed(target: &[u8], headers: &[(&str, &str)]) -> RequestHeader {
    let mut req = RequestHeader::build("GET", target, None).unwrap();
    for (name, value) in headers {
        req.append_header(name.to_string(), *value).unwrap();
    }
    req
}

fn wire(req: &RequestHeader) -> Vec<u8> {
    let mut out = BytesMut::new();
    req.header_to_h1_wire(&mut out);
    out.to_vec()
}

/// The upstream head starts as exactly what `RequestHeader::clone` (Pingora's proxy) gives:
/// the same target bytes, the same names in the same case, repeated headers in order.
#[test]
fn the_upstream_head_is_the_clients_as_a_clone_would_be() {
    let req = parsed(
        b"/bookings/a%2Fb;x/./c?q=1&q=2#no",
        &[
            ("Host", "example.test"),
            ("X-User-Id", "user-1"),
            ("accept", "*/*"),
            ("X-Multi", "one"),
            ("COOKIE", "a=1"),
            ("x-multi", "two"),
            ("X-Multi", "three"),
        ],
    );
    let copy = upstream_head(&req);
    let clone = req.clone();
    assert_eq!(copy.method, clone.method);
    assert_eq!(copy.raw_path(), clone.raw_path());
    assert_eq!(copy.uri, clone.uri);
    assert_eq!(wire(&copy), wire(&clone));
    assert_eq!(
        copy.headers.get_all("x-multi").iter().collect::<Vec<_>>(),
        ["one", "two", "three"]
    );
    assert!(copy.has_case());
    // With room for what the policy adds, so setting it grows neither map.
    assert!(
        copy.headers.capacity() >= req.headers.len() + POLICY_ROOM,
        "{} < {}",
        copy.headers.capacity(),
        req.headers.len() + POLICY_ROOM
    );
}

/// The policy's own headers land in the copy (with room made for them) as in a clone, and a
/// head without the names' case is cloned as it is.
#[test]
fn the_policys_headers_are_set_on_the_copy_as_on_a_clone() {
    use crate::pipeline::outbound::Headers as _;
    let req = parsed(b"/a", &[("Host", "h"), ("X-Forwarded-For", "6.6.6.6")]);
    let (mut copy, mut clone) = (upstream_head(&req), req.clone());
    for up in [&mut copy, &mut clone] {
        up.set_static(
            "x-forwarded-for",
            http::HeaderValue::from_static("10.0.0.1"),
        );
        up.set_static("x-request-id", http::HeaderValue::from_static("abc"));
        up.set(
            http::HeaderName::from_static("x-user-id"),
            http::HeaderValue::from_static("user-1"),
        );
    }
    assert_eq!(wire(&copy), wire(&clone));
    let text = String::from_utf8(wire(&copy)).unwrap();
    assert!(text.contains("x-forwarded-for: 10.0.0.1\r\n"), "{text}");
    assert!(!text.contains("6.6.6.6"), "{text}");

    let no_case = RequestHeader::build_no_case("GET", b"/b", None).unwrap();
    assert_eq!(upstream_head(&no_case).raw_path(), b"/b");
}
