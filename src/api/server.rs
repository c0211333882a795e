//! The API socket's I/O: a unix listener in the event loop, one request per connection.
//!
//! slirp4netns's framing: the client connects, writes one JSON request and shuts down its
//! write side (or just stops: a request is complete at EOF or at [`MAX_REQUEST`] bytes); the
//! server answers with one JSON object and closes. Unlike slirp4netns, which does one blocking
//! read while the whole network waits, tapir reads without blocking from the same loop as
//! everything else, so a slow or stuck client never stalls the data path: it holds one of
//! [`MAX_CLIENTS`] slots for at most [`CLIENT_TIMEOUT`].
//!
//! The socket file is created owner-only (0600) and removed when the server is dropped.

use std::io::{self, ErrorKind, Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use slab::Slab;

use crate::api::proto::{self, ApiError, HostFwd, PolicyEntry, Request};
use crate::forward::spec::PortForward;

/// Requests longer than this are refused (slirp4netns reads at most 4096 bytes).
pub const MAX_REQUEST: usize = proto::REQUEST_BUFFER_LEN;
/// Connections served at once; more wait in the listen backlog.
pub const MAX_CLIENTS: usize = 16;
/// A client that has not finished its request by then is dropped.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the API acts on: the running network's forwards, counters and egress policy.
pub trait ForwardTable {
    /// The guest's address: the only one a forward can reach, as tapir carries nothing from
    /// any other.
    fn guest(&self) -> Ipv4Addr;
    fn add_forward(&mut self, fwd: PortForward, guest: Option<Ipv4Addr>) -> io::Result<u64>;
    fn remove_forward(&mut self, id: u64) -> bool;
    fn forwards(&self) -> Vec<(u64, PortForward, Ipv4Addr)>;
    fn counters(&self) -> Vec<(&'static str, u64)>;
    /// The rules with their hit counts, and the default's.
    fn policy(&self) -> (Vec<PolicyEntry>, u64);
    /// Replaces the policy at once; on error (a sentence naming the bad rule) the old one
    /// stays.
    fn set_policy(&mut self, rules: &[String], deny_private: bool) -> Result<(), String>;
}

/// Answers one request (sans-I/O: bytes in, bytes out).
pub fn respond(table: &mut impl ForwardTable, request: &[u8]) -> Vec<u8> {
    let request = match proto::parse_request(request) {
        Ok(r) => r,
        Err(e) => return proto::error_response(&e),
    };
    match request {
        Request::AddHostfwd(h) => {
            // slirp4netns forwards to any address on the guest's side; tapir drops every
            // frame not from the guest's own address, so a forward elsewhere would never be
            // answered: refused here, naming both. 0.0.0.0 means the guest, as "" does.
            let guest = match h.guest_addr {
                None => None,
                Some(std::net::IpAddr::V4(v4)) if v4.is_unspecified() => None,
                Some(std::net::IpAddr::V4(v4)) if v4 == table.guest() => Some(v4),
                Some(std::net::IpAddr::V4(asked)) => {
                    let guest = table.guest();
                    return proto::error_response(&ApiError::NotTheGuest { asked, guest });
                }
                Some(std::net::IpAddr::V6(_)) => {
                    return proto::error_response(&ApiError::BadGuestAddr);
                }
            };
            let fwd = PortForward {
                proto: h.proto,
                host: std::net::SocketAddr::new(h.host_addr, h.host_port),
                guest_port: h.guest_port,
            };
            match table.add_forward(fwd, guest) {
                Ok(id) => proto::add_response(id),
                Err(e) => {
                    log::warn!("add_hostfwd {fwd}: {e}");
                    proto::error_response(&ApiError::AddFailed)
                }
            }
        }
        Request::RemoveHostfwd { id } => {
            // slirp4netns 1.2 answers an unknown (or already removed) id this way.
            if table.remove_forward(id) {
                proto::remove_response()
            } else {
                proto::error_response(&ApiError::BadId)
            }
        }
        Request::ListHostfwd => {
            let entries: Vec<(u64, HostFwd)> = table
                .forwards()
                .into_iter()
                .map(|(id, fwd, guest)| {
                    let h = HostFwd {
                        proto: fwd.proto,
                        host_addr: fwd.host.ip(),
                        host_port: fwd.host.port(),
                        guest_addr: Some(guest.into()),
                        guest_port: fwd.guest_port,
                    };
                    (id, h)
                })
                .collect();
            proto::list_response(&entries)
        }
        Request::Stats => {
            let counters = table.counters();
            proto::stats_response(&counters)
        }
        Request::ListPolicy => {
            let (rules, default_hits) = table.policy();
            proto::policy_response(&rules, default_hits)
        }
        Request::SetPolicy {
            rules,
            deny_private,
        } => match table.set_policy(&rules, deny_private) {
            Ok(()) => proto::remove_response(),
            Err(sentence) => proto::error_response(&ApiError::BadRule(sentence)),
        },
    }
}

struct Client {
    stream: UnixStream,
    request: Vec<u8>,
    since: Instant,
}

pub struct ApiServer {
    listener: UnixListener,
    /// The socket's directory, opened at bind time, and its name there: the file is removed
    /// through them at exit, which works even from inside the sandbox.
    dir: Option<std::os::fd::OwnedFd>,
    name: PathBuf,
    clients: Slab<Client>,
    /// Every slot was taken the last time the listener was drained, so clients may wait in
    /// its backlog; the listener is edge-triggered and will not say so again.
    backlog: bool,
}

impl ApiServer {
    /// Listens on `path` (an old socket file there is replaced, as slirp4netns does).
    pub fn bind(path: &Path) -> io::Result<ApiServer> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        // Owner-only from the start: bind under a tight umask rather than chmod afterwards.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let listener = UnixListener::bind(path);
        nix::sys::stat::umask(old);
        let listener = listener?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dir = nix::fcntl::open(
            parent,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok();
        Ok(ApiServer {
            listener,
            dir,
            name: path.file_name().map(PathBuf::from).unwrap_or_default(),
            clients: Slab::new(),
            backlog: false,
        })
    }

    pub fn register(
        &mut self,
        registry: &Registry,
        listener: Token,
        _client: impl Fn(usize) -> Token,
    ) -> io::Result<()> {
        registry.register(&mut self.listener, listener, Interest::READABLE)
    }

    /// The next client deadline.
    pub fn poll_at(&self) -> Option<Instant> {
        self.clients
            .iter()
            .map(|(_, c)| c.since + CLIENT_TIMEOUT)
            .min()
    }

    /// Readiness of the listener (`None`) or of client `Some(i)`.
    pub fn ready(
        &mut self,
        registry: &Registry,
        which: Option<usize>,
        now: Instant,
        table: &mut impl ForwardTable,
        client_token: impl Fn(usize) -> Token,
    ) {
        // (A client that wrote before it was registered is reported ready on registration.)
        match which {
            None => self.accept(registry, now, &client_token),
            Some(i) => self.read(registry, i, table),
        }
        self.accept_backlog(registry, now, &client_token);
    }

    /// Takes clients from the backlog into slots that have come free.
    fn accept_backlog(
        &mut self,
        registry: &Registry,
        now: Instant,
        client_token: &impl Fn(usize) -> Token,
    ) {
        if self.backlog && self.clients.len() < MAX_CLIENTS {
            self.accept(registry, now, client_token);
        }
    }

    fn accept(
        &mut self,
        registry: &Registry,
        now: Instant,
        client_token: &impl Fn(usize) -> Token,
    ) {
        loop {
            if self.clients.len() >= MAX_CLIENTS {
                self.backlog = true;
                return;
            }
            let mut stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.backlog = false;
                    return;
                }
                Err(e) => {
                    log::warn!("api: accept: {e}");
                    return;
                }
            };
            let entry = self.clients.vacant_entry();
            if registry
                .register(&mut stream, client_token(entry.key()), Interest::READABLE)
                .is_err()
            {
                continue;
            }
            entry.insert(Client {
                stream,
                request: Vec::new(),
                since: now,
            });
        }
    }

    fn read(&mut self, registry: &Registry, i: usize, table: &mut impl ForwardTable) {
        let Some(client) = self.clients.get_mut(i) else {
            return;
        };
        let mut buf = [0u8; 1024];
        let complete = loop {
            match client.stream.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => {
                    client.request.extend_from_slice(&buf[..n]);
                    if client.request.len() >= MAX_REQUEST {
                        break true;
                    }
                }
                // Clients shut down their write side; one that does not is answered once
                // what it sent is a whole JSON value, as slirp4netns's single read would.
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    break proto::request_is_complete(&client.request);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close(registry, i);
                    return;
                }
            }
        };
        if !complete {
            return;
        }
        let answer = respond(table, &client.request);
        log::debug!(
            "api: {} -> {}",
            String::from_utf8_lossy(&client.request).trim_end(),
            String::from_utf8_lossy(&answer)
        );
        // The answer is small and the socket buffer empty: one write is enough; a client
        // that does not read it only loses its own answer.
        let _ = client.stream.write(&answer);
        let _ = client.stream.shutdown(std::net::Shutdown::Both);
        self.close(registry, i);
    }

    /// Drops clients that took too long, and lets in those waiting for their slots.
    pub fn expire(
        &mut self,
        registry: &Registry,
        now: Instant,
        client_token: impl Fn(usize) -> Token,
    ) {
        let late: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| now.saturating_duration_since(c.since) >= CLIENT_TIMEOUT)
            .map(|(i, _)| i)
            .collect();
        for i in late {
            self.close(registry, i);
        }
        self.accept_backlog(registry, now, &client_token);
    }

    fn close(&mut self, registry: &Registry, i: usize) {
        if let Some(mut client) = self.clients.try_remove(i) {
            let _ = registry.deregister(&mut client.stream);
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = nix::unistd::unlinkat(dir, &self.name, nix::unistd::UnlinkatFlags::NoRemoveDir);
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    /// A table that refuses host port 1 (as a bind below 1024 fails for a user).
    #[derive(Default)]
    struct Table {
        next: u64,
        entries: Vec<(u64, PortForward, Ipv4Addr)>,
    }

    impl ForwardTable for Table {
        fn guest(&self) -> Ipv4Addr {
            Ipv4Addr::new(10, 0, 2, 100)
        }
        fn add_forward(&mut self, fwd: PortForward, guest: Option<Ipv4Addr>) -> io::Result<u64> {
            if fwd.host.port() == 1 {
                return Err(ErrorKind::PermissionDenied.into());
            }
            self.next += 1;
            let guest = guest.unwrap_or(Ipv4Addr::new(10, 0, 2, 100));
            self.entries.push((self.next, fwd, guest));
            Ok(self.next)
        }
        fn remove_forward(&mut self, id: u64) -> bool {
            let before = self.entries.len();
            self.entries.retain(|e| e.0 != id);
            self.entries.len() != before
        }
        fn forwards(&self) -> Vec<(u64, PortForward, Ipv4Addr)> {
            self.entries.clone()
        }
        fn counters(&self) -> Vec<(&'static str, u64)> {
            vec![("tcp_open", 3)]
        }
        fn policy(&self) -> (Vec<PolicyEntry>, u64) {
            (Vec::new(), 0)
        }
        fn set_policy(&mut self, rules: &[String], _deny_private: bool) -> Result<(), String> {
            match rules.iter().find(|r| r.contains('!')) {
                Some(bad) => Err(format!("{bad}: bad")),
                None => Ok(()),
            }
        }
    }

    fn ask(table: &mut Table, request: &str) -> String {
        String::from_utf8(respond(table, request.as_bytes())).unwrap()
    }

    #[test]
    fn podman_adds_lists_and_removes() {
        let mut t = Table::default();
        let add = r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"","guest_port":80}}
"#;
        assert_eq!(ask(&mut t, add), r#"{"return":{"id":1}}"#);
        let list = ask(&mut t, r#"{"execute":"list_hostfwd"}"#);
        assert!(
            list.contains(r#""host_port":8080,"guest_addr":"10.0.2.100","guest_port":80"#),
            "{list}"
        );
        assert_eq!(
            ask(
                &mut t,
                r#"{"execute":"remove_hostfwd","arguments":{"id":1}}"#
            ),
            r#"{"return":{}}"#
        );
        assert_eq!(
            ask(
                &mut t,
                r#"{"execute":"remove_hostfwd","arguments":{"id":1}}"#
            ),
            r#"{"error":{"desc":"bad request: remove_hostfwd: bad arguments.id"}}"#
        );
    }

    #[test]
    fn a_failed_bind_is_slirp4netns_add_failure() {
        let mut t = Table::default();
        let add = r#"{"execute":"add_hostfwd","arguments":{"proto":"udp","host_port":1,"guest_port":53}}"#;
        assert_eq!(
            ask(&mut t, add),
            r#"{"error":{"desc":"bad request: add_hostfwd: slirp_add_hostfwd failed"}}"#
        );
    }

    #[test]
    fn rootlesskit_guest_address_is_kept() {
        let mut t = Table::default();
        let add = r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":18080,"guest_addr":"10.0.2.100","guest_port":80}}"#;
        assert_eq!(ask(&mut t, add), r#"{"return":{"id":1}}"#);
        assert_eq!(t.entries[0].2, Ipv4Addr::new(10, 0, 2, 100));
        let v6 = r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":18081,"guest_addr":"fd00::100","guest_port":80}}"#;
        assert!(ask(&mut t, v6).contains("bad arguments.guest_addr"));
    }

    #[test]
    fn a_forward_to_another_guest_address_is_refused_naming_both() {
        let mut t = Table::default();
        let other = r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":18080,"guest_addr":"10.0.2.15","guest_port":80}}"#;
        assert_eq!(
            ask(&mut t, other),
            r#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.guest_addr: 10.0.2.15 is not the guest's address, 10.0.2.100"}}"#
        );
        assert!(t.entries.is_empty());
        let any = r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":18080,"guest_addr":"0.0.0.0","guest_port":80}}"#;
        assert_eq!(ask(&mut t, any), r#"{"return":{"id":1}}"#);
        assert_eq!(t.entries[0].2, Ipv4Addr::new(10, 0, 2, 100));
    }

    #[test]
    fn a_refused_policy_names_the_rule() {
        let mut t = Table::default();
        let ok = r#"{"execute":"set_policy","arguments":{"rules":["deny all"]}}"#;
        assert_eq!(ask(&mut t, ok), r#"{"return":{}}"#);
        let bad = r#"{"execute":"set_policy","arguments":{"rules":["deny !"]}}"#;
        assert_eq!(
            ask(&mut t, bad),
            r#"{"error":{"desc":"bad request: set_policy: deny !: bad"}}"#
        );
    }

    /// More clients than slots, none finishing its request: once the first ones are dropped
    /// for taking too long, the one waiting in the backlog gets a slot, though the
    /// edge-triggered listener never announces it again.
    #[test]
    fn a_client_waiting_for_a_slot_gets_one_when_slow_ones_are_dropped() {
        let dir = std::env::temp_dir().join(format!("tapir-api-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("api.sock");
        let mut api = ApiServer::bind(&path).unwrap();
        let poll = mio::Poll::new().unwrap();
        let token = |i: usize| Token(100 + i);
        api.register(poll.registry(), Token(1), token).unwrap();
        let mut held = Vec::new();
        for _ in 0..=MAX_CLIENTS {
            let mut c = std::os::unix::net::UnixStream::connect(&path).unwrap();
            c.write_all(br#"{"execute":"li"#).unwrap();
            held.push(c);
        }
        let mut table = Table::default();
        let t0 = Instant::now();
        api.ready(poll.registry(), None, t0, &mut table, token);
        assert_eq!(api.clients.len(), MAX_CLIENTS);
        api.expire(poll.registry(), t0 + CLIENT_TIMEOUT, token);
        assert_eq!(api.clients.len(), 1, "the client in the backlog was let in");
        drop(api);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn stats_are_served() {
        let mut t = Table::default();
        assert_eq!(
            ask(&mut t, r#"{"execute":"stats"}"#),
            r#"{"return":{"tcp_open":3}}"#
        );
    }
}
