use super::*;

fn parse_str(text: &str) -> Result<Config, ConfigErrors> {
    parse("test.toml", text, Path::new("."))
}

const GOOD: &str = r#"
[server]
listen = ["127.0.0.1:8080"]
default = "monolith"
grace-period = "5s"

[upstreams.monolith]
addresses = ["127.0.0.1:8081", "127.0.0.1:8083"]

[upstreams.new-api]
url = "https://api.example.com:8443/v2/"

[[routes]]
id = "bookings"
path = "/bookings"
methods = ["get", "POST"]
legacy = "monolith"
new = "new-api"
shift = "25%"
sticky = "cookie:sid"

[[routes]]
id = "health"
path = "/health"
match = "exact"
legacy = "monolith"
"#;

#[test]
fn lowers_a_good_config() {
    let c = parse_str(GOOD).unwrap();
    assert_eq!(c.server.default.as_deref(), Some("monolith"));
    assert_eq!(c.server.grace_period, Duration::from_secs(5));
    assert_eq!(c.routes.len(), 2);
    let r = &c.routes[0];
    assert_eq!(r.shift.bp(), 2500);
    assert_eq!(r.methods.as_ref().unwrap(), &[Method::GET, Method::POST]);
    assert_eq!(r.sticky, StickyKey::Cookie("sid".into()));
    assert_eq!(c.routes[1].kind, PathMatch::Exact);
    assert_eq!(
        c.upstreams["new-api"].target,
        Target::Url {
            tls: true,
            host: "api.example.com".into(),
            port: 8443,
            base_path: "/v2".into()
        }
    );
}

#[test]
fn reports_every_problem_with_line_and_column() {
    let text = r#"
[server]
default = "monolit"
grace-period = "soon"

[upstreams.monolith]
addresses = ["127.0.0.1:8081"]

[[routes]]
id = "bookings"
path = "/bookings"
legacy = "monolith"
new = "lambda"
shift = "250%"
"#;
    let errs = parse_str(text).unwrap_err().0;
    let lines: Vec<String> = errs
        .iter()
        .map(|d| format!("{}:{}: {}", d.line, d.col, d.message))
        .collect();
    assert_eq!(errs.len(), 4, "{lines:#?}");
    assert_eq!((errs[0].line, errs[0].col), (3, 11));
    assert!(errs[0].message.contains("unknown upstream `monolit`"));
    assert_eq!(errs[0].hint.as_deref(), Some("known upstreams: monolith"));
    assert_eq!(errs[1].line, 4);
    assert!(errs[1].message.contains("bad duration"));
    assert_eq!(errs[2].line, 13);
    assert!(errs[2].message.contains("unknown upstream `lambda`"));
    assert_eq!(errs[3].line, 14);
    assert!(errs[3].message.contains("bad percent"));
    let shown = ConfigErrors(errs).to_string();
    assert!(shown.starts_with(
        "test.toml:3:11: unknown upstream `monolit`\n  = hint: known upstreams: monolith"
    ));
}

#[test]
fn unknown_keys_in_several_sections_are_all_reported() {
    let text = r#"
[server]
listen = ["127.0.0.1:8080"]
treads = 4

[upstreams.a]
adresses = ["127.0.0.1:1"]

[[routes]]
id = "r"
path = "/r"
legacy = "a"
weight = 3
"#;
    let errs = parse_str(text).unwrap_err().0;
    let lines: Vec<usize> = errs.iter().map(|d| d.line).collect();
    assert_eq!(lines, vec![4, 7, 13], "{errs:#?}");
    assert!(errs.iter().all(|d| d.message.contains("unknown field")));
}

#[test]
fn duplicate_ids_and_shadowed_routes_are_refused() {
    let text = r#"
[upstreams.a]
addresses = ["127.0.0.1:1"]

[[routes]]
id = "r"
path = "/r"
legacy = "a"

[[routes]]
id = "r"
path = "/r"
methods = ["GET"]
legacy = "a"
"#;
    let errs = parse_str(text).unwrap_err().0;
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(errs[0].message.contains("route id `r` is used twice"));
    assert!(errs[1].message.contains("overlaps route `r`"));
}

#[test]
fn sides_must_exist_for_the_shift() {
    let text = r#"
[upstreams.a]
addresses = ["127.0.0.1:1"]

[[routes]]
id = "only-legacy"
path = "/x"
legacy = "a"
shift = "5%"

[[routes]]
id = "nothing"
path = "/y"
"#;
    let errs = parse_str(text).unwrap_err().0;
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(errs[0].message.contains("has no `new` upstream"));
    assert!(errs[1].message.contains("neither `legacy` nor `new`"));
}

#[test]
fn bad_paths_addresses_and_sticky_keys_are_refused() {
    let text = r#"
[upstreams.a]
addresses = ["127.0.0.1", "host:99999"]

[upstreams.b]
url = "ftp://x"

[[routes]]
id = "r"
path = "/a//b"
legacy = "a"
sticky = "session"
"#;
    let errs = parse_str(text).unwrap_err().0;
    assert_eq!(errs.len(), 5, "{errs:#?}");
}

#[test]
fn env_and_file_references_are_interpolated() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("addr"), "127.0.0.1:9999\n").unwrap();
    std::env::set_var("STRANGLE_TEST_SHIFT", "40%");
    let text = r#"
[upstreams.a]
addresses = ["${file:addr}"]
[upstreams.b]
addresses = ["127.0.0.1:2"]
[[routes]]
id = "r"
path = "/r"
legacy = "a"
new = "b"
shift = "${env:STRANGLE_TEST_SHIFT}"
"#;
    let c = parse("t.toml", text, dir.path()).unwrap();
    assert_eq!(
        c.upstreams["a"].target,
        Target::Addresses(vec!["127.0.0.1:9999".into()])
    );
    assert_eq!(c.routes[0].shift.bp(), 4000);

    let errs = parse(
        "t.toml",
        "[server]\ndefault = \"${env:STRANGLE_TEST_UNSET_VAR}\"\n",
        dir.path(),
    )
    .unwrap_err()
    .0;
    assert!(
        errs[0]
            .message
            .contains("`STRANGLE_TEST_UNSET_VAR` is not set"),
        "{errs:#?}"
    );
}

#[test]
fn syntax_errors_point_at_the_spot() {
    let errs = parse_str("[server]\nlisten = [\"a\"\n").unwrap_err().0;
    assert_eq!(errs.len(), 1);
    assert!(errs[0].message.starts_with("invalid TOML"));
    assert!(errs[0].line >= 2);
}

#[test]
fn shipped_configs_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            load(&path).unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
        }
    }
}
