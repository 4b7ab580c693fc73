//! Slow and silent clients against the listener's bounds: `http.body_timeout`,
//! `http.header_timeout` (also over TLS, handshake included), `http.max_connections` and
//! `http.shutdown_grace`. None of them lets a client keep other emitters out, or the process
//! from stopping, for longer than its bound.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use audit_manager::serve::StartOptions;
use common::{BASE, ChildServer, TestApp, code, event, eventually};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Room beyond a configured bound for a shared, busy test machine.
const MARGIN: Duration = Duration::from_secs(10);

/// Reads until the server closes the connection (end of stream or reset) and returns what it
/// sent; panics naming `what` if it is still open after `deadline`.
async fn read_until_closed<S: AsyncRead + Unpin>(
    s: &mut S,
    deadline: Duration,
    what: &str,
) -> String {
    let until = tokio::time::Instant::now() + deadline;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Err(_) => panic!(
                "{what}: the server did not close the connection within {deadline:?} (got {:?})",
                String::from_utf8_lossy(&out)
            ),
            Ok(Ok(0) | Err(_)) => return String::from_utf8_lossy(&out).into_owned(),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one whole response (headers, then `Content-Length` bytes) from a kept-alive
/// connection.
async fn read_response<S: AsyncRead + Unpin>(s: &mut S, deadline: Duration) -> String {
    let read = async {
        let mut out = Vec::new();
        let mut byte = [0u8; 1];
        while !out.ends_with(b"\r\n\r\n") {
            assert_eq!(
                s.read(&mut byte).await.expect("read"),
                1,
                "closed mid-response"
            );
            out.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&out).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().expect("content-length"));
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.expect("read body");
        out.extend_from_slice(&body);
        String::from_utf8_lossy(&out).into_owned()
    };
    tokio::time::timeout(deadline, read)
        .await
        .expect("a response in time")
}

/// The headers of an ingest request announcing a `len`-byte body, and its first byte.
fn announce(len: u64) -> String {
    format!(
        "POST {BASE}/events HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: {len}\r\n\r\n{{"
    )
}

/// Writes a byte every 200 ms for as long as the server takes them.
fn trickle(mut w: impl AsyncWrite + Unpin + Send + 'static) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while w.write_all(b" ").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

const BODY: u64 = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_are_cut_after_body_timeout_and_give_their_budget_back() {
    let body_timeout = Duration::from_secs(2);
    let mut app = TestApp::start_with(
        |c| {
            c.http.max_body_bytes = BODY;
            c.http.max_in_flight_bytes = 2 * BODY;
            c.http.body_timeout = body_timeout;
        },
        StartOptions::default(),
    )
    .await;
    // One stalls after the first byte of its body, one trickles a byte every 200 ms; each
    // announced the largest allowed body, so together they hold the whole budget.
    let mut stalled = TcpStream::connect(app.addr).await.unwrap();
    stalled.write_all(announce(BODY).as_bytes()).await.unwrap();
    let (mut trickled, mut w) = TcpStream::connect(app.addr).await.unwrap().into_split();
    w.write_all(announce(BODY).as_bytes()).await.unwrap();
    let trickling = trickle(w);
    let (status, body) = eventually(MARGIN, "the slow bodies to hold the budget", || async {
        let (status, body) = app.post_json("/events", &event("early")).await;
        (status != 202).then_some((status, body))
    })
    .await;
    assert_eq!((status, code(&body)), (503, "AUD-004"), "{body}");
    // Another emitter gets in once the body timeout has cut them.
    eventually(
        body_timeout + MARGIN,
        "a 202 for another emitter",
        || async {
            let (status, _) = app.post_json("/events", &event("normal")).await;
            (status == 202).then_some(())
        },
    )
    .await;
    let answer = read_until_closed(&mut stalled, MARGIN, "the stalled body").await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("\"errorCode\":\"AUD-408\""), "{answer}");
    assert!(answer.contains("http.body_timeout"), "{answer}");
    // The trickling one is answered the same; a byte it sends after the close may reset the
    // connection before the answer is read.
    let answer = read_until_closed(&mut trickled, MARGIN, "the trickling body").await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408 "),
        "{answer}"
    );
    tokio::time::timeout(MARGIN, trickling)
        .await
        .expect("the trickle's writes fail once the server closed")
        .unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_headers_are_closed_after_header_timeout() {
    let header_timeout = Duration::from_secs(1);
    let mut app = TestApp::start_with(
        |c| c.http.header_timeout = header_timeout,
        StartOptions::default(),
    )
    .await;
    let mut half = TcpStream::connect(app.addr).await.unwrap();
    let started = Instant::now();
    half.write_all(format!("POST {BASE}/events HTTP/1.1\r\nHost: test\r\nContent-Ty").as_bytes())
        .await
        .unwrap();
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    let answer = read_until_closed(&mut half, header_timeout + MARGIN, "half-sent headers").await;
    assert_eq!(answer, "", "closed without an answer");
    assert!(
        started.elapsed() >= header_timeout / 2,
        "closed for the timeout, not at once: {:?}",
        started.elapsed()
    );
    let answer = read_until_closed(&mut silent, header_timeout + MARGIN, "a silent client").await;
    assert_eq!(answer, "");
    // Complete requests are served as before.
    let (status, body) = app.post_json("/events", &event("complete")).await;
    assert_eq!(status, 202, "{body}");
    app.stop().await;
}

/// A self-signed certificate for `localhost`: (PEM certificate, PEM key).
fn self_signed() -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    (c.cert.pem(), c.key_pair.serialize_pem())
}

