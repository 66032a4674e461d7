use super::*;
use crate::routing::HostPattern;

/// `want` is in one of the reported messages.
#[track_caller]
fn assert_reported<S: AsRef<str> + std::fmt::Debug>(all: &[S], want: &str) {
    assert!(
        all.iter().any(|e| e.as_ref().contains(want)),
        "{want} not in {all:#?}"
    );
}

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

// ---- lowering from strings: everything read comes through `Inputs` ---------------------------

/// The directory the configs below live in: absolute, so the map keys are the joined paths.
const BASE: &str = "/etc/strangle";

fn lower_with(text: &str, inputs: &Fixed) -> Result<Config, ConfigErrors> {
    parse_with("t.toml", text, Path::new(BASE), inputs)
}

fn ca_pem() -> (String, Vec<u8>) {
    let key = rcgen::generate_simple_self_signed(vec!["upstream.test".to_string()]).unwrap();
    (key.cert.pem(), key.cert.der().to_vec())
}

const KEY_TEXT: &str =
    "-----BEGIN PUBLIC KEY-----\nnot checked at load\n-----END PUBLIC KEY-----\n";

const FROM_STRINGS: &str = r#"
[admin]
token = "${file:secrets/admin-token}"

[upstreams.secure]
url = "https://upstream.test/v1"
ca-file = "tls/ca.pem"

[upstreams.fn]
kind = "lambda"
function = "bookings"

[auth.users]
keys = ["k.pem"]
issuer = "https://issuer.test/"
audiences = ["bookings"]
algorithms = ["RS256"]

[[routes]]
id = "r"
path = "/r"
legacy = "secure"
new = "fn"
shift = "${env:SHIFT}"
auth = "users"
"#;

fn from_strings_inputs(ca: &str) -> Fixed {
    Fixed::new()
        .with_var("SHIFT", "12.5%")
        .with_var("AWS_REGION", "eu-west-1")
        .with_file("/etc/strangle/secrets/admin-token", "s3cret\n")
        .with_file("/etc/strangle/tls/ca.pem", ca)
        .with_file("/etc/strangle/k.pem", KEY_TEXT)
}

#[test]
fn a_config_lowers_from_strings_alone() {
    let (pem, der) = ca_pem();
    let c = lower_with(FROM_STRINGS, &from_strings_inputs(&pem)).unwrap();
    assert_eq!(c.admin.token.as_deref(), Some("s3cret"));
    assert_eq!(c.routes[0].shift.bp(), 1250);
    let secure = &c.upstreams["secure"];
    assert_eq!(
        secure.ca_file.as_deref(),
        Some(Path::new("/etc/strangle/tls/ca.pem"))
    );
    assert_eq!(secure.ca_certs.len(), 1);
    assert_eq!(secure.ca_certs[0].as_ref(), der.as_slice());
    let keys = &c.auth["users"].key_files;
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].path, Path::new("/etc/strangle/k.pem"));
    assert_eq!(keys[0].text, KEY_TEXT);
    let Target::Lambda(fun) = &c.upstreams["fn"].target else {
        panic!("{:?}", c.upstreams["fn"].target);
    };
    assert_eq!(fun.region, "eu-west-1");
}

#[test]
fn a_changed_ca_or_key_file_is_a_changed_config() {
    // Snapshot reuse compares configs: what the files said must count, not only their paths.
    let (pem, _) = ca_pem();
    let (other_pem, _) = ca_pem();
    let inputs = from_strings_inputs(&pem);
    let first = lower_with(FROM_STRINGS, &inputs).unwrap();
    assert_eq!(first, lower_with(FROM_STRINGS, &inputs).unwrap());
    let new_ca = lower_with(FROM_STRINGS, &from_strings_inputs(&other_pem)).unwrap();
    assert_ne!(first.upstreams["secure"], new_ca.upstreams["secure"]);
    let new_key = inputs.with_file("/etc/strangle/k.pem", KEY_TEXT.replace("not", "now"));
    let new_key = lower_with(FROM_STRINGS, &new_key).unwrap();
    assert_ne!(first.auth["users"], new_key.auth["users"]);
    assert_eq!(first.upstreams, new_key.upstreams);
}

#[test]
fn a_bad_ca_file_is_reported_at_its_key() {
    let text = "[upstreams.secure]\nurl = \"https://upstream.test\"\nca-file = \"ca.pem\"\n";
    let cases = [
        (
            "just text\n".to_string(),
            "no certificate in `/etc/strangle/ca.pem`",
        ),
        (
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".to_string(),
            "bad PEM in `/etc/strangle/ca.pem`: ",
        ),
    ];
    for (contents, want) in cases {
        let inputs = Fixed::new().with_file("/etc/strangle/ca.pem", contents);
        let errs = lower_with(text, &inputs).unwrap_err();
        assert_eq!(errs.0.len(), 1, "{errs}");
        let shown = errs.to_string();
        assert!(
            shown.starts_with(&format!("t.toml:3:11: bad `ca-file`: {want}")),
            "{shown}"
        );
        assert!(shown.contains("hint: give a PEM file with one or more CERTIFICATE blocks"));
    }
}

#[test]
fn missing_files_and_variables_read_as_on_the_machine() {
    // The same text lowered against an empty directory and an unset variable (the machine), and
    // against empty maps: the same diagnostics, word for word and at the same places.
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
[admin]
token = "${file:secrets/admin-token}"

[upstreams.secure]
url = "https://upstream.test"
ca-file = "ca.pem"

[auth.users]
keys = ["k.pem"]
issuer = "${env:STRANGLE_TEST_NEVER_SET_7F3A}"
audiences = ["${env:}", "x ${"]
algorithms = ["RS256"]
"#;
    let machine = parse("t.toml", text, dir.path()).unwrap_err();
    let maps = parse_with("t.toml", text, dir.path(), &Fixed::new()).unwrap_err();
    assert_eq!(machine, maps);
    let lines: Vec<String> = maps.0.iter().map(|d| d.to_string()).collect();
    let at = |p: &str| dir.path().join(p).display().to_string();
    assert_eq!(
        lines,
        [
            format!(
                "t.toml:3:9: cannot read `{}`: No such file or directory (os error 2)",
                at("secrets/admin-token")
            ),
            format!(
                "t.toml:7:11: bad `ca-file`: cannot read `{}`: No such file or directory (os error 2)\n  = hint: give a PEM file with one or more CERTIFICATE blocks",
                at("ca.pem")
            ),
            format!(
                "t.toml:10:9: bad key file: cannot read `{}`: No such file or directory (os error 2)",
                at("k.pem")
            ),
            "t.toml:11:10: environment variable `STRANGLE_TEST_NEVER_SET_7F3A` is not set".into(),
            "t.toml:12:14: environment variable `` is not set".into(),
            "t.toml:12:25: unclosed `${` in string".into(),
        ],
        "{maps}"
    );
}

