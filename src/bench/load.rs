//! The load generator: host-side servers and the guest-side client of `tapir bench`.
//!
//! Theory of operation. Throughput is iperf3's job; everything that needs every sample (the
//! latency distributions behind p50/p99 and the CDF) or a count iperf3 cannot give (connections
//! per second, connections held) is measured here, with plain blocking sockets so the generator
//! itself costs as little and as predictably as possible on every path alike.
//!
//! The [`HostServers`] run as threads of `tapir bench` in its private network namespace, on
//! 0.0.0.0 (so 127.0.0.1 for the rootless paths and the veth's address for the kernel path).
//! The [`ClientTask`] runs inside a guest (`tapir bench-client`, started by `tapir bench` as uid
//! 65534) and prints one JSON line on stdout. Every client loop is bounded: by the duration, by
//! [`MAX_SAMPLES`] and, for the connection rate, by [`MAX_CONNECTIONS`], which stays below the
//! guest's ephemeral port range so TIME_WAIT never runs it out of ports.

use std::io::{BufRead, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

/// Request and response size of the RR scenarios and of the connection rate's one exchange.
pub const MESSAGE: usize = 64;
/// Latency samples kept per run (about 40 s at 20 µs per round trip).
pub const MAX_SAMPLES: usize = 2_000_000;
/// Connections per connection-rate run: below the 28,232 ports of Linux's default ephemeral
/// range, each left in TIME_WAIT for 60 s by the guest's close.
pub const MAX_CONNECTIONS: u64 = 20_000;

/// The ports the host servers listen on (in the bench's own namespace).
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub tcp_rr: u16,
    pub udp_rr: u16,
    pub connect: u16,
    pub hold: u16,
}

pub const PORTS: Ports = Ports {
    tcp_rr: 17001,
    udp_rr: 17002,
    connect: 17003,
    hold: 17004,
};

/// The servers of the RR, connection-rate and hold scenarios; they live as long as the bench.
pub struct HostServers {
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl HostServers {
    pub fn start(ports: Ports) -> std::io::Result<HostServers> {
        let any = |port| SocketAddr::from(([0, 0, 0, 0], port));
        let rr = TcpListener::bind(any(ports.tcp_rr))?;
        let connect = TcpListener::bind(any(ports.connect))?;
        let hold = TcpListener::bind(any(ports.hold))?;
        let udp = UdpSocket::bind(any(ports.udp_rr))?;
        thread::spawn(move || {
            for stream in rr.incoming().flatten() {
                thread::spawn(move || echo(stream));
            }
        });
        thread::spawn(move || {
            for stream in connect.incoming().flatten() {
                answer_once(stream);
            }
        });
        let held = Arc::new(Mutex::new(Vec::new()));
        let keep = Arc::clone(&held);
        thread::spawn(move || {
            for stream in hold.incoming().flatten() {
                if let Ok(mut list) = keep.lock() {
                    list.push(stream);
                }
            }
        });
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, peer)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(&buf[..n], peer);
            }
        });
        Ok(HostServers { held })
    }

    /// Closes every connection the hold scenario left open (between guests).
    pub fn release_held(&self) {
        if let Ok(mut list) = self.held.lock() {
            list.clear();
        }
    }
}

fn echo(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// One connect–request–close exchange, server side: the client closes first (so TIME_WAIT is
/// the guest's), and a silent client cannot stall the server for long.
fn answer_once(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; MESSAGE];
    if stream.read_exact(&mut buf).is_err() || stream.write_all(&buf).is_err() {
        return;
    }
    let mut rest = [0u8; 64];
    while matches!(stream.read(&mut rest), Ok(n) if n > 0) {}
}

/// What the guest-side client does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTask {
    TcpRr,
    UdpRr,
    ConnectRate,
    Hold,
}

impl ClientTask {
    pub fn name(self) -> &'static str {
        match self {
            ClientTask::TcpRr => "tcp_rr",
            ClientTask::UdpRr => "udp_rr",
            ClientTask::ConnectRate => "connect_rate",
            ClientTask::Hold => "hold",
        }
    }

    pub fn from_name(name: &str) -> Option<ClientTask> {
        [
            ClientTask::TcpRr,
            ClientTask::UdpRr,
            ClientTask::ConnectRate,
            ClientTask::Hold,
        ]
        .into_iter()
        .find(|t| t.name() == name)
    }
}

/// Runs `task` against `server` for `duration` (for `Hold`: opens `count` connections, prints,
/// and keeps them until stdin closes) and returns the JSON line to print.
pub fn run_client(
    task: ClientTask,
    server: SocketAddr,
    duration: Duration,
    count: u64,
) -> serde_json::Value {
    raise_open_file_limit();
    match task {
        ClientTask::TcpRr => tcp_rr(server, duration),
        ClientTask::UdpRr => udp_rr(server, duration),
        ClientTask::ConnectRate => connect_rate(server, duration),
        ClientTask::Hold => hold(server, count, duration),
    }
}

