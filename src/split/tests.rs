use super::*;

#[test]
fn parses_the_documented_percent_forms() {
    assert_eq!(Shift::parse("25%").unwrap().bp(), 2500);
    assert_eq!(Shift::parse("25").unwrap().bp(), 2500);
    assert_eq!(Shift::parse("0.5%").unwrap().bp(), 50);
    assert_eq!(Shift::parse("12.34%").unwrap().bp(), 1234);
    assert_eq!(Shift::parse("100%").unwrap(), Shift::ALL);
    assert_eq!(Shift::parse("0").unwrap(), Shift::ZERO);
    for bad in [
        "", "%", "101%", "-1%", "1.234%", "abc", "25%%", "1e2", ".5", "5.", "1000",
    ] {
        assert!(Shift::parse(bad).is_err(), "{bad:?} should be refused");
    }
}

#[test]
fn displays_as_written() {
    for text in ["0%", "0.5%", "25%", "12.34%", "100%", "0.05%"] {
        assert_eq!(Shift::parse(text).unwrap().to_string(), text);
    }
}

#[test]
fn sticky_keys_parse() {
    assert_eq!(StickyKey::parse("ip").unwrap(), StickyKey::Ip);
    assert_eq!(StickyKey::parse("none").unwrap(), StickyKey::None);
    assert_eq!(
        StickyKey::parse("cookie:sid").unwrap(),
        StickyKey::Cookie("sid".into())
    );
    assert_eq!(
        StickyKey::parse("jwt:sub").unwrap(),
        StickyKey::Jwt("sub".into())
    );
    assert!(
        matches!(StickyKey::parse("header:X-User").unwrap(), StickyKey::Header(h) if h == "x-user")
    );
    assert!(StickyKey::parse("header:bad header").is_err());
    assert!(StickyKey::parse("session").is_err());
    assert!(StickyKey::parse("cookie:").is_err());
}

#[test]
fn cookie_lookup_finds_the_named_cookie_only() {
    let mut h = HeaderMap::new();
    h.append(COOKIE, "a=1; sidx=2".parse().unwrap());
    h.append(COOKIE, "sid=\"abc\"; b=3".parse().unwrap());
    assert_eq!(cookie(&h, "sid"), Some(&b"abc"[..]));
    assert_eq!(cookie(&h, "b"), Some(&b"3"[..]));
    assert_eq!(cookie(&h, "c"), None);
}

#[test]
fn ten_thousand_keys_split_within_one_and_a_half_points() {
    let seed = route_seed("bookings");
    let shift = Shift::parse("25%").unwrap();
    let new = (0..10_000)
        .filter(|i| {
            let key = format!("user-{i}");
            side_for(bucket(seed, KeyValue::Bytes(key.as_bytes())), shift) == Side::New
        })
        .count();
    assert!((2350..=2650).contains(&new), "new side got {new} of 10000");
}

#[test]
fn a_key_always_lands_on_one_side_and_raising_never_moves_back() {
    let seed = route_seed("bookings");
    let (at25, at50) = (Shift::parse("25%").unwrap(), Shift::parse("50%").unwrap());
    for i in 0..10_000 {
        let key = format!("user-{i}");
        let b = bucket(seed, KeyValue::Bytes(key.as_bytes()));
        assert_eq!(b, bucket(seed, KeyValue::Bytes(key.as_bytes())));
        if side_for(b, at25) == Side::New {
            assert_eq!(
                side_for(b, at50),
                Side::New,
                "{key} moved back when the shift rose"
            );
        }
    }
}

#[test]
fn routes_hash_independently() {
    let (a, b) = (route_seed("bookings"), route_seed("flights"));
    let same = (0..1000)
        .filter(|i| {
            let key = format!("u{i}");
            let k = KeyValue::Bytes(key.as_bytes());
            (bucket(a, k.clone()) < 5000) == (bucket(b, k) < 5000)
        })
        .count();
    assert!((400..=600).contains(&same), "routes correlate: {same}/1000");
}

#[test]
fn a_percent_with_spaces_is_refused_and_a_long_one_is_echoed_short() {
    for bad in ["25 %", " 25%", "25% ", "2 5", "\t25"] {
        assert!(Shift::parse(bad).is_err(), "{bad:?} should be refused");
    }
    let long = "9".repeat(10_000);
    let message = Shift::parse(&long).unwrap_err().to_string();
    assert!(message.len() < 250, "{message}");
    assert!(
        message.contains(&format!("`{}...`", "9".repeat(100))),
        "{message}"
    );
}