#[test]
fn lambda_region_comes_from_the_inputs() {
    let text = "[upstreams.fn]\nkind = \"lambda\"\nfunction = \"bookings\"\n";
    let region = |inputs: &Fixed| -> Result<String, ConfigErrors> {
        let c = lower_with(text, inputs)?;
        match &c.upstreams["fn"].target {
            Target::Lambda(t) => Ok(t.region.clone()),
            other => panic!("{other:?}"),
        }
    };
    let both = Fixed::new()
        .with_var("AWS_REGION", "eu-west-1")
        .with_var("AWS_DEFAULT_REGION", "us-east-1");
    assert_eq!(region(&both).unwrap(), "eu-west-1");
    let default_only = Fixed::new().with_var("AWS_DEFAULT_REGION", "us-east-1");
    assert_eq!(region(&default_only).unwrap(), "us-east-1");
    // The config's own `region` wins over the environment.
    let c = lower_with(&format!("{text}region = \"ap-south-1\"\n"), &both).unwrap();
    assert!(matches!(&c.upstreams["fn"].target, Target::Lambda(t) if t.region == "ap-south-1"));
    let errs = region(&Fixed::new()).unwrap_err().to_string();
    assert_eq!(
        errs,
        "t.toml:1:12: lambda upstream `fn` has no `region`\n  = hint: add `region = \"eu-west-1\"` or set AWS_REGION"
    );
}

#[test]
fn fixed_inputs_never_reach_the_filesystem() {
    // These files exist on the machine; through the maps they are missing all the same.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    for reference in [
        "${file:Cargo.toml}",
        "${file:../../../../../../etc/hostname}",
    ] {
        let text = format!("[admin]\ntoken = \"{reference}\"\n");
        let errs = parse_with("t.toml", &text, manifest, &Fixed::new()).unwrap_err();
        assert_eq!(errs.0.len(), 1, "{errs}");
        assert!(
            errs.0[0].message.contains("No such file or directory"),
            "{errs}"
        );
    }
}

#[test]
fn resolved_values_are_never_interpolated_again() {
    let inputs = Fixed::new()
        .with_var("TOKEN", "a}${env:OTHER}b${file:secret}${")
        .with_var("OTHER", "leaked")
        .with_file("/etc/strangle/secret", "${env:OTHER}}\n")
        .with_file("/etc/strangle/from-file", "${env:OTHER}}\n");
    let c = lower_with("[admin]\ntoken = \"x${env:TOKEN}y\"\n", &inputs).unwrap();
    assert_eq!(
        c.admin.token.as_deref(),
        Some("xa}${env:OTHER}b${file:secret}${y")
    );
    let c = lower_with("[admin]\ntoken = \"${file:from-file}\"\n", &inputs).unwrap();
    assert_eq!(c.admin.token.as_deref(), Some("${env:OTHER}}"));
}

#[test]
fn huge_values_are_taken_whole_and_huge_files_refused_as_on_the_machine() {
    let big = "x".repeat(4 << 20);
    let inputs = Fixed::new().with_var("BIG", big.clone()).with_file(
        "/etc/strangle/big",
        vec![b'#'; read::MAX_FILE_BYTES as usize + 1],
    );
    let c = lower_with("[admin]\ntoken = \"<${env:BIG}>\"\n", &inputs).unwrap();
    assert_eq!(c.admin.token, Some(format!("<{big}>")));
    // The cap holds whatever the inputs: a map is refused like a file on disk.
    let errs = lower_with("[admin]\ntoken = \"${file:big}\"\n", &inputs).unwrap_err();
    assert_eq!(
        errs.to_string(),
        "t.toml:2:9: `/etc/strangle/big` is larger than 8 MB, the limit for a file strangle reads as config: is it the right file?"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("big"),
        vec![b'#'; read::MAX_FILE_BYTES as usize + 1],
    )
    .unwrap();
    let on_disk = parse("t.toml", "[admin]\ntoken = \"${file:big}\"\n", dir.path()).unwrap_err();
    let in_map = parse_with(
        "t.toml",
        "[admin]\ntoken = \"${file:big}\"\n",
        dir.path(),
        &Fixed::new().with_file(
            dir.path().join("big"),
            vec![b'#'; read::MAX_FILE_BYTES as usize + 1],
        ),
    )
    .unwrap_err();
    assert_eq!(on_disk, in_map);
}

#[test]
fn the_admin_api_listens_on_the_loopback_by_default() {
    let c = lower_with("", &Fixed::new()).unwrap();
    assert_eq!(c.admin.listen, "127.0.0.1:9901".parse().unwrap());
}