fn tls_connector(cert_pem: &str) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_an_unfinished_handshake_or_headers_are_closed_after_header_timeout() {
    let header_timeout = Duration::from_secs(1);
    // Well below the 10 s default: closing at the default would be too late.
    let deadline = header_timeout + Duration::from_secs(5);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed();
    let (cert_file, key_file) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    std::fs::write(&cert_file, &cert).unwrap();
    std::fs::write(&key_file, &key).unwrap();
    let mut app = TestApp::start_with(
        |c| {
            c.http.tls.cert_file = Some(cert_file);
            c.http.tls.key_file = Some(key_file);
            c.http.header_timeout = header_timeout;
        },
        StartOptions::default(),
    )
    .await;
    // Connects and never starts the handshake.
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    // Starts a ClientHello record (announcing 512 bytes) and sends nothing more.
    let mut partial = TcpStream::connect(app.addr).await.unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    read_until_closed(&mut silent, deadline, "no handshake").await;
    read_until_closed(&mut partial, deadline, "half a handshake").await;
    // A finished handshake, then half the headers.
    let connector = tls_connector(&cert);
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tcp = TcpStream::connect(app.addr).await.unwrap();
    let mut tls = connector
        .connect(name.clone(), tcp)
        .await
        .expect("handshake");
    tls.write_all(format!("GET {BASE}/version HTTP/1.1\r\nHost: loc").as_bytes())
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let answer = read_until_closed(&mut tls, deadline, "half-sent headers over TLS").await;
    assert_eq!(answer, "");
    // A whole request over TLS is answered.
    let tcp = TcpStream::connect(app.addr).await.unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("handshake");
    tls.write_all(format!("GET {BASE}/version HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let answer = read_response(&mut tls, MARGIN).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_beyond_max_connections_waits_until_one_closes() {
    let mut app = TestApp::start_with(
        |c| {
            c.http.max_connections = 2;
            // Idle connections stay open for the whole test.
            c.http.header_timeout = Duration::from_secs(120);
        },
        StartOptions::default(),
    )
    .await;
    let get = format!("GET {BASE}/version HTTP/1.1\r\nHost: test\r\n\r\n");
    let mut first = TcpStream::connect(app.addr).await.unwrap();
    let mut second = TcpStream::connect(app.addr).await.unwrap();
    for s in [&mut first, &mut second] {
        s.write_all(get.as_bytes()).await.unwrap();
        let answer = read_response(s, MARGIN).await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    }
    // The kernel completes the third connection into the listen backlog; the service neither
    // accepts nor answers it while both slots are taken.
    let mut third = TcpStream::connect(app.addr).await.unwrap();
    third.write_all(get.as_bytes()).await.unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_secs(1), third.peek(&mut byte)).await;
    assert!(
        early.is_err(),
        "served beyond http.max_connections: {early:?}"
    );
    // One closes: the third is served.
    drop(first);
    let answer = read_response(&mut third, MARGIN).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    // And the second was served throughout.
    second.write_all(get.as_bytes()).await.unwrap();
    let answer = read_response(&mut second, MARGIN).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_slow_client_exits_within_shutdown_grace_keeping_every_202() {
    let grace = Duration::from_secs(2);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let mut server = ChildServer::spawn(
        &spool,
        &[
            ("AUDIT_MANAGER__HTTP__SHUTDOWN_GRACE", "2s"),
            // The slow body is not cut by its own timeout during the test.
            ("AUDIT_MANAGER__HTTP__BODY_TIMEOUT", "10m"),
        ],
    );
    server.wait_ready(Duration::from_secs(30)).await;
    let (mut slow, mut w) = TcpStream::connect(server.addr).await.unwrap().into_split();
    w.write_all(announce(BODY).as_bytes()).await.unwrap();
    let trickling = trickle(w);
    // Emitters sending events one at a time while it trickles.
    let url = format!("http://{}{BASE}/events", server.addr);
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (url, acked, stop) = (url.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let id = format!("c{c}-n{n}");
                    let Ok(resp) = client.post(&url).json(&event(&id)).send().await else {
                        break;
                    };
                    let (status, body) = common::read(resp).await;
                    match status {
                        202 => acked.lock().unwrap().push(id),
                        503 if code(&body) == "AUD-005" => break,
                        _ => panic!("unexpected answer: {status} {body}"),
                    }
                }
            })
        })
        .collect();
    eventually(MARGIN, "events acknowledged", || async {
        (acked.lock().unwrap().len() >= 20).then_some(())
    })
    .await;
    server.terminate();
    let exit = server.wait_exit(grace + MARGIN).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await
            .expect("emitters saw 202, 503 AUD-005 or a closed connection");
    }
    assert_eq!(exit, Some(0), "{}", server.log().join("\n"));
    assert!(
        server
            .log()
            .iter()
            .any(|l| l.contains("http.shutdown_grace")),
        "the cut is logged: {}",
        server.log().join("\n")
    );
    let answer = read_until_closed(&mut slow, MARGIN, "the slow client").await;
    assert!(
        !answer.contains(" 202 "),
        "the cut request got no 202: {answer}"
    );
    tokio::time::timeout(MARGIN, trickling)
        .await
        .expect("the trickle's writes fail once the process is gone")
        .unwrap();
    let acked = acked.lock().unwrap().clone();
    let stored: std::collections::HashSet<String> =
        common::exported_ids(&spool).into_iter().collect();
    let missing: Vec<&String> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events missing from the spool: {missing:?}",
        missing.len(),
        acked.len()
    );
}
