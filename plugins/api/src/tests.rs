use super::*;

fn table(text: &str) -> toml::Table {
    text.parse().unwrap()
}

#[test]
fn getters_type_check_and_unknown_keys_are_refused_with_the_known_ones() {
    let t = table("from = \"^/a$\"\nto = 3\nextra = true\nlist = [\"a\", 1]");
    let s = Settings::new(&t);
    assert_eq!(s.string("from").unwrap(), Some("^/a$"));
    assert_eq!(
        s.string("to").unwrap_err(),
        Error::at("to", "a string, not integer")
    );
    assert_eq!(
        s.strings("list").unwrap_err(),
        Error::at("list", "strings, not integer")
    );
    assert_eq!(s.required("missing").unwrap_err().key, None);
    let e = s.finish("rewrite-path").unwrap_err();
    assert_eq!(e.key.as_deref(), Some("extra"));
    assert_eq!(
        e.hint.as_deref(),
        Some("`rewrite-path` takes from, list, missing, to")
    );
}

#[test]
fn header_names_are_lowered_and_bad_ones_named() {
    assert_eq!(header_name("set", "X-Api").unwrap().as_str(), "x-api");
    assert_eq!(
        header_name("set", "bad name").unwrap_err(),
        Error::at("set", "`bad name` is not a header name")
    );
    assert!(header_value("set", "a\nb").is_err());
}

#[test]
fn a_header_map_takes_changes_through_the_trait() {
    let mut h = HeaderMap::new();
    let name = HeaderName::from_static("x-a");
    Headers::set(&mut h, name.clone(), HeaderValue::from_static("1"));
    Headers::append(&mut h, name.clone(), HeaderValue::from_static("2"));
    assert_eq!(h.get_all(&name).iter().count(), 2);
    Headers::remove(&mut h, &name);
    assert!(Headers::map(&h).is_empty());
}