#[test]
fn telemetry_lowers_with_defaults_and_every_mistake_is_reported_at_its_key() {
    let base = "[server]\nlisten = [\"127.0.0.1:8080\"]\n";
    let c = parse_str(base).unwrap();
    assert_eq!(c.telemetry.otlp, None, "no tracing unless configured");
    assert_eq!(c.telemetry.service_name, "strangle");

    let c = parse_str(&format!(
        "{base}[telemetry]\nservice-name = \"edge\"\nredact-headers = [\"x-secret\"]\n\
         redact-query = [\"token\"]\n[telemetry.otlp]\nsample-ratio = 1\n\
         propagate = [\"xray\"]\nheaders = {{ \"x-api-key\" = \"k\" }}\n"
    ))
    .unwrap();
    let t = &c.telemetry;
    assert_eq!(t.service_name, "edge");
    assert_eq!(t.redact_headers, [HeaderName::from_static("x-secret")]);
    assert_eq!(t.redact_query, ["token"]);
    let o = t.otlp.as_ref().unwrap();
    assert_eq!(o.endpoint, "http://127.0.0.1:4318/");
    assert_eq!(o.protocol, OtlpProtocol::HttpProtobuf);
    assert_eq!(o.sample_ratio, 1.0);
    assert!(
        !o.trust_incoming,
        "a client's context is not trusted by default"
    );
    assert_eq!((o.tracecontext, o.xray), (false, true));
    assert_eq!(o.headers.len(), 1);
    assert!(
        !format!("{o:?}").contains("\"k\""),
        "header values never in Debug"
    );
    let grpc = parse_str(&format!("{base}[telemetry.otlp]\nprotocol = \"grpc\"\n")).unwrap();
    let grpc = grpc.telemetry.otlp.unwrap();
    assert_eq!(
        (grpc.protocol, grpc.sample_ratio),
        (OtlpProtocol::Grpc, 0.01)
    );
    assert_eq!(grpc.endpoint, "http://127.0.0.1:4317/");
    assert!(grpc.tracecontext);

    let text = format!(
        "{base}[telemetry]\nredact-headers = [\"bad header\"]\n[telemetry.otlp]\n\
         endpoint = \"ftp://collector\"\nprotocol = \"thrift\"\nsample-ratio = 1.5\n\
         propagate = [\"b3\"]\n"
    );
    let errs = parse_str(&text).unwrap_err().0;
    let found: Vec<(usize, &str)> = errs.iter().map(|d| (d.line, d.message.as_str())).collect();
    assert_eq!(errs.len(), 5, "{found:#?}");
    assert!(found[0].1.contains("not a header name") && found[0].0 == 4);
    assert!(found[1].1.contains("not an http(s) URL") && found[1].0 == 6);
    assert!(found[2].1.contains("unknown OTLP protocol `thrift`") && found[2].0 == 7);
    assert!(found[3].1.contains("not between 0 and 1") && found[3].0 == 8);
    assert!(found[4].1.contains("unknown propagator `b3`") && found[4].0 == 9);
    // Found by an adversarial review: values `check` took that could never work, or leaked.
    for (endpoint, why) in [
        ("http://admin:pw@127.0.0.1:4318", "user name or password"),
        ("http://127.0.0.1:4318/v1/traces", "without `/v1/traces`"),
        ("http://127.0.0.1:99999", "no valid port"),
        ("http://127.0.0.1:0", "no valid port"),
        ("http://127.0.0.1:4318#x", "not an http(s) URL"),
    ] {
        let e = parse_str(&format!(
            "{base}[telemetry.otlp]\nendpoint = \"{endpoint}\"\n"
        ));
        let e = e.unwrap_err().to_string();
        assert!(e.contains(why), "{endpoint}: {e}");
    }
    let grpc_path = "protocol = \"grpc\"\nendpoint = \"http://127.0.0.1:4317/x\"";
    let e = parse_str(&format!("{base}[telemetry.otlp]\n{grpc_path}\n")).unwrap_err();
    assert!(e.to_string().contains("has no path"), "{e}");
    let header = "headers = { \"x-k\" = \"\u{e9}\" }";
    let e = parse_str(&format!("{base}[telemetry.otlp]\n{header}\n")).unwrap_err();
    assert!(e.to_string().contains("visible ASCII"), "{e}");
    let unknown = parse_str(&format!("{base}[telemetry.otlp]\nendpiont = \"x\"\n"));
    assert!(unknown.unwrap_err().to_string().contains("endpiont"));
}

#[test]
fn emf_lowers_with_defaults_and_refuses_what_cloudwatch_would() {
    let base = "[server]\nlisten = [\"127.0.0.1:8080\"]\n";
    assert_eq!(
        parse_str(base).unwrap().telemetry.emf,
        None,
        "no EMF unless configured"
    );
    let c = parse_str(&format!("{base}[telemetry.emf]\n")).unwrap();
    let e = c.telemetry.emf.unwrap();
    assert_eq!(e.output, AccessLog::Stdout);
    assert_eq!(e.namespace, "strangle");
    assert_eq!(e.interval, Duration::from_secs(60));
    let c = parse_str(&format!(
        "{base}[telemetry.emf]\noutput = \"emf.log\"\nnamespace = \"Shop/Edge-1\"\ninterval = \"10s\"\n"
    ))
    .unwrap();
    let e = c.telemetry.emf.unwrap();
    assert!(matches!(&e.output, AccessLog::File(p) if p.ends_with("emf.log")));
    assert_eq!(
        (e.namespace.as_str(), e.interval),
        ("Shop/Edge-1", Duration::from_secs(10))
    );

    for (keys, why, line) in [
        ("output = \"off\"", "is not an EMF output", 4),
        ("output = \"\"", "is not an EMF output", 4),
        ("namespace = \"AWS/Lambda\"", "reserved for AWS", 4),
        ("namespace = \"\"", "is empty", 4),
        ("namespace = \"a\\nb\"", "a character CloudWatch refuses", 4),
        (
            "namespace = \"caf\u{e9}\"",
            "a character CloudWatch refuses",
            4,
        ),
        ("interval = \"0s\"", "not between 1s and 1h", 4),
        ("interval = \"500ms\"", "not between 1s and 1h", 4),
        ("interval = \"2h\"", "not between 1s and 1h", 4),
        ("interval = \"soon\"", "bad duration", 4),
        ("intervall = \"1m\"", "intervall", 4),
    ] {
        let errs = parse_str(&format!("{base}[telemetry.emf]\n{keys}\n")).unwrap_err();
        let text = errs.to_string();
        assert!(text.contains(why), "{keys}: {text}");
        assert_eq!(errs.0[0].line, line, "{keys}: {text}");
    }
    // Stdout however it is spelled, and one file however its path is spelled: the EMF
    // reporter shares the access log's writer when the two are the same.
    for spelling in ["/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"] {
        let c = parse_str(&format!(
            "{base}[log]\naccess = \"{spelling}\"\n[telemetry.emf]\noutput = \"{spelling}\"\n"
        ))
        .unwrap();
        assert_eq!(c.log.access, AccessLog::Stdout, "{spelling}");
        assert_eq!(c.telemetry.emf.unwrap().output, AccessLog::Stdout);
    }
    let c = parse_str(&format!(
        "{base}[log]\naccess = \"./logs/../a.log\"\n[telemetry.emf]\noutput = \"logs/../a.log\"\n"
    ))
    .unwrap();
    assert_eq!(c.log.access, c.telemetry.emf.unwrap().output);
    let long = "n".repeat(256);
    let e = parse_str(&format!("{base}[telemetry.emf]\nnamespace = \"{long}\"\n")).unwrap_err();
    assert!(e.to_string().contains("longer than 255"), "{e}");
}

