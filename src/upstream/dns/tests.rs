use super::*;

fn backends(dns: &Dns) -> Vec<String> {
    Dns::backends(&dns.lock())
        .iter()
        .map(|b| b.addr.to_string())
        .collect()
}

#[test]
fn literals_are_taken_as_they_are_and_never_looked_up() {
    let dns = Dns::new("legacy", &["127.0.0.1:81".into(), "[::1]:82".into()], None);
    assert!(!dns.has_names());
    assert!(dns.unresolved().is_empty());
    assert_eq!(backends(&dns), ["127.0.0.1:81", "[::1]:82"]);
}

#[test]
fn a_name_that_does_not_resolve_leaves_no_address_and_says_why() {
    // Without a port it fails before any lookup: no query leaves the machine (the lookups
    // that reach a resolver are tested in tests/it/resolve.rs, with its own /etc/hosts).
    let dns = Dns::new("new", &["bookings".into(), "127.0.0.1:81".into()], None);
    assert!(dns.has_names());
    assert_eq!(backends(&dns), ["127.0.0.1:81"]);
    let un = dns.unresolved();
    assert_eq!(un.len(), 1);
    assert_eq!(un[0].address, "bookings");
    assert!(!un[0].error.is_empty());
}

#[tokio::test]
async fn a_failed_lookup_keeps_the_last_addresses_and_a_good_one_replaces_them() {
    let dns = Dns::new("new", &["localhost:8080".into()], None);
    let first = backends(&dns);
    assert!(!first.is_empty(), "localhost resolves");
    // The first discovery hands over what was found at load.
    let (set, _) = dns.discover().await.unwrap();
    assert_eq!(set.len(), first.len());
    // A name that stops resolving keeps what it had; its error shows.
    dns.lock()[0].name = "gone".into();
    let (set, _) = dns.discover().await.unwrap();
    assert_eq!(set.len(), first.len(), "kept through a failed lookup");
    assert_eq!(dns.unresolved()[0].address, "gone");
    // Once it resolves again, the new answer replaces the old one and the error goes.
    dns.lock()[0].name = "127.0.0.1:8080".into();
    dns.lock()[0].literal = false;
    let (set, _) = dns.discover().await.unwrap();
    assert_eq!(
        set.iter().map(|b| b.addr.to_string()).collect::<Vec<_>>(),
        ["127.0.0.1:8080"]
    );
    assert!(dns.unresolved().is_empty());
}

#[test]
fn a_name_listed_twice_is_one_entry() {
    let dns = Dns::new(
        "new",
        &["svc".into(), "svc".into(), "127.0.0.1:1".into()],
        None,
    );
    assert_eq!(dns.unresolved().len(), 1);
    assert_eq!(dns.lock().len(), 2);
}

#[test]
fn a_rebuilt_upstream_keeps_what_its_names_had_without_looking_them_up() {
    let before = Dns::new("new", &["localhost:8080".into()], None);
    let had = backends(&before);
    assert!(!had.is_empty());
    // A name that cannot be looked up here (no port): kept from the upstream it replaces,
    // it is not looked up while building (that would fail and empty the upstream).
    before.lock()[0].name = "svc".into();
    before.lock()[0].error = Some("no answer".into());
    let after = Dns::new("new", &["svc".into(), "127.0.0.1:2".into()], Some(&before));
    let mut want = had.clone();
    want.push("127.0.0.1:2".into());
    want.sort();
    let mut got = backends(&after);
    got.sort();
    assert_eq!(got, want);
    // Still marked as not resolving, as it was.
    assert_eq!(after.unresolved()[0].address, "svc");
}
