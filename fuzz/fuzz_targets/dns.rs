//! The DNS forwarder with arbitrary queries and answers, in virtual time.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tapir::service::dns::{DnsRelay, parse_resolv_conf};

fuzz_target!(|data: &[u8]| {
    let upstream: SocketAddr = "192.0.2.53:53".parse().unwrap();
    let client: SocketAddr = "10.0.2.100:5353".parse().unwrap();
    let mut relay = DnsRelay::new(vec![upstream], 8, Duration::from_secs(2));
    let t0 = Instant::now();
    // The input is a sequence of datagrams, each prefixed by a length byte and a kind byte.
    let mut rest = data;
    let mut step = 0u64;
    while rest.len() >= 2 {
        let (len, kind) = (usize::from(rest[0]), rest[1]);
        let body = &rest[2..(2 + len).min(rest.len())];
        rest = &rest[(2 + len).min(rest.len())..];
        step += 1;
        let now = t0 + Duration::from_millis(step * 300);
        match kind % 3 {
            0 => {
                if let Some(q) = relay.handle_query(now, client, body) {
                    // Echo the forwarded query back as its own answer, with QR set.
                    let mut answer = q.bytes.clone();
                    if answer.len() > 2 {
                        answer[2] |= 0x80;
                    }
                    let _ = relay.handle_answer(now, upstream, &answer);
                }
            }
            1 => {
                let _ = relay.handle_answer(now, upstream, body);
            }
            _ => {
                let _ = relay.handle_timeout(now);
            }
        }
    }
    let _ = parse_resolv_conf(&String::from_utf8_lossy(data));
});