#[test]
fn a_shadow_is_lowered_with_its_defaults_and_its_mistakes_reported() {
    let with = |shadow: &str| {
        GOOD.replacen(
            "sticky = \"cookie:sid\"",
            &format!("sticky = \"cookie:sid\"\n{shadow}"),
            1,
        )
    };
    let c = parse_str(&with(r#"shadow = { percent = "10%", ignore = ["$.timestamp", "$..requestId"], headers = ["Content-Type"], calibrate = true, max-body = "64KB" }"#)).unwrap();
    let s = c.routes[0].shadow.as_ref().unwrap();
    assert_eq!(s.percent.bp(), 1000);
    assert_eq!(s.methods, [Method::GET, Method::HEAD]);
    assert_eq!(s.ignore.len(), 2);
    assert_eq!(s.headers, [http::header::CONTENT_TYPE]);
    assert!(s.calibrate);
    assert_eq!(s.max_body, 64 << 10);
    let c = parse_str(&with("shadow = {}")).unwrap();
    let s = c.routes[0].shadow.as_ref().unwrap();
    assert_eq!(
        (s.percent, s.max_body, s.calibrate),
        (Shift::ALL, shadow::DEFAULT_MAX_BODY, false)
    );
    assert!(c.routes[1].shadow.is_none());

    // A write is shadowed only when the route says its writes may happen twice.
    let e = parse_str(&with(r#"shadow = { methods = ["GET", "post"] }"#))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("test.toml:") && e.contains("`POST` is a write and is not shadowed by default"),
        "{e}"
    );
    assert!(e.contains("shadow-writes = true"), "{e}");
    let c = parse_str(&with(
        "shadow = { methods = [\"GET\", \"POST\"] }\nshadow-writes = true",
    ))
    .unwrap();
    assert_eq!(
        c.routes[0].shadow.as_ref().unwrap().methods,
        [Method::GET, Method::POST]
    );

    let e = parse_str(&with(r#"shadow = { percent = "120%", ignore = ["timestamp"], headers = ["bad header"], max-body = "1GB", methods = [], colour = 1 }"#)).unwrap_err().to_string();
    assert!(e.contains("unknown field `colour`"), "{e}");
    let e = parse_str(&with(r#"shadow = { percent = "120%", ignore = ["timestamp"], headers = ["bad header"], max-body = "1GB", methods = [] }"#)).unwrap_err().to_string();
    for want in [
        "shadow `percent`",
        "`timestamp` is not a JSON path",
        "bad header name `bad header`",
        "bad shadow `max-body` `1GB`",
        "shadow `methods` is empty",
    ] {
        assert!(e.contains(want), "{want}: {e}");
    }
    // One side only: nothing to shadow to.
    let e = parse_str(&GOOD.replacen("path = \"/health\"", "path = \"/health\"\nshadow = {}", 1))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("route `health` shadows with only one side"),
        "{e}"
    );
    let connect = "shadow = { methods = [\"CONNECT\"] }\nshadow-writes = true";
    let e = parse_str(&with(connect)).unwrap_err().to_string();
    assert!(e.contains("`CONNECT` opens a tunnel"), "{e}");
    let e = parse_str(&with("shadow-writes = true"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`shadow-writes` has no effect without `shadow`"),
        "{e}"
    );
}

#[test]
fn a_route_id_of_dots_alone_is_refused() {
    for id in [".", ".."] {
        let text = GOOD.replacen("id = \"health\"", &format!("id = \"{id}\""), 1);
        let e = parse_str(&text).unwrap_err().to_string();
        assert!(e.contains(&format!("bad route id `{id}`")), "{e}");
    }
    assert!(parse_str(&GOOD.replacen("id = \"health\"", "id = \"health.v2\"", 1)).is_ok());
}

#[test]
fn a_rollout_is_lowered_with_its_defaults_and_its_mistakes_reported() {
    let with = |keys: &str| {
        GOOD.replacen(
            "sticky = \"cookie:sid\"",
            &format!("sticky = \"cookie:sid\"\n{keys}"),
            1,
        )
    };
    let c = parse_str(&with(r#"rollout = { steps = ["1%", "5%", "25%", "50%", "100%"], interval = "10m", min-requests = 500, max-error-rate = "1%", max-error-rate-increase = "0.5%", max-p99-ratio = 1.5, on-failure = "zero" }"#)).unwrap();
    let r = c.routes[0].rollout.as_ref().unwrap();
    assert_eq!(r.steps.len(), 5);
    assert_eq!(r.interval, Duration::from_secs(600));
    assert_eq!(
        (
            r.min_requests,
            r.max_error_rate,
            r.max_error_rate_increase,
            r.max_p99_ratio
        ),
        (500, Some(100), Some(50), Some(1.5))
    );
    assert_eq!(r.on_failure, rollout::OnFailure::Zero);
    assert_eq!(r.step_of(Shift::parse("30%").unwrap()), Some(2));
    assert_eq!(r.step_of(Shift::ZERO), None);
    assert_eq!(
        r.next_after(Shift::parse("30%").unwrap()),
        Shift::parse("50%").ok()
    );
    let c = parse_str(&with(
        r#"rollout = { steps = ["10%", "100%"], max-error-rate = "1%" }"#,
    ))
    .unwrap();
    let r = c.routes[0].rollout.as_ref().unwrap();
    assert_eq!(
        (r.interval, r.min_requests, r.on_failure),
        (
            rollout::DEFAULT_INTERVAL,
            rollout::DEFAULT_MIN_REQUESTS,
            rollout::OnFailure::Previous
        )
    );
    assert_eq!(r.back_from(Shift::ALL), Shift::parse("10%").unwrap());
    assert_eq!(r.back_from(Shift::parse("10%").unwrap()), Shift::ZERO);

    let e = parse_str(&with(r#"rollout = { steps = ["0%", "50%", "20%", "120%"], interval = "100ms", min-requests = 0, max-p99-ratio = 0.5, max-mismatch-rate = "2%", on-failure = "later" }"#)).unwrap_err().to_string();
    for want in [
        "a rollout step of 0% shifts nothing",
        "rollout step 20% does not rise",
        "rollout step:",
        "rollout `interval` must be at least 1s",
        "`min-requests` must be 1 to 1000000000",
        "`max-p99-ratio` must be a number of at least 1",
        "`max-mismatch-rate` without `shadow` on the route",
        "unknown on-failure `later`",
    ] {
        assert!(e.contains(want), "{want}: {e}");
    }
    // No gate at all would advance whatever the new side does.
    let e = parse_str(&with(r#"rollout = { steps = ["50%"] }"#))
        .unwrap_err()
        .to_string();
    assert!(e.contains("the rollout has no gate"), "{e}");
    let e = parse_str(&with(
        r#"rollout = { steps = [], max-error-rate = "1%", wait = 1 }"#,
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("unknown field `wait`"), "{e}");
    // The table form, on a route with one side.
    let text = format!("{GOOD}\n[routes.rollout]\nsteps = [\"50%\"]\nmax-error-rate = \"1%\"\n");
    let e = parse_str(&text).unwrap_err().to_string();
    assert!(
        e.contains("route `health` has a rollout but not two sides"),
        "{e}"
    );
}

#[test]
fn a_capture_is_lowered_with_its_defaults_and_its_mistakes_reported() {
    let with = |keys: &str| {
        GOOD.replacen(
            "sticky = \"cookie:sid\"",
            &format!("sticky = \"cookie:sid\"\n{keys}"),
            1,
        )
    };
    let c = parse_str(&with(
        r#"capture = { on = ["new-5xx", "new-error", "new-5xx"], dir = "spool" }"#,
    ))
    .unwrap();
    let k = c.routes[0].capture.as_ref().unwrap();
    assert_eq!(k.on, [capture::Event::New5xx, capture::Event::NewError]);
    // Relative to the config file's directory (the test parses with `.` as that).
    assert_eq!(k.dir, std::path::Path::new("./spool"));
    assert_eq!(
        (k.max_size, k.max_body),
        (capture::DEFAULT_MAX_SIZE, capture::DEFAULT_MAX_BODY)
    );
    let c = parse_str(&with(r#"capture = { on = ["new-5xx"], dir = "/var/spool/strangle", max-size = "2GB", max-body = "64KB" }"#)).unwrap();
    let k = c.routes[0].capture.as_ref().unwrap();
    assert_eq!((k.max_size, k.max_body), (2 << 30, 64 << 10));
    let e = parse_str(&with(r#"capture = { on = ["mismatch", "oops"], dir = "", max-size = "10KB", max-body = "20MB" }"#)).unwrap_err().to_string();
    for want in [
        "capture `mismatch` without `shadow` on the route",
        "unknown capture event `oops`",
        "capture `dir` is empty",
        "bad capture `max-size` `10KB`",
        "bad capture `max-body` `20MB`",
    ] {
        assert!(e.contains(want), "{want}: {e}");
    }
    let e = parse_str(&with(r#"capture = { on = [], dir = "x" }"#))
        .unwrap_err()
        .to_string();
    assert!(e.contains("capture `on` is empty"), "{e}");
    let one_side = GOOD.replacen(
        "match = \"exact\"",
        "match = \"exact\"\ncapture = { on = [\"new-5xx\"], dir = \"x\" }",
        1,
    );
    let e = parse_str(&one_side).unwrap_err().to_string();
    assert!(
        e.contains("route `health` captures with no new side"),
        "{e}"
    );
}

#[test]
fn a_fleet_is_lowered_with_its_defaults_and_its_mistakes_reported() {
    let fleet = |keys: &str| format!("{GOOD}\n[admin.fleet]\n{keys}\n");
    let c = parse_str(&fleet(
        "configmap = \"shop/strangle\"\nlease = \"shop/strangle-rollout\"\npeers = [\"strangle-admin.shop.svc.cluster.local:9901\"]",
    ))
    .unwrap();
    let f = c.admin.fleet.unwrap();
    assert_eq!(f.configmap, ("shop".to_string(), "strangle".to_string()));
    assert_eq!(f.lease.1, "strangle-rollout");
    assert_eq!((f.api, f.key, f.identity), (None, None, None));
    assert_eq!(f.lease_duration, fleet::DEFAULT_LEASE_DURATION);
    assert!(f.token_file.starts_with(fleet::SERVICE_ACCOUNT));
    let e = parse_str(&fleet(
        "configmap = \"strangle\"\nlease = \"Shop/x\"\npeers = [\"nohost\", \"h:0\"]\napi = \"ftp://x\"\nlease-duration = \"1s\"\nkey = \"a/b\"",
    ))
    .unwrap_err()
    .to_string();
    for want in [
        "bad ConfigMap `strangle`",
        "bad Lease `Shop/x`",
        "bad fleet peer `nohost`",
        "bad fleet peer `h:0`",
        "bad fleet `api` `ftp://x`",
        "`lease-duration` must be at least 3s",
        "bad ConfigMap key `a/b`",
    ] {
        assert!(e.contains(want), "{want}: {e}");
    }
    let e = parse_str(&fleet("configmap = \"a/b\"\nlease = \"a/c\"\npeers = []"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("fleet `peers` is empty"), "{e}");
}

#[test]
fn plugins_are_built_per_side_in_order_and_their_mistakes_reported_at_the_key() {
    let with = |plugins: &str| {
        GOOD.replacen(
            "sticky = \"cookie:sid\"",
            &format!("sticky = \"cookie:sid\"\n{plugins}"),
            1,
        )
    };
    let c = parse_str(&with(
        r#"plugins = [
  { use = "rewrite-path", side = "new", from = "^/bookings/(.*)$", to = "/v2/$1" },
  { use = "headers", request-set = { "x-api" = "2" } },
]"#,
    ))
    .unwrap();
    let p = &c.routes[0].plugins;
    assert_eq!((p.new.len(), p.legacy.len()), (2, 1));
    assert!(c.routes[1].plugins.is_empty());
    // The same entries are the same config; another setting is a change.
    let again = parse_str(&with(
        r#"plugins = [{ use = "rewrite-path", side = "new", from = "^/bookings/(.*)$", to = "/v2/$1" }, { use = "headers", request-set = { "x-api" = "2" } }]"#,
    ))
    .unwrap();
    assert_eq!(again.routes[0].plugins, c.routes[0].plugins);
    let other = parse_str(&with(
        r#"plugins = [{ use = "headers", request-set = { "x-api" = "3" } }]"#,
    ))
    .unwrap();
    assert_ne!(other.routes[0].plugins, c.routes[0].plugins);

    // Every mistake refuses the config, at the spot it is.
    let err = |plugins: &str| parse_str(&with(plugins)).unwrap_err().to_string();
    let e = err(r#"plugins = [{ use = "rewrite-paht", from = "a", to = "/" }]"#);
    assert!(
        e.contains("unknown plugin \"rewrite-paht\"") && e.contains("rewrite-path, headers"),
        "{e}"
    );
    let e = err(r#"plugins = [{ use = "rewrite-path", from = "(", to = "/" }]"#);
    let line = with("")
        .lines()
        .position(|l| l.starts_with("sticky = \"cookie:sid\""))
        .unwrap()
        + 2;
    let col = r#"plugins = [{ use = "rewrite-path", from = "#.len() + 1;
    assert!(
        e.contains(&format!(
            "test.toml:{line}:{col}: plugin `rewrite-path`: not a regular expression"
        )),
        "{e}"
    );
    let e = err(r#"plugins = [{ use = "headers", side = "old" }]"#);
    assert!(e.contains("plugin `side` \"old\" is not a side"), "{e}");
    let e = err(r#"plugins = [{ side = "new" }]"#);
    assert!(e.contains("a plugin entry without `use`"), "{e}");
    let e = err(
        r#"plugins = [{ use = "headers", request-rename = { "x-user" = "x-strangle-user" } }]"#,
    );
    assert!(
        e.contains("plugin `headers`: strangle owns `x-strangle-user`"),
        "{e}"
    );
    let e = err(r#"plugins = [{ use = "headers", reqest-set = {} }]"#);
    assert!(e.contains("unknown key for `headers`"), "{e}");
}

#[test]
fn hosts_conditions_and_per_host_defaults_are_lowered() {
    let text = r#"
[server]
default = "a"
[[server.defaults]]
hosts = ["www.example.com", "*.shop.example"]
upstream = "b"

[upstreams.a]
addresses = ["127.0.0.1:1"]
[upstreams.b]
addresses = ["127.0.0.1:2"]

[[routes]]
id = "api"
path = "/bookings"
legacy = "a"
hosts = ["API.example.com.", "*.partner.example"]

[[routes]]
id = "v2"
path = "/bookings"
legacy = "b"
when = { header = { "X-Api-Version" = "2" }, query = { beta = "present" } }
"#;
    let c = parse_str(text).unwrap();
    assert_eq!(
        c.routes[0].hosts,
        vec![
            HostPattern::Exact("api.example.com".into()),
            HostPattern::Wildcard("partner.example".into())
        ]
    );
    let when = c.routes[1].when.as_deref().unwrap();
    assert_eq!(when.headers[0].0.as_str(), "x-api-version");
    assert_eq!(when.headers[0].1, crate::routing::Cond::Equals("2".into()));
    assert_eq!(
        when.query,
        vec![("beta".to_string(), crate::routing::Cond::Present)]
    );
    assert_eq!(c.server.defaults[0].upstream, "b");
    assert_eq!(c.server.defaults[0].hosts.len(), 2);
}

#[test]
fn bad_hosts_conditions_and_defaults_are_refused_at_their_keys() {
    let text = r#"
[[server.defaults]]
hosts = ["a.example", "a.example:80"]
upstream = "nope"
[[server.defaults]]
hosts = ["A.example."]
upstream = "a"

[upstreams.a]
addresses = ["127.0.0.1:1"]

[[routes]]
id = "r1"
path = "/r"
legacy = "a"
hosts = []

[[routes]]
id = "r2"
path = "/r"
legacy = "a"
hosts = ["a.*.example", "x.example", "X.example"]

[[routes]]
id = "r3"
path = "/r"
legacy = "a"
when = { header = { "x-strangle-side" = "new", "bad name" = "1" } }

[[routes]]
id = "r4"
path = "/r"
legacy = "a"
when = {}

[[routes]]
id = "r5"
path = "/r"
legacy = "a"
when = { cookie = { a = "1" } }
"#;
    let errs = parse_str(text).unwrap_err().0;
    let all: Vec<String> = errs
        .iter()
        .map(|e| format!("{}:{} {}", e.line, e.col, e.message))
        .collect();
    for want in [
        "16:9 `hosts` is empty",
        "22:10 `a.*.example`",
        "22:38 host `x.example` is listed twice",
        "28:21 a condition cannot be on `x-strangle-side`",
        "28:48 `bad name` is not a header name",
        "34:8 `when` has no conditions",
        "3:23 `a.example:80`: a host pattern has no port",
        "host `a.example` has two defaults",
        "unknown upstream `nope`",
        "unknown field `cookie`",
    ] {
        assert_reported(&all, want);
    }
    // Conditions that are all refused are not also reported as none given.
    assert!(!all.iter().any(|e| e.starts_with("28:8")), "{all:#?}");
}

#[test]
fn a_route_its_hosts_or_conditions_leave_no_request_is_refused() {
    let text = r#"
[upstreams.a]
addresses = ["127.0.0.1:1"]

[[routes]]
id = "wide"
path = "/r"
legacy = "a"
hosts = ["api.example", "*.example"]
when = { header = { "x-v" = "2" } }

[[routes]]
id = "narrow"
path = "/r"
legacy = "a"
hosts = ["api.example"]
when = { header = { "x-v" = "2" }, query = { beta = "1" } }

[[routes]]
id = "apart"
path = "/r"
legacy = "a"
hosts = ["other.example"]
when = { header = { "x-v" = "2" } }
"#;
    let errs = parse_str(text).unwrap_err().0;
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0]
        .message
        .contains("route `narrow` overlaps route `wide` and can never match"));
}

#[test]
fn overlaps_are_found_among_thousands_of_routes_on_one_path() {
    let mut text = String::from("[upstreams.a]\naddresses = [\"127.0.0.1:1\"]\n");
    for i in 0..3000 {
        text += &format!(
            "\n[[routes]]\nid = \"r{i}\"\npath = \"/bookings\"\nlegacy = \"a\"\nhosts = [\"h{i}.example\", \"all.example\"]\n"
        );
    }
    // Shadowed through a host that is not its shadower's first, on a path spelled in another
    // case (the shadower ignores case); then a host-less route, which no host route shadows,
    // and a second host-less one, which it does.
    text += r#"
[[routes]]
id = "late"
path = "/bookings"
legacy = "a"
hosts = ["all.example"]

[[routes]]
id = "any-host"
path = "/bookings"
legacy = "a"
case-insensitive = true

[[routes]]
id = "again"
path = "/BOOKINGS"
legacy = "a"
"#;
    let errs = parse_str(&text).unwrap_err().0;
    let messages: Vec<&str> = errs.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(messages.len(), 2, "{messages:#?}");
    assert_reported(&messages, "route `late` overlaps route `r0`");
    assert_reported(&messages, "route `again` overlaps route `any-host`");
}

#[test]
fn auth_bound_to_hosts_is_warned_about_when_other_hosts_fall_through() {
    let base = r#"
[server]
default = "a"
[upstreams.a]
addresses = ["127.0.0.1:1"]
[auth.users]
jwks-url = "https://issuer.example/jwks.json"
issuer = "https://issuer.example/"
audiences = ["x"]
algorithms = ["RS256"]

[[routes]]
id = "admin"
path = "/admin"
legacy = "a"
auth = "users"
hosts = ["api.example.com"]
"#;
    let c = parse_str(base).unwrap();
    assert!(
        c.warnings.iter().any(|w| w
            .message
            .contains("route `admin` has auth for its hosts only")),
        "{:#?}",
        c.warnings
    );
    let covered = format!(
        "{base}\n[[routes]]\nid = \"all\"\npath = \"/\"\nlegacy = \"a\"\nauth = \"users\"\n"
    );
    let c = parse_str(&covered).unwrap();
    assert!(!c
        .warnings
        .iter()
        .any(|w| w.message.contains("for its hosts only")));
    // The other way: a route the client picks (by Host or a header) without the auth of the
    // route it comes before.
    for picked in [
        "hosts = [\"legacy.example\"]",
        "when = { header = { \"x-api-version\" = \"2\" } }",
    ] {
        let text = format!(
            "{base}\n[[routes]]\nid = \"all\"\npath = \"/\"\nlegacy = \"a\"\nauth = \"users\"\n[[routes]]\nid = \"site\"\npath = \"/\"\nlegacy = \"a\"\n{picked}\n"
        );
        let c = parse_str(&text).unwrap();
        assert!(
            c.warnings.iter().any(|w| w
                .message
                .contains("route `site` comes before route `all` on `/`")),
            "{picked}: {:#?}",
            c.warnings
        );
    }
}

#[test]
fn route_policies_are_lowered_and_their_mistakes_refused() {
    let good = r#"
[upstreams.a]
addresses = ["127.0.0.1:1"]

[[routes]]
id = "r"
path = "/r"
legacy = "a"
timeout = "5s"
max-body = "10MB"
allow-ips = ["10.0.0.0/8", "192.168.1.7"]
deny-ips = ["10.9.0.0/16"]

[[routes]]
id = "old"
path = "/old"
redirect = { to = "/new$path$query" }

[[routes]]
id = "freeze"
path = "/w"
methods = ["POST"]
respond = { status = 503, body = "later", headers = { "Retry-After" = "60" } }
"#;
    let c = parse_str(good).unwrap();
    // What a path or query brings is never read as a variable.
    assert_eq!(
        policy::location("https://n.example$path$query", "/go/$query", "?x=1"),
        "https://n.example/go/$query?x=1"
    );
    let p = &c.routes[0].policy;
    assert_eq!(p.timeout, Some(Duration::from_secs(5)));
    assert_eq!(p.max_body, Some(10 << 20));
    assert!(p.admits(Some("10.1.1.1".parse().unwrap())));
    assert!(!p.admits(Some("10.9.1.1".parse().unwrap())));
    assert!(!p.admits(Some("11.0.0.1".parse().unwrap())));
    assert!(!p.admits(None));
    assert!(matches!(
        c.routes[1].fixed.as_deref(),
        Some(policy::Fixed::Redirect { status, .. }) if status.as_u16() == 308
    ));
    assert!(matches!(
        c.routes[2].fixed.as_deref(),
        Some(policy::Fixed::Respond { status, headers, .. })
            if status.as_u16() == 503 && headers.iter().any(|(n, v)| n == "retry-after" && v == "60")
    ));

    let bad = r#"
[upstreams.a]
addresses = ["127.0.0.1:1"]

[[routes]]
id = "r1"
path = "/r1"
legacy = "a"
timeout = "0s"
max-body = "lots"
allow-ips = ["10.0.0.0/33"]
deny-ips = []

[[routes]]
id = "r2"
path = "/r2"
redirect = { to = "javascript:alert(1)", status = 200 }

[[routes]]
id = "r3"
path = "/r3"
legacy = "a"
redirect = { to = "/x$path" }

[[routes]]
id = "r8"
path = "/r8"
redirect = { to = "//evil.example$path" }

[[routes]]
id = "r4"
path = "/r4"
respond = { status = 99, headers = { "content-length" = "5", "x-strangle-side" = "new" } }

[[routes]]
id = "r5"
path = "/r5"
redirect = { to = "/a$host" }
respond = { status = 200 }

[[routes]]
id = "r6"
path = "/r6"
redirect = { to = "javascript:alert(1)" }

[[routes]]
id = "r7"
path = "/r7"
redirect = { to = "/a$host" }

[[routes]]
id = "r9"
path = "/r9"
redirect = { to = "/$path" }
"#;
    let errs = parse_str(bad).unwrap_err().0;
    let all: Vec<String> = errs.iter().map(|e| e.message.clone()).collect();
    for want in [
        "`timeout` must be longer than zero",
        "bad `max-body` `lots`",
        "bad `allow-ips` entry",
        "`deny-ips` is empty",
        "bad redirect status 200",
        "route `r3` answers itself and has `legacy`",
        "bad redirect `to` `//evil.example$path`",
        "bad respond status 99",
        "`respond` cannot set `content-length`",
        "`respond` cannot set `x-strangle-side`",
        "a route either redirects or responds, not both",
        "bad redirect `to` `javascript:alert(1)`",
        "bad redirect `to` `/a$host`",
        "bad redirect `to` `/$path`",
    ] {
        assert_reported(&all, want);
    }
}

#[test]
fn compression_is_lowered_with_its_defaults_and_its_mistakes_refused() {
    let base = "[upstreams.a]\naddresses = [\"127.0.0.1:1\"]\n[[routes]]\nid = \"r\"\npath = \"/r\"\nlegacy = \"a\"\ncompress = false\n";
    let c = parse_str(base).unwrap();
    assert!(c.server.compression.is_none(), "off unless asked for");
    assert!(!c.routes[0].policy.compress);
    let c = parse_str(&format!("[server]\ncompression = {{}}\n{base}")).unwrap();
    let z = c.server.compression.unwrap();
    assert_eq!((z.level, z.min_size), (5, 1024));
    assert!(z.takes("text/html; charset=utf-8") && z.takes("Application/JSON"));
    assert!(!z.takes("image/png") && !z.takes("text") && !z.takes("application/json-seq"));
    let c = parse_str(&format!(
        "[server]\ncompression = {{ level = 9, min-size = \"2KB\", types = [\"application/*\"] }}\n{base}"
    ))
    .unwrap();
    let z = c.server.compression.unwrap();
    assert_eq!((z.level, z.min_size), (9, 2048));
    assert!(z.takes("application/xml") && !z.takes("text/plain"));
    let errs = parse_str(&format!(
        "[server]\ncompression = {{ level = 12, min-size = \"lots\", types = [\"*/*\", \"text\", \"a/b; q=1\"], gzip = true }}\n{base}"
    ))
    .unwrap_err()
    .0;
    assert!(
        errs.iter()
            .any(|e| e.message.contains("unknown field `gzip`")),
        "{errs:#?}"
    );
    let errs = parse_str(&format!(
        "[server]\ncompression = {{ level = 12, min-size = \"lots\", types = [\"*/*\", \"text\", \"a/b; q=1\"] }}\n{base}"
    ))
    .unwrap_err()
    .0;
    let all: Vec<&str> = errs.iter().map(|e| e.message.as_str()).collect();
    for want in [
        "level",
        "bad `min-size` `lots`",
        "bad compression type `*/*`",
        "bad compression type `text`",
        "bad compression type `a/b; q=1`",
    ] {
        assert_reported(&all, want);
    }
}

#[test]
fn a_kubernetes_configmap_for_shifts_is_lowered_and_its_mistakes_refused() {
    let route = "[upstreams.a]\naddresses = [\"127.0.0.1:1\"]\n[[routes]]\nid = \"r\"\npath = \"/r\"\nlegacy = \"a\"\n";
    let c = parse_str(&format!(
        "[admin]\nkubernetes-configmap = \"shop/strangle\"\n{route}"
    ))
    .unwrap();
    let k = c.admin.kubernetes.unwrap();
    assert_eq!(k.configmap, ("shop".to_string(), "strangle".to_string()));
    assert_eq!(k.api, None, "in-cluster");
    assert!(k.token_file.ends_with("serviceaccount/token"));
    let c = parse_str(&format!(
        "[admin]\nkubernetes-configmap = \"shop/strangle\"\nkubernetes-api = \"http://127.0.0.1:1/\"\nkubernetes-token-file = \"t\"\n{route}"
    ))
    .unwrap();
    let k = c.admin.kubernetes.unwrap();
    assert_eq!(k.api.as_deref(), Some("http://127.0.0.1:1"));
    assert!(k.token_file.ends_with("t"));
    assert!(parse_str(route).unwrap().admin.kubernetes.is_none());
    for (bad, want) in [
        (
            "kubernetes-configmap = \"strangle\"",
            "bad ConfigMap `strangle`",
        ),
        ("kubernetes-configmap = \"Shop/x\"", "bad ConfigMap"),
        (
            "kubernetes-api = \"http://x\"",
            "`kubernetes-api` without `kubernetes-configmap`",
        ),
        (
            "kubernetes-configmap = \"a/b\"\nkubernetes-api = \"ftp://x\"",
            "bad `kubernetes-api`",
        ),
    ] {
        let errs = parse_str(&format!("[admin]\n{bad}\n{route}"))
            .unwrap_err()
            .0;
        assert!(
            errs.iter().any(|e| e.message.contains(want)),
            "{bad}: {errs:#?}"
        );
    }
}

#[test]
fn addresses_must_name_a_peer_and_a_repeated_one_is_warned_of() {
    let text = |addrs: &str| {
        format!(
            "[upstreams.a]\naddresses = [{addrs}]\n\n[[routes]]\nid = \"r\"\npath = \"/r\"\nlegacy = \"a\"\n"
        )
    };
    for bad in [
        "\"::1:8080\"",
        "\"127.0.0.1 :8080\"",
        "\"exa mple:1\"",
        "\"a..b:1\"",
        "\"[::g]:1\"",
        "\"host:0\"",
        "\":8080\"",
    ] {
        let errs = parse_str(&text(bad)).unwrap_err().0;
        assert_reported(
            &errs.iter().map(|e| e.message.clone()).collect::<Vec<_>>(),
            "bad address",
        );
    }
    for good in [
        "\"127.0.0.1:8080\"",
        "\"[::1]:8080\"",
        "\"bookings.shop.svc.cluster.local:8080\"",
        "\"my_svc-1.internal.:80\"",
        "\"localhost:1\"",
    ] {
        let config = parse_str(&text(good)).unwrap_or_else(|e| panic!("{good}: {e}"));
        assert!(config.warnings.is_empty(), "{good}");
    }
    let config = parse_str(&text("\"svc:80\", \"svc:80\"")).unwrap();
    assert_reported(
        &config
            .warnings
            .iter()
            .map(|w| w.message.clone())
            .collect::<Vec<_>>(),
        "listed twice",
    );
}
