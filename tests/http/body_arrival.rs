//! A body that fails to arrive (broken chunked encoding, a client that disconnects mid-body) is
//! 400 AUD-001, never 413: only a body over `http.max_body_bytes` is "too large".

use crate::common;

use std::time::Duration;

use common::{BASE, TestApp, event, exported_ids};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `request` on a raw connection, half-closes it when `gone` (the client disconnected)
/// and returns what the server answered.
async fn raw_exchange(app: &TestApp, request: &[u8], gone: bool) -> String {
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    s.write_all(request).await.unwrap();
    if gone {
        s.shutdown().await.unwrap();
    }
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .expect("the server answers and closes")
        .expect("read the answer");
    String::from_utf8_lossy(&out).into_owned()
}

fn chunked(head_extra: &str, chunks: &[&str], tail: &str) -> String {
    let mut req = format!(
        "POST {BASE}/events HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n{head_extra}\r\n"
    );
    for c in chunks {
        req.push_str(&format!("{:x}\r\n{c}\r\n", c.len()));
    }
    req.push_str(tail);
    req
}

fn assert_broken_body_answer(resp: &str) {
    assert!(resp.starts_with("HTTP/1.1 400 "), "{resp}");
    assert!(resp.contains("\"errorCode\":\"AUD-001\""), "{resp}");
    assert!(resp.contains("did not arrive completely"), "{resp}");
}

#[tokio::test]
async fn broken_chunked_encoding_is_400_aud001() {
    let mut app = TestApp::start().await;
    let body = event("chunky").to_string();
    let (a, b) = body.split_at(40);
    // A valid first chunk, then a chunk size that is not hexadecimal.
    let resp = raw_exchange(&app, chunked("", &[a], "ZZ\r\n").as_bytes(), false).await;
    assert_broken_body_answer(&resp);
    // The same body, properly chunked, is accepted: the test is about the framing only.
    let valid = chunked("Connection: close\r\n", &[a, b], "0\r\n\r\n");
    let resp = raw_exchange(&app, valid.as_bytes(), false).await;
    assert!(resp.starts_with("HTTP/1.1 202 "), "{resp}");
    app.stop().await;
    assert_eq!(exported_ids(&app.spool_dir()), vec!["chunky"]);
}

#[tokio::test]
async fn a_client_that_disconnects_mid_body_gets_400_not_413() {
    let mut app = TestApp::start().await;
    let body = event("short").to_string();
    // Content-Length promises 100 bytes more than the client sends before it half-closes.
    let req = format!(
        "POST {BASE}/events HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len() + 100,
    );
    assert_broken_body_answer(&raw_exchange(&app, req.as_bytes(), true).await);
    // A chunked body that stops before its last chunk.
    let (a, _) = body.split_at(40);
    let cut = chunked("", &[a], "");
    assert_broken_body_answer(&raw_exchange(&app, cut.as_bytes(), true).await);
    app.stop().await;
    assert!(exported_ids(&app.spool_dir()).is_empty(), "nothing stored");
}

#[tokio::test]
async fn only_a_body_over_the_limit_is_413() {
    let mut app = TestApp::start_with(
        |c| c.http.max_body_bytes = 1024,
        audit_manager::serve::StartOptions::default(),
    )
    .await;
    // No Content-Length to refuse it early: the limit is found while reading the chunks.
    let big = "x".repeat(700);
    let req = chunked("Connection: close\r\n", &[&big, &big], "0\r\n\r\n");
    let resp = raw_exchange(&app, req.as_bytes(), false).await;
    assert!(resp.starts_with("HTTP/1.1 413 "), "{resp}");
    assert!(resp.contains("\"errorCode\":\"AUD-003\""), "{resp}");
    app.stop().await;
}
