use std::mem::{size_of, size_of_val};

use super::*;

/// An app that is never reached: only the transport's own state is measured.
struct Nothing;

#[async_trait]
impl HttpServerApp for Nothing {
    async fn process_new_http(
        self: &Arc<Self>,
        _session: ServerSession,
        _shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        None
    }
}

/// What an idle kept-alive connection holds in strangle's own types, as a guard against their
/// growing unnoticed (BENCHMARKS.md breaks the idle connection's memory down with these).
#[tokio::test(flavor = "current_thread")]
async fn an_idle_connection_holds_little_of_the_transports_state() {
    let (_settings_tx, settings) = watch::channel(Settings {
        keepalive_timeout: Duration::from_secs(60),
        body_timeout: Duration::from_secs(10),
    });
    let app = Arc::new(Http1 {
        inner: Arc::new(Nothing),
        fast: None,
        head_timeout: Duration::from_secs(10),
        settings,
        lifecycle: Arc::new(Lifecycle::default()),
        h2c: false,
        malformed: None,
    });
    let (_shutdown_tx, shutdown) = watch::channel(false);
    let (stream, _client) = tokio::io::duplex(64);
    let future = app.process_new(Box::new(stream), &shutdown);
    let sizes = [
        (
            "the connection's future (Http1::process_new)",
            size_of_val(&*future),
        ),
        ("DeadlineStream", size_of::<DeadlineStream>()),
        (
            "Pingora's TCP stream",
            size_of::<pingora::protocols::l4::stream::Stream>(),
        ),
        ("tokio's keep-alive timer", size_of::<tokio::time::Sleep>()),
    ];
    for (what, bytes) in sizes {
        println!("{what}: {bytes} bytes");
    }
    assert!(sizes[0].1 <= 512, "{sizes:?}");
    assert!(sizes[1].1 <= 256, "{sizes:?}");
}
