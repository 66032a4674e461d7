use std::collections::BTreeSet;

use super::*;

fn answer(status: u16, ct: &str, body: &str) -> Answer {
    Answer {
        status,
        headers: Vec::new(),
        content_type: Some(ct.to_string()),
        body: bytes::Bytes::copy_from_slice(body.as_bytes()),
        truncated: false,
    }
}

fn json(body: &str) -> Answer {
    answer(200, "application/json; charset=utf-8", body)
}

fn patterns(list: &[&str]) -> Vec<Pattern> {
    list.iter().map(|p| p.parse().unwrap()).collect()
}

fn run(a: &Answer, b: &Answer, ignore: &[&str], learned: &[&str]) -> Outcome {
    let paths = patterns(ignore);
    let learned: BTreeSet<String> = learned.iter().map(|s| s.to_string()).collect();
    compare(
        a,
        b,
        Ignore {
            paths: &paths,
            learned: &learned,
        },
    )
}

fn paths(o: &Outcome) -> Vec<&str> {
    o.differences.iter().map(|d| d.path.as_str()).collect()
}

#[test]
fn json_is_compared_by_structure_and_names_the_exact_path_that_differs() {
    let a = json(
        r#"{"id": 7, "seats": [{"no": "1A", "price": 100}, {"no": "1B", "price": 120}], "ok": true}"#,
    );
    // Same document, other key order and spacing, 100 as 100.0.
    let same = json(
        r#"{ "ok": true, "seats": [{"price": 100.0, "no": "1A"}, {"no": "1B", "price": 120}], "id": 7 }"#,
    );
    let o = run(&a, &same, &[], &[]);
    assert!(o.matched(), "{o:?}");
    assert_eq!(o.body, BodyCompared::Json);

    let wrong = json(
        r#"{"id": 7, "seats": [{"no": "1A", "price": 100}, {"no": "1B", "price": 125}], "ok": true, "extra": 1}"#,
    );
    let o = run(&a, &wrong, &[], &[]);
    // Integers past 2^53 are compared exactly.
    let ids = (
        json(r#"{"id": 9007199254740993}"#),
        json(r#"{"id": 9007199254740992}"#),
    );
    assert_eq!(paths(&run(&ids.0, &ids.1, &[], &[])), ["$.id"]);
    assert_eq!(paths(&o), ["$.seats[1].price", "$.extra"]);
    assert_eq!(o.differences[0].legacy, "120");
    assert_eq!(o.differences[0].new, "125");
    assert_eq!(o.differences[1].legacy, "(absent)");
    assert_eq!(o.count, 2);

    // An array that is shorter: the missing element by index.
    let short = json(r#"{"id": 7, "seats": [{"no": "1A", "price": 100}], "ok": true}"#);
    assert_eq!(paths(&run(&a, &short, &[], &[])), ["$.seats[1]"]);
    // A key that is not a plain name is quoted.
    let odd = run(&json(r#"{"a b": 1}"#), &json(r#"{"a b": 2}"#), &[], &[]);
    assert_eq!(paths(&odd), [r#"$["a b"]"#]);
}

#[test]
fn ignored_paths_and_learned_noise_are_left_out_and_counted() {
    let a = json(
        r#"{"timestamp": "10:00", "requestId": "a1", "meta": {"requestId": "x"}, "items": [{"id": 1, "at": 5}, {"id": 2, "at": 6}], "total": 3}"#,
    );
    let b = json(
        r#"{"timestamp": "10:01", "requestId": "b2", "meta": {"requestId": "y"}, "items": [{"id": 1, "at": 7}, {"id": 2, "at": 8}], "total": 3}"#,
    );
    let o = run(
        &a,
        &b,
        &["$.timestamp", "$..requestId", "$.items[*].at"],
        &[],
    );
    assert!(o.matched(), "{o:?}");
    assert_eq!(o.ignored, 5);
    // Learned noise is by concrete path.
    let o = run(&a, &b, &["$..requestId", "$.items[*].at"], &["$.timestamp"]);
    assert!(o.matched(), "{o:?}");
    // A real difference still shows next to ignored ones.
    let c = json(
        r#"{"timestamp": "x", "requestId": "c", "meta": {"requestId": "z"}, "items": [{"id": 1, "at": 0}, {"id": 9, "at": 0}], "total": 3}"#,
    );
    let o = run(
        &a,
        &c,
        &["$.timestamp", "$..requestId", "$.items[*].at"],
        &[],
    );
    assert_eq!(paths(&o), ["$.items[1].id"]);
}

#[test]
fn status_headers_and_non_json_bodies_are_compared_too() {
    let mut a = answer(200, "text/html", "<p>hi</p>");
    let mut b = answer(404, "text/html", "<p>hi!</p>");
    a.headers = vec![("content-type".into(), Some("text/html".into()))];
    b.headers = vec![(
        "content-type".into(),
        Some("text/html; charset=utf-8".into()),
    )];
    let o = run(&a, &b, &[], &[]);
    assert_eq!(paths(&o), ["status", "header:content-type", "body"]);
    assert_eq!(o.body, BodyCompared::Hash);
    assert!(o.differences[2].legacy.starts_with("9 bytes, xxh3 "));
    // Noise learned for the status and the header leaves the body.
    let o = run(&a, &b, &[], &["status", "header:content-type"]);
    assert_eq!(paths(&o), ["body"]);
    // JSON that does not parse is compared by hash, not refused.
    let o = run(&json("{not json"), &json("{not json"), &[], &[]);
    assert!(o.matched());
    assert_eq!(o.body, BodyCompared::Hash);
}

#[test]
fn a_body_over_the_cap_is_compared_by_the_prefix_both_captured_and_said_so() {
    let mut a = json(r#"{"big": "aaaa"#);
    let mut b = json(r#"{"big": "aaaa"#);
    a.truncated = true;
    b.truncated = true;
    let o = run(&a, &b, &[], &[]);
    assert!(o.matched());
    assert_eq!(o.body, BodyCompared::PrefixHash);
    b.body = bytes::Bytes::from_static(br#"{"big": "aaab"#);
    assert_eq!(paths(&run(&a, &b, &[], &[])), ["body"]);
    // Over the cap on one side only: they differ, whatever the first bytes say.
    let short = json(r#"{"x":1}"#);
    let mut long = json(r#"{"x":1}"#);
    long.truncated = true;
    let o = run(&short, &long, &[], &[]);
    assert_eq!(paths(&o), ["body"]);
    assert!(o.differences[0].new.contains("over the cap"));
    // A JSON body past MAX_JSON is compared by hash, not parsed.
    let big = format!("[{}0]", "0,".repeat(MAX_JSON / 2));
    let o = run(&json(&big), &json(&big), &[], &[]);
    assert!(o.matched());
    assert_eq!(o.body, BodyCompared::Hash);
}

#[test]
fn calibration_learns_the_paths_where_one_side_differs_from_itself() {
    let a = json(r#"{"now": 1, "id": 5, "trace": {"span": "x"}, "list": [1, 2]}"#);
    let b = json(r#"{"now": 2, "id": 5, "trace": {"span": "y"}, "list": [1, 2]}"#);
    assert_eq!(noise(&a, &b), ["$.now", "$.trace.span"]);
    assert!(noise(&a, &a).is_empty());
    // Never the status or a whole body: two answers that differ there are two outcomes or two
    // documents, and learning them would make every mismatch noise.
    let (x, y) = (
        answer(200, "text/plain", "a"),
        answer(200, "text/plain", "b"),
    );
    assert!(noise(&x, &y).is_empty());
    let failed = answer(503, "application/json", r#"{"now": 3, "id": 5}"#);
    assert!(noise(&a, &failed).is_empty());
    assert!(
        noise(&json("[1]"), &json(r#"{"a": 1}"#)).is_empty(),
        "the root"
    );
    let doc = |sign: i64| {
        let m: serde_json::Map<String, Value> = (0..40)
            .map(|i| (format!("k{i}"), Value::from(sign * (i + 1))))
            .collect();
        json(&Value::Object(m).to_string())
    };
    assert!(
        noise(&doc(1), &doc(-1)).is_empty(),
        "another document, not noise"
    );
}

#[test]
fn differences_kept_are_bounded_and_values_cut() {
    let many_a: serde_json::Map<String, Value> = (0..100)
        .map(|i| (format!("k{i}"), Value::from(i)))
        .collect();
    let many_b: serde_json::Map<String, Value> = (0..100)
        .map(|i| (format!("k{i}"), Value::from(i + 1)))
        .collect();
    let a = json(&Value::Object(many_a).to_string());
    let b = json(&Value::Object(many_b).to_string());
    let o = run(&a, &b, &[], &[]);
    assert_eq!(o.count, 100);
    assert_eq!(o.differences.len(), MAX_DIFFERENCES);
    let long = json(&format!(r#"{{"s": "{}"}}"#, "x".repeat(5000)));
    let o = run(&long, &json(r#"{"s": "y"}"#), &[], &[]);
    assert!(o.differences[0].legacy.len() <= MAX_SHOWN + 3);
    // Deep nesting does not exhaust the stack.
    let deep = format!("{}1{}", "[".repeat(120), "]".repeat(120));
    let deep2 = format!("{}2{}", "[".repeat(120), "]".repeat(120));
    let o = run(&json(&deep), &json(&deep2), &[], &[]);
    assert_eq!(o.count, 1);
}

#[test]
fn ignore_patterns_parse_or_say_why_not() {
    for ok in [
        "$.a",
        "$.a.b",
        "$.items[*].id",
        "$..requestId",
        "$.a[3]",
        "$['a b']",
        "$.*",
        "$",
    ] {
        assert!(ok.parse::<Pattern>().is_ok(), "{ok}");
    }
    for bad in ["a.b", "$.", "$..", "$[x]", "$.a[", "$a"] {
        let e = bad.parse::<Pattern>().unwrap_err();
        assert!(e.to_string().contains(bad), "{e}");
    }
    let p: Pattern = "$..id".parse().unwrap();
    assert!(p.matches(&[At::Key("id")]));
    assert!(p.matches(&[At::Key("a"), At::Index(3), At::Key("id")]));
    assert!(!p.matches(&[At::Key("id"), At::Key("x")]));
}
