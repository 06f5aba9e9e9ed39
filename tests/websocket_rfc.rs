//! The WebSocket protocol itself (RFC 6455), as a raw client on a TCP socket
//! sees it: what closes with which code, how soon the TCP connection ends
//! after a close, that a pong is not held back behind a message, and that a
//! flood of malformed frames costs the server next to nothing while other
//! clients are served.

mod common;

use std::time::{Duration, Instant};

use common::TestApp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A WebSocket client that writes and reads frames byte by byte.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A masked client frame: `first` is the FIN/RSV/opcode byte.
fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![first];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=65_535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    payload
}

/// A frame from the server: its first byte and payload.
#[derive(Debug)]
struct Frame {
    first: u8,
    payload: Vec<u8>,
}

impl Frame {
    fn opcode(&self) -> u8 {
        self.first & 0x0f
    }

    fn close_code(&self) -> Option<u16> {
        (self.opcode() == 0x8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

impl Raw {
    /// Opens a connection and reads past the `welcome`.
    async fn open(addr: std::net::SocketAddr) -> Raw {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        let request = format!(
            "GET /api/realtime HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Raw {
            stream,
            buf: Vec::new(),
        };
        let head_end = loop {
            if let Some(at) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            assert!(
                raw.fill(Duration::from_secs(10)).await,
                "no handshake answer"
            );
        };
        let head = String::from_utf8_lossy(&raw.buf[..head_end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        raw.buf.drain(..head_end);
        let welcome = raw.frame(Duration::from_secs(10)).await.expect("welcome");
        assert!(
            String::from_utf8_lossy(&welcome.payload).contains("welcome"),
            "{welcome:?}"
        );
        raw
    }

    async fn send(&mut self, bytes: &[u8]) {
        // The server may already have closed: a failed write is its answer.
        let _ = self.stream.write_all(bytes).await;
    }

    /// Reads more; false at the end of the stream or when `wait` passes.
    async fn fill(&mut self, wait: Duration) -> bool {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(wait, self.stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            _ => false,
        }
    }

    /// The next whole frame from the server, if one comes within `wait`.
    async fn frame(&mut self, wait: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some((len, header)) = frame_len(&self.buf)
                && self.buf.len() >= header + len
            {
                let first = self.buf[0];
                let payload = self.buf[header..header + len].to_vec();
                self.buf.drain(..header + len);
                return Some(Frame { first, payload });
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || !self.fill(left).await {
                return None;
            }
        }
    }

    /// Reads frames until a close frame; its code (0 for an empty close).
    async fn close_code(&mut self) -> u16 {
        while let Some(frame) = self.frame(Duration::from_secs(5)).await {
            if frame.opcode() == 0x8 {
                return frame.close_code().unwrap_or(0);
            }
        }
        panic!("no close frame from the server");
    }

    /// How long until the server has let the TCP connection go (at most
    /// `wait`): not only its FIN, which comes with its last frame, but the
    /// socket closed, as a write that draws a reset shows.
    async fn time_to_close(&mut self, wait: Duration) -> Option<Duration> {
        let start = Instant::now();
        let mut chunk = [0u8; 4096];
        loop {
            let left = wait.saturating_sub(start.elapsed());
            match tokio::time::timeout(left, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => continue,
                Err(_) => return None,
            }
        }
        // Half closed: a closed socket answers a write with a reset, and
        // the write after that fails.
        while start.elapsed() < wait {
            if self.stream.write_all(&[0x88]).await.is_err() {
                return Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }
}

/// A server frame's payload length and header length, once known.
fn frame_len(buf: &[u8]) -> Option<(usize, usize)> {
    let len = *buf.get(1)? & 0x7f;
    match len {
        126 => Some((u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4)),
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            Some((u64::from_be_bytes(bytes) as usize, 10))
        }
        n => Some((n as usize, 2)),
    }
}

/// Within this of the client's close answer the TCP connection is gone.
const AFTER_ANSWER: Duration = Duration::from_millis(500);
/// Without an answer, within this.
const WITHOUT_ANSWER: Duration = Duration::from_millis(1500);

/// Sends `bad`, expects a close with `code`; then either answers the close
/// and expects the TCP connection gone soon after, or stays silent and
/// expects it gone within about a second.
async fn fails_with(app: &TestApp, bad: &[u8], code: u16, answer: bool) {
    let mut raw = Raw::open(app.addr).await;
    raw.send(bad).await;
    assert_eq!(raw.close_code().await, code, "for {bad:02x?}");
    if answer {
        raw.send(&masked(0x88, &close_payload(code, b""))).await;
    }
    let limit = if answer { AFTER_ANSWER } else { WITHOUT_ANSWER };
    let took = raw.time_to_close(Duration::from_secs(5)).await;
    assert!(
        took.is_some_and(|t| t < limit),
        "for {bad:02x?} (answered: {answer}): the connection ended after {took:?}"
    );
}

#[tokio::test]
async fn text_that_is_not_utf8_closes_with_1007() {
    let app = TestApp::spawn().await;
    let invalid: [&[u8]; 4] = [
        &[
            0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xed, 0xa0, 0x80,
        ],
        &[0xff],
        &[0xc0, 0xaf],
        &[0xf4, 0x90, 0x80, 0x80],
    ];
    for payload in invalid {
        fails_with(&app, &masked(0x81, payload), 1007, true).await;
        let mut fragmented = masked(0x01, &payload[..1]);
        fragmented.extend(masked(0x80, &payload[1..]));
        fails_with(&app, &fragmented, 1007, true).await;
    }
    let reason = close_payload(1000, &[0xce, 0xba, 0xff]);
    fails_with(&app, &masked(0x88, &reason), 1007, false).await;
}

#[tokio::test]
async fn a_bad_frame_header_fails_at_once_and_the_tcp_connection_follows() {
    let app = TestApp::spawn().await;
    let mut bad = vec![
        masked(0x81 | 0x40, b"rsv1"),
        masked(0x81 | 0x20, b"rsv2"),
        masked(0x81 | 0x10, b"rsv3"),
        // Not masked.
        vec![0x81, 0x05, b'h', b'e', b'l', b'l', b'o'],
    ];
    bad.extend(
        (0x3..=0x7)
            .chain(0xb..=0xf)
            .map(|op| masked(0x80 | op, b"")),
    );
    for (i, frame) in bad.iter().enumerate() {
        fails_with(&app, frame, 1002, i % 2 == 0).await;
        // The two header bytes alone are enough.
        fails_with(&app, &frame[..2], 1002, i % 2 == 1).await;
    }
}

#[tokio::test]
async fn invalid_close_frames_get_1002_and_the_connection_ends_after_the_answer() {
    let app = TestApp::spawn().await;
    let mut bad = vec![masked(0x88, &[0x03]), masked(0x88, &[b'x'; 126])];
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999] {
        bad.push(masked(0x88, &close_payload(code, b"")));
    }
    for frame in &bad {
        fails_with(&app, frame, 1002, true).await;
    }
}

#[tokio::test]
async fn control_frames_that_break_the_rules_and_stray_continuations_are_1002() {
    let app = TestApp::spawn().await;
    let bad = [
        masked(0x89, &[b'x'; 126]),
        masked(0x09, b"fragmented ping"),
        masked(0x80, b"nothing to continue"),
        {
            let mut twice = masked(0x01, b"one");
            twice.extend(masked(0x01, b"two"));
            twice
        },
    ];
    for frame in &bad {
        fails_with(&app, frame, 1002, true).await;
    }
}

#[tokio::test]
async fn a_ping_between_fragments_is_answered_before_the_message() {
    let app = TestApp::spawn().await;
    let mut raw = Raw::open(app.addr).await;
    let request = br#"{"type":"ping","ref":"r1"}"#;
    let mut bytes = masked(0x01, &request[..10]);
    bytes.extend(masked(0x89, b"between"));
    bytes.extend(masked(0x80, &request[10..]));
    raw.send(&bytes).await;
    let first = raw.frame(Duration::from_secs(5)).await.expect("a frame");
    assert_eq!(
        (first.opcode(), first.payload.as_slice()),
        (0xa, &b"between"[..])
    );
    let second = raw.frame(Duration::from_secs(5)).await.expect("the reply");
    assert_eq!(second.opcode(), 0x1);
    assert!(String::from_utf8_lossy(&second.payload).contains(r#""ref":"r1""#));
}

#[tokio::test]
async fn pongs_carry_the_pings_exact_payload() {
    let app = TestApp::spawn().await;
    let mut raw = Raw::open(app.addr).await;
    for payload in [&b""[..], b"x", &[0xffu8; 125][..], &[0u8, 1, 2, 0xfe][..]] {
        raw.send(&masked(0x89, payload)).await;
        let pong = raw.frame(Duration::from_secs(5)).await.expect("pong");
        assert_eq!((pong.opcode(), pong.payload.as_slice()), (0xa, payload));
    }
}

#[tokio::test]
async fn a_clean_close_is_echoed_and_the_server_ends_the_tcp_connection_first() {
    let app = TestApp::spawn().await;
    for code in [1000u16, 1001, 1003, 1011, 3000, 4999] {
        let mut raw = Raw::open(app.addr).await;
        raw.send(&masked(0x88, &close_payload(code, b"bye"))).await;
        assert_eq!(raw.close_code().await, code);
        let took = raw.time_to_close(Duration::from_secs(5)).await;
        assert!(took.is_some_and(|t| t < AFTER_ANSWER), "{code}: {took:?}");
    }
    // An empty close is answered with an empty close.
    let mut raw = Raw::open(app.addr).await;
    raw.send(&masked(0x88, b"")).await;
    assert_eq!(raw.close_code().await, 0);
    // Nothing is read or answered after a close.
    let mut raw = Raw::open(app.addr).await;
    let mut bytes = masked(0x88, &close_payload(1000, b""));
    bytes.extend(masked(0x81, br#"{"type":"ping"}"#));
    raw.send(&bytes).await;
    assert_eq!(raw.close_code().await, 1000);
    assert!(raw.frame(Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn after_the_servers_own_close_is_answered_the_connection_ends_at_once() {
    let app = TestApp::spawn_with(|c| c.idle_timeout_ms = 600).await;
    let mut raw = Raw::open(app.addr).await;
    // Only pings are answered (with pongs); nothing else is sent: 4000.
    loop {
        let frame = raw.frame(Duration::from_secs(5)).await.expect("a frame");
        if frame.opcode() == 0x8 {
            assert_eq!(frame.close_code(), Some(4000));
            break;
        }
    }
    raw.send(&masked(0x88, &close_payload(4000, b""))).await;
    let took = raw.time_to_close(Duration::from_secs(5)).await;
    assert!(took.is_some_and(|t| t < AFTER_ANSWER), "{took:?}");
}

#[tokio::test]
async fn oversized_messages_are_refused_with_1009_at_their_header() {
    let app = TestApp::spawn().await;
    for len in [1u64 << 62, 1 << 63, 65_537] {
        let mut header = vec![0x81, 0x80 | 127];
        header.extend_from_slice(&len.to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        // Only the header is sent: the refusal cannot wait for the payload.
        fails_with(&app, &header, 1009, true).await;
    }
    let mut raw = Raw::open(app.addr).await;
    let mut exact = br#"{"type":"ping","ref":1,"pad":""#.to_vec();
    exact.resize(65_536 - 2, b'x');
    exact.extend_from_slice(br#""}"#);
    raw.send(&masked(0x81, &exact)).await;
    let reply = raw.frame(Duration::from_secs(5)).await.expect("pong");
    assert!(String::from_utf8_lossy(&reply.payload).contains("pong"));
}

/// User and system CPU of a process, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which ends with the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no memory effects.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

#[tokio::test]
async fn a_thousand_bad_headers_at_once_cost_little_and_others_are_still_served() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("rt.db").display());
    let addr = format!("127.0.0.1:{}", common::free_port());
    let mut child = common::serve_binary(&addr, &["--database-url", &db]).await;
    let pid = child.id();
    let sock: std::net::SocketAddr = addr.parse().unwrap();

    let mut clients = Vec::new();
    for _ in 0..1000 {
        clients.push(Raw::open(sock).await);
    }
    let mut healthy = Raw::open(sock).await;
    let cpu_before = cpu_seconds(pid);
    // Every client sends a reserved-opcode header at the same moment.
    let attackers: Vec<_> = clients
        .into_iter()
        .map(|mut raw| {
            tokio::spawn(async move {
                raw.send(&[0x83, 0x80]).await;
                raw.time_to_close(Duration::from_secs(10)).await
            })
        })
        .collect();
    let mut slowest_ping = Duration::ZERO;
    for n in 0..20 {
        let started = Instant::now();
        healthy.send(&masked(0x89, &[n])).await;
        let pong = healthy.frame(Duration::from_secs(5)).await.expect("pong");
        assert_eq!(pong.payload, [n]);
        slowest_ping = slowest_ping.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for attacker in attackers {
        let ended = attacker.await.unwrap();
        assert!(ended.is_some(), "a failed connection stayed open");
    }
    let cost = cpu_seconds(pid) - cpu_before;
    let _ = child.kill();
    let _ = child.wait();
    println!("1,000 bad headers: {cost:.3} CPU-seconds; slowest ping {slowest_ping:?}");
    assert!(cost < 1.0, "{cost} CPU-seconds for 1,000 bad headers");
    assert!(
        slowest_ping < Duration::from_millis(100),
        "{slowest_ping:?}"
    );
}