fn tcp_rr(server: SocketAddr, duration: Duration) -> serde_json::Value {
    let mut stream = match TcpStream::connect_timeout(&server, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => return json!({ "error": format!("cannot connect to {server}: {e}") }),
    };
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = [0x5au8; MESSAGE];
    let mut reply = [0u8; MESSAGE];
    let mut samples = Vec::new();
    let mut errors = 0u64;
    let end = Instant::now() + duration;
    while Instant::now() < end && samples.len() < MAX_SAMPLES {
        let start = Instant::now();
        if stream.write_all(&request).is_err() || stream.read_exact(&mut reply).is_err() {
            errors += 1;
            break;
        }
        samples.push(start.elapsed());
    }
    latency_json(samples, errors)
}

fn udp_rr(server: SocketAddr, duration: Duration) -> serde_json::Value {
    let socket = match UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0)))
        .and_then(|s| s.connect(server).map(|()| s))
    {
        Ok(s) => s,
        Err(e) => return json!({ "error": format!("cannot open a UDP socket to {server}: {e}") }),
    };
    let _ = socket.set_read_timeout(Some(Duration::from_millis(200)));
    let mut samples = Vec::new();
    let mut lost = 0u64;
    let mut seq = 0u64;
    let mut reply = [0u8; 2048];
    let end = Instant::now() + duration;
    while Instant::now() < end && samples.len() < MAX_SAMPLES {
        seq += 1;
        let mut request = [0u8; MESSAGE];
        request[..8].copy_from_slice(&seq.to_be_bytes());
        let start = Instant::now();
        if socket.send(&request).is_err() {
            lost += 1;
            continue;
        }
        // A late reply to an earlier request is skipped, not counted as this one's.
        loop {
            match socket.recv(&mut reply) {
                Ok(n) if n >= 8 && reply[..8] == seq.to_be_bytes() => {
                    samples.push(start.elapsed());
                    break;
                }
                Ok(_) => continue,
                Err(_) => {
                    lost += 1;
                    break;
                }
            }
        }
    }
    latency_json(samples, lost)
}

fn connect_rate(server: SocketAddr, duration: Duration) -> serde_json::Value {
    let request = [0x5au8; MESSAGE];
    let mut reply = [0u8; MESSAGE];
    let mut done = 0u64;
    let mut failures = 0u64;
    let start = Instant::now();
    let end = start + duration;
    while Instant::now() < end && done < MAX_CONNECTIONS {
        let exchange =
            TcpStream::connect_timeout(&server, Duration::from_secs(2)).and_then(|mut s| {
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.write_all(&request)?;
                s.read_exact(&mut reply)?;
                s.shutdown(Shutdown::Both)
            });
        match exchange {
            Ok(()) => done += 1,
            Err(_) => failures += 1,
        }
        if failures > 100 && failures > done {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    json!({
        "connections": done,
        "failures": failures,
        "secs": secs,
        "per_sec": if secs > 0.0 { done as f64 / secs } else { 0.0 },
    })
}

/// Opens up to `count` connections within `budget`, reports, and holds them until stdin closes.
fn hold(server: SocketAddr, count: u64, budget: Duration) -> serde_json::Value {
    let mut held = Vec::new();
    let mut failures = 0u64;
    let mut in_a_row = 0;
    let start = Instant::now();
    // A path that cannot hold more (slirp4netns runs out of descriptors) stops the attempt
    // after a few failures in a row rather than after minutes of timeouts.
    while (held.len() as u64) < count && in_a_row < 5 && start.elapsed() < budget {
        match TcpStream::connect_timeout(&server, Duration::from_secs(1)) {
            Ok(s) => {
                held.push(s);
                in_a_row = 0;
            }
            Err(_) => {
                failures += 1;
                in_a_row += 1;
            }
        }
    }
    let line = json!({
        "held": held.len(),
        "failures": failures,
        "secs": start.elapsed().as_secs_f64(),
    });
    // The bench samples the helper's memory now, then closes our stdin to end the hold.
    println!("{line}");
    let _ = std::io::stdout().flush();
    let mut rest = String::new();
    let _ = std::io::stdin().lock().read_line(&mut rest);
    drop(held);
    serde_json::Value::Null
}

fn latency_json(mut samples: Vec<Duration>, errors: u64) -> serde_json::Value {
    samples.sort_unstable();
    let us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    json!({
        "count": us.len(),
        "errors": errors,
        "p50_us": super::latency::quantile(&us, 0.50),
        "p99_us": super::latency::quantile(&us, 0.99),
        "cdf_us": super::latency::cdf_points(&us, super::latency::CDF_POINTS),
    })
}

/// Ten thousand held connections need more than the usual 1,024 descriptors; the hard limit
/// (inherited from root) allows it without privilege.
pub fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
