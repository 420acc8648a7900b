//! A hostile or broken server (a TcpListener in the test) gets protocol
//! errors or a lost connection, never a panic, a hang or an unbounded
//! allocation.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ferry_broker::{
    Broker, BrokerUri, ConnectOptions, Connection, Error, JobId, Peek, Reconnecting,
};

/// A fake broker that takes one connection, reads the client's first
/// command (and its body), then runs `answer`; it returns what it read and
/// the listener, to check nobody connected again.
fn fake(
    answer: impl FnOnce(&mut TcpStream) + Send + 'static,
) -> (BrokerUri, JoinHandle<(Vec<u8>, TcpListener)>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let uri = format!("127.0.0.1:{}", l.local_addr().expect("addr").port())
        .parse()
        .expect("uri");
    let h = thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        let got = read_command(&mut s);
        answer(&mut s);
        (got, l)
    });
    (uri, h)
}

/// Reads until the client has been quiet for 100 ms after a `\r\n`.
fn read_command(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if got.windows(2).any(|w| w == b"\r\n") {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    got
}

fn opts() -> ConnectOptions {
    ConnectOptions {
        connect_timeout: Duration::from_secs(1),
        io_timeout: Duration::from_millis(500),
        max_job_size: 1024,
        ..ConnectOptions::default()
    }
}

fn reply(bytes: &'static [u8]) -> impl FnOnce(&mut TcpStream) + Send + 'static {
    move |s| {
        let _ = s.write_all(bytes);
    }
}

/// What a reserve gets when the server answers with `bytes` (then closes).
fn reserve_against(bytes: &'static [u8]) -> Error {
    let (uri, h) = fake(reply(bytes));
    let mut c = Connection::connect(&uri, opts()).expect("connect");
    let e = c.reserve(Duration::ZERO).expect_err("hostile reply");
    assert!(c.is_lost(), "given up after {e}");
    assert!(matches!(
        c.reserve(Duration::ZERO),
        Err(Error::Disconnected(_))
    ));
    h.join().expect("fake");
    e
}

#[test]
fn garbage_and_malformed_replies_are_protocol_errors() {
    for bytes in [
        &b"HELLO WORLD\r\n"[..],
        b"RESERVED\r\n",
        b"RESERVED 1\r\n",
        b"RESERVED -1 5\r\n",
        b"RESERVED 1 5 5\r\n",
        b"RESERVED 1 99999999999999999999999\r\n",
        b"RESERVED 1 18446744073709551615\r\n",
        b"RESERVED 1 3\r\nabcXY",
        b"INSERTED 1\n",
        b"\xff\xfe\r\n",
        b"\r\n",
        b"USING default\r\n",
    ] {
        let e = reserve_against(bytes);
        assert!(
            matches!(e, Error::Protocol(_)),
            "{:?}: {e}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn an_endless_line_is_cut_off() {
    let (uri, h) = fake(|s| {
        let junk = vec![b'A'; 1 << 20];
        let _ = s.write_all(&junk);
    });
    let mut c = Connection::connect(&uri, opts()).expect("connect");
    let e = c.use_tube("t").expect_err("endless line");
    assert!(
        matches!(&e, Error::Protocol(m) if m.0.contains("longer than")),
        "{e}"
    );
    drop(c);
    h.join().expect("fake");
}

#[test]
fn closing_mid_reply_is_a_lost_connection() {
    for bytes in [
        &b"RESERVED 1 10\r\nabc"[..],
        b"RESERVED 1 3\r\nabc",
        b"RESERV",
        b"",
    ] {
        let e = reserve_against(bytes);
        assert!(
            matches!(e, Error::Disconnected(_)),
            "{:?}: {e}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn a_huge_announced_body_is_drained_not_allocated() {
    // 900 MB announced, above the client's max but within what beanstalkd
    // could hold: read and dropped in small pieces until the server closes.
    let e = reserve_against(b"RESERVED 7 900000000\r\nsome bytes");
    assert!(matches!(e, Error::Disconnected(_)), "{e}");
    let (uri, h) = fake(reply(b"RESERVED 7 2000\r\n"));
    let mut c = Connection::connect(&uri, opts()).expect("connect");
    let e = c.peek(Peek::Id(JobId(7))).expect_err("no body");
    assert!(
        matches!(e, Error::Protocol(_) | Error::Disconnected(_)),
        "{e}"
    );
    h.join().expect("fake");
}

#[test]
fn hostile_stats_bodies_are_protocol_errors() {
    for bytes in [
        &b"OK 4294967296\r\n"[..],
        b"OK 5\r\n---\nx\r\n",
        b"OK 11\r\n---\nid: -5\n\r\n",
        b"OK 4\r\n\xff\xff\xff\xff\r\n",
    ] {
        let (uri, h) = fake(reply(bytes));
        let mut c = Connection::connect(&uri, opts()).expect("connect");
        let e = c.stats_job(JobId(1)).expect_err("hostile stats");
        assert!(
            matches!(e, Error::Protocol(_)),
            "{:?}: {e}",
            String::from_utf8_lossy(bytes)
        );
        h.join().expect("fake");
    }
}

#[test]
fn a_silent_server_times_out() {
    let (uri, h) = fake(|_| thread::sleep(Duration::from_secs(1)));
    let mut c = Connection::connect(&uri, opts()).expect("connect");
    let t = Instant::now();
    let e = c.watch("t").expect_err("no answer");
    assert!(matches!(e, Error::TimedOut(_)), "{e}");
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    h.join().expect("fake");
}

#[test]
fn a_put_without_reply_is_ambiguous_and_not_retried() {
    let (uri, h) = fake(|_| ()); // reads the put, closes without a reply
    let mut c = Connection::connect(&uri, opts()).expect("connect");
    let e = c
        .put(b"maybe", 0, Duration::ZERO, Duration::from_secs(5))
        .expect_err("no reply");
    assert!(
        matches!(&e, Error::AmbiguousPut(cause) if matches!(**cause, Error::Disconnected(_))),
        "{e}"
    );
    let (got, _) = h.join().expect("fake");
    assert_eq!(got, b"put 0 0 5 5\r\nmaybe\r\n");

    let (uri, h) = fake(|_| ());
    let mut r = Reconnecting::lazy(uri, opts(), Default::default());
    let e = r
        .put(b"maybe", 0, Duration::ZERO, Duration::from_secs(5))
        .expect_err("no reply");
    assert!(matches!(e, Error::AmbiguousPut(_)), "{e}");
    let (_, listener) = h.join().expect("fake");
    listener.set_nonblocking(true).expect("nonblocking");
    assert!(listener.accept().is_err(), "the put was not sent again");
}

#[test]
fn unsolicited_data_stops_a_put_before_it_is_sent() {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let uri: BrokerUri = format!("127.0.0.1:{}", l.local_addr().expect("addr").port())
        .parse()
        .expect("uri");
    let h = thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        s.write_all(b"INSERTED 99\r\n").expect("write");
        read_command(&mut s)
    });
    let mut c = Connection::connect(&uri, opts()).expect("connect");
    thread::sleep(Duration::from_millis(100));
    let e = c
        .put(b"x", 0, Duration::ZERO, Duration::from_secs(5))
        .expect_err("unsolicited");
    assert!(matches!(e, Error::Protocol(_)), "{e}");
    drop(c);
    assert!(h.join().expect("fake").is_empty(), "nothing was sent");
}

#[test]
fn a_protocol_violation_is_not_retried_by_reconnecting() {
    let (uri, h) = fake(reply(b"NONSENSE\r\n"));
    let mut r = Reconnecting::lazy(uri, opts(), Default::default());
    let e = r.stats_tube("t").expect_err("garbage");
    assert!(matches!(e, Error::Protocol(_)), "{e}");
    let (_, listener) = h.join().expect("fake");
    listener.set_nonblocking(true).expect("nonblocking");
    assert!(listener.accept().is_err(), "no second connection");
}

#[test]
fn random_replies_never_panic() {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let words: [&[u8]; 6] = [b"RESERVED ", b"FOUND ", b"OK ", b"INSERTED ", b"\r\n", b" "];
    for _ in 0..60 {
        let mut bytes = Vec::new();
        for _ in 0..(next() % 8) {
            match next() % 3 {
                0 => bytes.extend_from_slice(words[(next() % 6) as usize]),
                1 => bytes.extend_from_slice((next() % 100_000).to_string().as_bytes()),
                _ => bytes.push((next() % 256) as u8),
            }
        }
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        let (uri, h) = fake(reply(bytes));
        let mut c = Connection::connect(&uri, opts()).expect("connect");
        let _ = c.reserve(Duration::ZERO);
        let _ = c.stats_job(JobId(1));
        drop(c);
        h.join().expect("fake");
    }
}

/// A fake that answers with `head`, then one byte every 50 ms for 3 s.
fn trickle(head: &'static [u8]) -> (BrokerUri, JoinHandle<(Vec<u8>, TcpListener)>) {
    fake(move |s| {
        let _ = s.write_all(head);
        for _ in 0..60 {
            thread::sleep(Duration::from_millis(50));
            if s.write_all(b"x").is_err() {
                break;
            }
        }
    })
}

#[test]
fn a_trickling_server_times_out() {
    for head in [
        &b"RESERVED 1 1000\r\n"[..],
        b"RESERVED 1 100000\r\n",
        b"RESERVED 1 ",
    ] {
        let (uri, h) = trickle(head);
        let mut c = Connection::connect(&uri, opts()).expect("connect");
        let t = Instant::now();
        let e = c.reserve(Duration::ZERO).expect_err("trickle");
        assert!(matches!(e, Error::TimedOut(_)), "{e}");
        // io_timeout 500 ms, and 1 MiB/s for the body: about 0.5 s.
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );
        drop(c);
        h.join().expect("fake");
    }
}
