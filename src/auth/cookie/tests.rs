use http::header::{HeaderMap, HeaderValue, COOKIE};

use super::{token_cookie, Ambiguous};

fn headers(fields: &[&str]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for f in fields {
        h.append(COOKIE, HeaderValue::from_str(f).unwrap());
    }
    h
}

fn found(fields: &[&str]) -> Result<Option<String>, Ambiguous> {
    token_cookie(&headers(fields), "id_token")
        .map(|v| v.map(|v| String::from_utf8(v.to_vec()).unwrap()))
}

#[test]
fn one_copy_is_found_among_others_in_any_field() {
    assert_eq!(found(&["id_token=abc"]), Ok(Some("abc".into())));
    assert_eq!(
        found(&["theme=dark; id_token=abc ; lang=en"]),
        Ok(Some("abc".into()))
    );
    assert_eq!(
        found(&["theme=dark", "id_token=\"abc\""]),
        Ok(Some("abc".into()))
    );
    // Names that only contain or extend it are other cookies.
    assert_eq!(found(&["my_id_token=x; id_tokens=y"]), Ok(None));
    assert_eq!(found(&["x=id_token=y"]), Ok(None));
    assert_eq!(found(&[]), Ok(None));
    assert_eq!(found(&["id_token="]), Ok(None));
    assert_eq!(found(&["id_token"]), Ok(None));
}

#[test]
fn a_second_copy_anywhere_is_refused() {
    for fields in [
        &["id_token=good; id_token=forged"][..],
        &["id_token=good", "id_token=forged"],
        // An empty first copy does not make the second one the only one.
        &["id_token=; id_token=forged"],
        &["id_token; id_token=forged"],
        // Even the same value twice: nothing is gained by allowing it.
        &["id_token=a; id_token=a"],
    ] {
        assert_eq!(found(fields), Err(Ambiguous::Twice), "{fields:?}");
    }
}

#[test]
fn names_frameworks_read_as_the_token_are_copies() {
    for alike in [
        "id_token =forged",  // Node's cookie, Python's SimpleCookie trim the name
        "ID_TOKEN=forged",   // case-folding readers
        "id%5Ftoken=forged", // Rack percent-decodes names
        "id%5ftoken=forged",
        "id.token=forged", // PHP: `.`, ` ` and `[` become `_`
        "id token=forged",
        "id[token=forged",
        "%20id_token=forged", // decoded, then trimmed
        "id_token%20=forged",
        "id_token\t=forged",
    ] {
        assert_eq!(
            found(&[&format!("id_token=good; {alike}")]),
            Err(Ambiguous::Twice),
            "{alike} next to the real one"
        );
        // Alone it is refused too: the upstream would read it as the token strangle never saw.
        assert_eq!(found(&[alike]), Err(Ambiguous::Twice), "{alike} alone");
    }
    // Blanks beyond ASCII (Werkzeug, Node and Django trim them), blanks and commas as
    // separators (`SimpleCookie`; servlet containers and old Rack split on `,`), PHP's `+` and
    // arrays: each is the token to some framework (found by an adversarial review).
    for spoof in [
        "\u{a0}id_token=forged; id_token=good",
        "id_token\u{a0}=forged; id_token=good",
        "id_token=good; x=1 id_token=forged",
        "id_token=good; x=1\tid_token=forged",
        "id_token=good; x=1, id_token=forged",
        "$Version=1; x=1, id_token=forged; id_token=good",
        "id_token=good; id+token=forged",
        "id_token=good; id_token[0]=forged",
        "id_token=good; x=\"a;id_token=b\"",
    ] {
        assert_eq!(found(&[spoof]), Err(Ambiguous::Twice), "{spoof:?}");
    }
    let raw = |bytes: &[u8]| {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_bytes(bytes).unwrap());
        token_cookie(&h, "id_token").map(|v| v.map(<[u8]>::to_vec))
    };
    for bytes in [
        &b"\xa0id_token=forged; id_token=good"[..],
        b"\x85id_token=forged; id_token=good",
        b"id_token\xa0=forged; id_token=good",
        b"id_token=good; \xc2\xa0id_token=forged",
    ] {
        assert_eq!(raw(bytes), Err(Ambiguous::Twice), "{bytes:?}");
    }
    assert_eq!(
        raw(b"a=\xc3\xa9; id_token=good"),
        Ok(Some(b"good".to_vec()))
    );
    // A malformed escape is not decoded, so it is another name.
    assert_eq!(
        found(&["id%5token=x; id_token=good"]),
        Ok(Some("good".into()))
    );
}

#[test]
fn a_huge_cookie_header_is_scanned_without_being_fooled() {
    let many = (0..2000)
        .map(|i| format!("c{i}=v"))
        .collect::<Vec<_>>()
        .join("; ");
    assert_eq!(
        found(&[&format!("{many}; id_token=t")]),
        Ok(Some("t".into()))
    );
    assert_eq!(
        found(&[&format!("id_token=t; {many}; Id_Token=u")]),
        Err(Ambiguous::Twice)
    );
}
