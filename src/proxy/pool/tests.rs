use std::time::Duration;

use pingora::upstreams::peer::{HttpPeer, Peer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// A connected pair: the proxy's end as a Pingora stream, and the upstream's end.
async fn pair(listener: &TcpListener) -> (Stream, TcpStream) {
    let addr = listener.local_addr().unwrap();
    let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let stream: Stream = Box::new(pingora::protocols::l4::stream::Stream::from(
        client.unwrap(),
    ));
    (stream, server.unwrap().0)
}

fn peer_of(listener: &TcpListener, idle: Option<Duration>) -> HttpPeer {
    let mut peer = HttpPeer::new(listener.local_addr().unwrap(), false, String::new());
    peer.options.idle_timeout = idle;
    peer
}

/// Lets the runtime's I/O driver see what the kernel has (a FIN, bytes).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_quiet_connection_comes_back_and_works() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = peer_of(&listener, None);
    let (stream, mut server) = pair(&listener).await;
    give_back(peer.reuse_hash(), peer.idle_timeout(), stream);
    assert_eq!(idle_count(&peer), 1);
    settle().await;
    let mut stream = take(peer.reuse_hash()).expect("the idle connection is reused");
    assert_eq!(idle_count(&peer), 0);
    assert!(
        take(peer.reuse_hash()).is_none(),
        "it was taken once, not copied"
    );
    // It is the same connection, and it still carries bytes both ways.
    stream.write_all(b"ping").await.unwrap();
    stream.flush().await.unwrap();
    let mut got = [0u8; 4];
    server.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ping");
    server.write_all(b"pong").await.unwrap();
    stream.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"pong");
}

#[tokio::test(flavor = "current_thread")]
async fn a_connection_the_upstream_closed_or_wrote_on_is_never_reused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = peer_of(&listener, None);
    // Closed by the upstream while idle.
    let (closed, server) = pair(&listener).await;
    give_back(peer.reuse_hash(), peer.idle_timeout(), closed);
    drop(server);
    settle().await;
    assert!(
        take(peer.reuse_hash()).is_none(),
        "a closed connection is dropped"
    );
    // Bytes nobody asked for (a late response, a smuggled one) arrived while idle.
    let (noisy, mut server) = pair(&listener).await;
    give_back(peer.reuse_hash(), peer.idle_timeout(), noisy);
    server
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    settle().await;
    assert!(
        take(peer.reuse_hash()).is_none(),
        "a connection with unread bytes is dropped"
    );
    assert_eq!(idle_count(&peer), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn idle_connections_expire_and_each_peer_keeps_a_bounded_list() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let short = peer_of(&listener, Some(Duration::from_millis(20)));
    let (stream, _server) = pair(&listener).await;
    give_back(short.reuse_hash(), short.idle_timeout(), stream);
    tokio::time::sleep(Duration::from_millis(40)).await;
    assert!(take(short.reuse_hash()).is_none(), "past its idle timeout");

    // Another peer (another reuse key): nothing is shared with the first.
    let bounded = peer_of(&listener, Some(Duration::from_secs(60)));
    let mut servers = Vec::new();
    for _ in 0..PER_PEER + 5 {
        let (stream, server) = pair(&listener).await;
        give_back(bounded.reuse_hash(), bounded.idle_timeout(), stream);
        servers.push(server);
    }
    assert_eq!(idle_count(&bounded), PER_PEER);
}

#[tokio::test(flavor = "current_thread")]
async fn the_sweep_drops_expired_and_dead_connections_and_forgotten_peers() {
    // Three upstreams (peers of one address share a list whatever their idle timeout).
    let (one, two, three) = (
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    let alive = peer_of(&one, Some(Duration::from_secs(60)));
    let (stream, _server_kept) = pair(&one).await;
    give_back(alive.reuse_hash(), alive.idle_timeout(), stream);
    // Closed by its upstream, and no request for its peer ever comes again.
    let dead = peer_of(&two, Some(Duration::from_secs(60)));
    let (stream, server) = pair(&two).await;
    give_back(dead.reuse_hash(), dead.idle_timeout(), stream);
    drop(server);
    // Past its idle timeout.
    let expired = peer_of(&three, Some(Duration::from_millis(10)));
    let (stream, _server) = pair(&three).await;
    give_back(expired.reuse_hash(), expired.idle_timeout(), stream);
    settle().await;
    sweep();
    assert_eq!(idle_count(&alive), 1, "a healthy idle connection stays");
    assert_eq!(idle_count(&dead), 0);
    assert_eq!(idle_count(&expired), 0);
    let keys: Vec<u64> = IDLE.lists().keys().copied().collect();
    assert!(
        !keys.contains(&dead.reuse_hash()),
        "an empty peer is forgotten"
    );
    assert!(!keys.contains(&expired.reuse_hash()));
}
