//! The DNS forwarder behind the virtual DNS address (10.0.2.3 in the default plan).
//!
//! The guest's resolver sends UDP queries to the virtual address; the I/O shell hands each
//! payload to [`DnsRelay::handle_query`] with the guest's source address and sends what comes
//! back to a host nameserver from `/etc/resolv.conf` (see [`parse_resolv_conf`]). Datagrams from
//! the nameserver go through [`DnsRelay::handle_answer`], which returns the answer to deliver
//! and the guest address to deliver it to. tapir runs in the host's network namespace, so a
//! loopback nameserver such as systemd-resolved's 127.0.0.53 works as it is. The relay holds no
//! socket and reads no clock: time comes in as `now` and the next deadline leaves via
//! [`DnsRelay::poll_at`].
//!
//! Ids: each forwarded query gets a relay id unique among the pending ones, and the guest's id
//! is put back into the answer. Two guest processes (or containers) that picked the same id
//! therefore never receive each other's answers. Ids come from a counter that skips pending
//! ids, so the relay needs no RNG and behaves the same under a fuzzer. A counter is guessable,
//! so the id adds nothing against off-path spoofing; what does is that an answer must come from
//! the nameserver the query went to, carry a pending id, and repeat the query's question section
//! byte for byte (RFC 5452 section 3), plus the shell sending from a kernel-chosen ephemeral port.
//!
//! Truncation: an answer with the TC bit is relayed as it is. The guest's resolver then retries
//! over TCP to the same virtual address, and tapir carries that as an ordinary TCP flow to the
//! nameserver; this module never sees DNS over TCP.
//!
//! Timeouts: a query unanswered after `timeout` is sent once more, to the next nameserver in
//! the list (wrapping around, so a single nameserver gets a second try), and dropped after that
//! second timeout. The guest's resolver has its own retries on top.
//!
//! Invariants: at most `max_pending` queries are pending; each pending query has exactly one
//! entry in the deadline index; relay ids are unique among pending queries. Every datagram the
//! relay refuses is counted in [`DnsStats`]; none is an error, and no input can make it panic.
//!
//! Not done here: caching, parsing beyond the header and question, rewriting EDNS options,
//! DNS over TCP, re-reading `/etc/resolv.conf` (the shell does, `sys::resolv`, and calls
//! [`DnsRelay::set_upstreams`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use log::{debug, warn};

/// glibc's MAXNS: later `nameserver` lines are ignored.
const MAX_NAMESERVERS: usize = 3;
/// The fixed DNS header (RFC 1035 section 4.1.1).
const HEADER_LEN: usize = 12;
/// A name on the wire, length octets and root included (RFC 1035 section 2.3.4).
const MAX_NAME_LEN: usize = 255;
/// Queries are small (a name, a type, an EDNS record); a larger one is refused so that the
/// copies kept for retries stay bounded at `max_pending` times this.
const MAX_QUERY_LEN: usize = 4096;

/// The nameservers a glibc resolver would use, in order, from the text of `/etc/resolv.conf`.
///
/// Follows glibc (and musl): the `nameserver` keyword starts the line and is followed by a
/// blank, the value ends at the first blank, `;` or `#`, unparsable values are skipped, and
/// only the first three usable entries count. IPv6 link-local addresses are skipped, with or
/// without a `%scope` suffix, because an `IpAddr` cannot carry the zone they need to be
/// reached; other addresses drop a scope suffix, which means nothing for them.
///
/// An empty result means "no nameserver"; glibc would then try 127.0.0.1, and that choice is
/// left to the caller.
pub fn parse_resolv_conf(text: &str) -> Vec<IpAddr> {
    let mut servers = Vec::new();
    for line in text.lines() {
        if servers.len() == MAX_NAMESERVERS {
            break;
        }
        let Some(rest) = line.strip_prefix("nameserver") else {
            continue;
        };
        if !rest.starts_with([' ', '\t']) {
            continue; // e.g. "nameservers 203.0.113.1"
        }
        let value = rest.trim_start_matches([' ', '\t']);
        let end = value
            .find([' ', '\t', '\r', ';', '#'])
            .unwrap_or(value.len());
        if let Some(ip) = parse_nameserver(&value[..end]) {
            servers.push(ip);
        }
    }
    servers
}

fn parse_nameserver(text: &str) -> Option<IpAddr> {
    let ip = match text.split_once('%') {
        None => text.parse().ok()?,
        Some((addr, _scope)) => IpAddr::V6(addr.parse().ok()?),
    };
    match ip {
        IpAddr::V6(v6) if is_link_local(v6) => None,
        _ => Some(ip),
    }
}

fn is_link_local(ip: Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

/// A datagram for the shell to send to a nameserver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamQuery {
    pub upstream: SocketAddr,
    pub bytes: Vec<u8>,
}

/// What the relay did, for the API and logs. Every refused datagram lands in one counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DnsStats {
    /// Guest queries forwarded to a nameserver.
    pub queries: u64,
    /// Answers relayed back to the guest.
    pub answers: u64,
    /// Datagrams that are not a usable query (from the guest) or response (from a nameserver).
    pub malformed: u64,
    /// Responses matching no pending query: late, unsolicited, from the wrong server, or with
    /// a different question.
    pub unmatched: u64,
    /// Attempts that got no answer in time; a query tried at two nameservers counts twice.
    pub timeouts: u64,
    /// Guest queries dropped because `max_pending` queries were outstanding.
    pub dropped_full: u64,
    /// Guest queries dropped because no nameserver is configured.
    pub no_upstream: u64,
}

/// A query sent upstream and not yet answered, keyed by its relay id.
#[derive(Debug)]
struct Pending {
    client: SocketAddr,
    client_id: u16,
    upstream: SocketAddr,
    /// Position of `upstream` in the list when it was sent, so a retry takes the next one.
    upstream_index: usize,
    /// The query as sent (relay id included), kept for the retry.
    query: Vec<u8>,
    /// `query[HEADER_LEN..question_end]` is the question section an answer must repeat.
    question_end: usize,
    deadline: Instant,
    retried: bool,
}

/// The sans-I/O DNS forwarder; see the module documentation.
#[derive(Debug)]
pub struct DnsRelay {
    upstreams: Vec<SocketAddr>,
    max_pending: usize,
    timeout: Duration,
    pending: BTreeMap<u16, Pending>,
    /// Deadlines in order, so the earliest is first and expiry stops at the first future one.
    deadlines: BTreeSet<(Instant, u16)>,
    next_id: u16,
    warned_full: bool,
    stats: DnsStats,
}

impl DnsRelay {
    pub fn new(upstreams: Vec<SocketAddr>, max_pending: usize, timeout: Duration) -> Self {
        DnsRelay {
            upstreams,
            max_pending,
            timeout,
            pending: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            next_id: 0,
            warned_full: false,
            stats: DnsStats::default(),
        }
    }

    /// Replaces the nameservers (after `/etc/resolv.conf` changed). Pending queries still
    /// accept their answer from the server they were sent to.
    pub fn set_upstreams(&mut self, upstreams: Vec<SocketAddr>) {
        self.upstreams = upstreams;
    }

    /// A UDP query from the guest's `client` address. Returns what to send upstream, or None
    /// when dropped (counted in `stats()`).
    pub fn handle_query(
        &mut self,
        now: Instant,
        client: SocketAddr,
        query: &[u8],
    ) -> Option<UpstreamQuery> {
        let Some(question_end) = query_question_end(query) else {
            self.stats.malformed += 1;
            return None;
        };
        let Some(&upstream) = self.upstreams.first() else {
            self.stats.no_upstream += 1;
            return None;
        };
        let Some(id) = self.free_id() else {
            self.stats.dropped_full += 1;
            if !self.warned_full {
                warn!(
                    "dns: {} queries pending, dropping new ones until answers arrive",
                    self.pending.len()
                );
                self.warned_full = true;
            }
            return None;
        };

        let mut bytes = query.to_vec();
        bytes[..2].copy_from_slice(&id.to_be_bytes());
        let deadline = deadline_after(now, self.timeout);
        self.pending.insert(
            id,
            Pending {
                client,
                client_id: read_u16(query, 0),
                upstream,
                upstream_index: 0,
                query: bytes.clone(),
                question_end,
                deadline,
                retried: false,
            },
        );
        self.deadlines.insert((deadline, id));
        self.stats.queries += 1;
        Some(UpstreamQuery { upstream, bytes })
    }

    /// A UDP datagram from upstream `from`. Returns (client, answer bytes with the guest's
    /// original id) or None (unsolicited/malformed: counted).
    ///
    /// `from` is compared exactly with the address the query went to, so the shell must not
    /// hand in an IPv4-mapped IPv6 form (as a dual-stack socket reports) of an IPv4 server.
    pub fn handle_answer(
        &mut self,
        _now: Instant,
        from: SocketAddr,
        answer: &[u8],
    ) -> Option<(SocketAddr, Vec<u8>)> {
        if answer.len() < HEADER_LEN || !is_response(answer) {
            self.stats.malformed += 1;
            return None;
        }
        let id = read_u16(answer, 0);
        let matches = self.pending.get(&id).is_some_and(|p| {
            // `question_end` was checked against `query` when the query was accepted.
            let question = &p.query[HEADER_LEN..p.question_end];
            p.upstream == from
                && read_u16(answer, 4) == 1
                && answer.get(HEADER_LEN..p.question_end) == Some(question)
        });
        if !matches {
            self.stats.unmatched += 1;
            debug!("dns: unmatched answer id {id} from {from}");
            return None;
        }
        let pending = self.pending.remove(&id)?;
        self.deadlines.remove(&(pending.deadline, id));

        let mut bytes = answer.to_vec();
        bytes[..2].copy_from_slice(&pending.client_id.to_be_bytes());
        self.stats.answers += 1;
        Some((pending.client, bytes))
    }

    /// The earliest deadline of a pending query, when `handle_timeout` has work to do.
    #[must_use]
    pub fn poll_at(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(deadline, _)| deadline)
    }

    /// Expires queries past `timeout`; a query that timed out at one upstream is retried once
    /// at the next upstream (returned), else dropped.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<UpstreamQuery> {
        let mut retries = Vec::new();
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            self.stats.timeouts += 1;
            let Some(mut pending) = self.pending.remove(&id) else {
                continue;
            };
            if pending.retried || self.upstreams.is_empty() {
                debug!(
                    "dns: query id {} from {} got no answer",
                    pending.client_id, pending.client
                );
                continue;
            }
            // A retried query is pushed back by a full timeout, so even a zero timeout cannot
            // bring it round this loop a second time without it being dropped.
            pending.upstream_index = (pending.upstream_index + 1) % self.upstreams.len();
            pending.upstream = self.upstreams[pending.upstream_index];
            pending.deadline = deadline_after(now, self.timeout);
            pending.retried = true;
            retries.push(UpstreamQuery {
                upstream: pending.upstream,
                bytes: pending.query.clone(),
            });
            self.deadlines.insert((pending.deadline, id));
            self.pending.insert(id, pending);
        }
        retries
    }

    pub fn stats(&self) -> DnsStats {
        self.stats
    }

    /// The next relay id not in use, or None when the table is full.
    fn free_id(&mut self) -> Option<u16> {
        if self.pending.len() >= self.max_pending {
            return None;
        }
        // At most 65536 tries: fewer than that many ids are pending whenever any is free.
        for _ in 0..=u16::MAX {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            if !self.pending.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }
}

/// `now + timeout`, or `now` if that would overflow `Instant` (an absurd configured timeout
/// then expires at once rather than panicking).
fn deadline_after(now: Instant, timeout: Duration) -> Instant {
    now.checked_add(timeout).unwrap_or(now)
}

/// Where the question section of a forwardable query ends, or None if the query is not one:
/// shorter than the header, too long, a response, or not exactly one well-formed question.
fn query_question_end(msg: &[u8]) -> Option<usize> {
    if msg.len() < HEADER_LEN || msg.len() > MAX_QUERY_LEN || is_response(msg) {
        return None;
    }
    if read_u16(msg, 4) != 1 {
        return None;
    }
    let mut pos = HEADER_LEN;
    loop {
        let len = usize::from(*msg.get(pos)?);
        pos += 1;
        if len == 0 {
            break;
        }
        // 0xc0 is a compression pointer, 0x40 and 0x80 are reserved; the first name in a
        // message has nothing earlier to point to, so any of them means a broken query.
        if len > 63 {
            return None;
        }
        pos += len;
        if pos - HEADER_LEN > MAX_NAME_LEN {
            return None;
        }
    }
    let end = pos + 4; // QTYPE and QCLASS
    (end <= msg.len()).then_some(end)
}

/// The QR bit (RFC 1035 section 4.1.1). Callers have checked the header is present.
fn is_response(msg: &[u8]) -> bool {
    msg[2] & 0x80 != 0
}

/// A big-endian u16 at `at`; callers have checked the header is present.
fn read_u16(msg: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([msg[at], msg[at + 1]])
}

#[cfg(test)]
mod test {
    use super::*;

    /// `dig example.com A` as sent by a glibc stub: id 0x1234, RD, one question.
    const QUERY_EXAMPLE_COM: [u8; 29] = [
        0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // header
        0x07, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 0x03, b'c', b'o', b'm', 0x00, // name
        0x00, 0x01, 0x00, 0x01, // A, IN
    ];

    /// The answer to it with relay id 0x0000: QR RD RA, one A record 93.184.215.14, the name
    /// compressed as a pointer to offset 12.
    const ANSWER_EXAMPLE_COM: [u8; 45] = [
        0x00, 0x00, 0x81, 0x80, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, // header
        0x07, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 0x03, b'c', b'o', b'm', 0x00, // name
        0x00, 0x01, 0x00, 0x01, // A, IN
        0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x0e, 0x10, 0x00, 0x04, // RR header
        93, 184, 215, 14, // RDATA
    ];

    const TIMEOUT: Duration = Duration::from_secs(2);

    fn ns1() -> SocketAddr {
        "192.0.2.53:53".parse().unwrap()
    }
    fn ns2() -> SocketAddr {
        "[2001:db8::53]:53".parse().unwrap()
    }
    fn guest(port: u16) -> SocketAddr {
        SocketAddr::new("10.0.2.100".parse().unwrap(), port)
    }

    /// The answer for relay id `id`.
    fn answer_for(id: u16) -> Vec<u8> {
        let mut a = ANSWER_EXAMPLE_COM.to_vec();
        a[..2].copy_from_slice(&id.to_be_bytes());
        a
    }

    fn relay_id(q: &UpstreamQuery) -> u16 {
        u16::from_be_bytes([q.bytes[0], q.bytes[1]])
    }

    #[test]
    fn resolv_conf_like_glibc() {
        let text = "# generated by NetworkManager\n\
                    search example.org\n\
                    nameserver 192.0.2.1 # office\n\
                    ; nameserver 192.0.2.99\n\
                    \tnameserver 192.0.2.98\n\
                    nameservers 192.0.2.97\n\
                    nameserver\n\
                    nameserver not-an-ip\n\
                    nameserver 2001:db8::1%eth0\r\n\
                    nameserver fe80::1%eth0\n\
                    nameserver fe80::2\n\
                    nameserver 127.0.0.53;local\n\
                    nameserver 192.0.2.4\n";
        let expect: Vec<IpAddr> = ["192.0.2.1", "2001:db8::1", "127.0.0.53"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(parse_resolv_conf(text), expect);
        assert_eq!(parse_resolv_conf(""), Vec::<IpAddr>::new());
        assert_eq!(
            parse_resolv_conf("nameserver\t::1\n"),
            vec!["::1".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn forwards_with_a_relay_id_and_restores_the_guest_id() {
        let now = Instant::now();
        let mut relay = DnsRelay::new(vec![ns1()], 16, TIMEOUT);
        let up = relay
            .handle_query(now, guest(40000), &QUERY_EXAMPLE_COM)
            .unwrap();
        assert_eq!(up.upstream, ns1());
        assert_eq!(relay_id(&up), 0);
        assert_eq!(up.bytes[2..], QUERY_EXAMPLE_COM[2..], "only the id changes");
        assert_eq!(relay.poll_at(), Some(now + TIMEOUT));

        let (client, answer) = relay.handle_answer(now, ns1(), &answer_for(0)).unwrap();
        assert_eq!(client, guest(40000));
        assert_eq!(answer[..2], [0x12, 0x34]);
        assert_eq!(answer[2..], ANSWER_EXAMPLE_COM[2..]);
        assert_eq!(relay.poll_at(), None);
        let s = relay.stats();
        assert_eq!((s.queries, s.answers, s.unmatched), (1, 1, 0));

        // A duplicate of the answer finds nothing pending.
        assert_eq!(relay.handle_answer(now, ns1(), &answer_for(0)), None);
        assert_eq!(relay.stats().unmatched, 1);
    }

    #[test]
    fn two_clients_with_the_same_id_get_their_own_answers() {
        let now = Instant::now();
        let mut relay = DnsRelay::new(vec![ns1()], 16, TIMEOUT);
        let a = relay
            .handle_query(now, guest(1111), &QUERY_EXAMPLE_COM)
            .unwrap();
        let b = relay
            .handle_query(now, guest(2222), &QUERY_EXAMPLE_COM)
            .unwrap();
        assert_ne!(relay_id(&a), relay_id(&b));

        // Answers come back in the other order.
        let (client, answer) = relay
            .handle_answer(now, ns1(), &answer_for(relay_id(&b)))
            .unwrap();
        assert_eq!((client, &answer[..2]), (guest(2222), &[0x12, 0x34][..]));
        let (client, _) = relay
            .handle_answer(now, ns1(), &answer_for(relay_id(&a)))
            .unwrap();
        assert_eq!(client, guest(1111));
    }

    #[test]
    fn ids_skip_pending_ones_when_the_counter_wraps() {
        let now = Instant::now();
        let mut relay = DnsRelay::new(vec![ns1()], 4, TIMEOUT);
        relay.next_id = u16::MAX;
        let a = relay
            .handle_query(now, guest(1), &QUERY_EXAMPLE_COM)
            .unwrap();
        let b = relay
            .handle_query(now, guest(2), &QUERY_EXAMPLE_COM)
            .unwrap();
        assert_eq!((relay_id(&a), relay_id(&b)), (u16::MAX, 0));
        relay.next_id = u16::MAX; // wraps onto both pending ids
        let c = relay
            .handle_query(now, guest(3), &QUERY_EXAMPLE_COM)
            .unwrap();
        assert_eq!(relay_id(&c), 1);
    }

    #[test]
    fn answers_must_come_from_the_server_with_the_same_question() {
        let now = Instant::now();
        let mut relay = DnsRelay::new(vec![ns1()], 16, TIMEOUT);
        relay
            .handle_query(now, guest(40000), &QUERY_EXAMPLE_COM)
            .unwrap();

        // Right id, wrong source.
        assert_eq!(relay.handle_answer(now, ns2(), &answer_for(0)), None);
        // Right id and source, other question (example.net).
        let mut other = answer_for(0);
        other[21..24].copy_from_slice(b"net");
        assert_eq!(relay.handle_answer(now, ns1(), &other), None);
        // A different case counts as a different question (0x20 bit spoofing defence).
        let mut upper = answer_for(0);
        upper[13] = b'E';
        assert_eq!(relay.handle_answer(now, ns1(), &upper), None);
        // No question at all.
        let mut bare = answer_for(0);
        bare[5] = 0;
        assert_eq!(relay.handle_answer(now, ns1(), &bare), None);
        // Cut inside the question.
        assert_eq!(relay.handle_answer(now, ns1(), &answer_for(0)[..20]), None);
        assert_eq!(relay.stats().unmatched, 5);

        // The real one still gets through.
        assert!(relay.handle_answer(now, ns1(), &answer_for(0)).is_some());
    }

    #[test]
    fn truncated_answers_are_relayed_as_they_are() {
        let now = Instant::now();
        let mut relay = DnsRelay::new(vec![ns1()], 16, TIMEOUT);
        relay
            .handle_query(now, guest(40000), &QUERY_EXAMPLE_COM)
            .unwrap();
        // QR RD TC RA, no records: the guest retries over TCP.
        let mut tc = ANSWER_EXAMPLE_COM[..29].to_vec();
        tc[2] = 0x83;
        tc[7] = 0;
        let (_, answer) = relay.handle_answer(now, ns1(), &tc).unwrap();
        assert_eq!(answer[2], 0x83);
        assert_eq!(answer[2..], tc[2..]);
    }

    #[test]
    fn refuses_what_is_not_one_query() {
        let now = Instant::now();
        let mut relay = DnsRelay::new(vec![ns1()], 16, TIMEOUT);
        let q = QUERY_EXAMPLE_COM;
        let mut response = q;
        response[2] |= 0x80;
        let mut two_questions = q;
        two_questions[5] = 2;
        let mut no_question = q;
        no_question[5] = 0;
        let mut pointer = q;
        pointer[12] = 0xc0;
        let mut long_label = q;
        long_label[12] = 64;
        let mut oversized = q.to_vec();
        oversized.resize(MAX_QUERY_LEN + 1, 0);
        let bad: [&[u8]; 9] = [
            &[],
            &q[..11],
            &q[..12],
            &q[..28], // QCLASS cut short
            &response,
            &two_questions,
            &no_question,
            &pointer,
            &long_label,
        ];
        for query in bad.iter().copied().chain([&oversized[..]]) {
            assert_eq!(
                relay.handle_query(now, guest(1), query),
                None,
                "{query:02x?}"
            );
        }
        assert_eq!(relay.stats().malformed, 10);
        assert_eq!(relay.stats().queries, 0);

        // The root name (". NS") is the shortest valid query.
        let root = [0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1];
        assert!(relay.handle_query(now, guest(1), &root).is_some());
    }

    #[test]
    fn names_longer_than_255_octets_are_refused() {
        let now = Instant::now();
        let mut relay = DnsRelay::new(vec![ns1()], 16, TIMEOUT);
        let query_with_labels = |n: usize| {
            let mut q = QUERY_EXAMPLE_COM[..12].to_vec();
            for _ in 0..n {
                q.push(63);
                q.extend([b'a'; 63]);
            }
            q.extend([0, 0, 1, 0, 1]);
            q
        };
        // 3 * 64 + 1 = 193 octets is fine; 4 * 64 + 1 = 257 is not.
        assert!(
            relay
                .handle_query(now, guest(1), &query_with_labels(3))
                .is_some()
        );
        assert_eq!(
            relay.handle_query(now, guest(1), &query_with_labels(4)),
            None
        );
    }

    #[test]
    fn refuses_malformed_answers() {
        let now = Instant::now();
        let mut relay = DnsRelay::new(vec![ns1()], 16, TIMEOUT);
        relay
            .handle_query(now, guest(1), &QUERY_EXAMPLE_COM)
            .unwrap();
        assert_eq!(relay.handle_answer(now, ns1(), &[0, 0, 0x81]), None);
        // QR clear: a query, not an answer.
        assert_eq!(relay.handle_answer(now, ns1(), &QUERY_EXAMPLE_COM), None);
        assert_eq!(relay.stats().malformed, 2);
        assert_eq!(relay.stats().unmatched, 0);
    }

    #[test]
    fn a_full_table_drops_new_queries() {
        let now = Instant::now();
        let mut relay = DnsRelay::new(vec![ns1()], 2, TIMEOUT);
        assert!(
            relay
                .handle_query(now, guest(1), &QUERY_EXAMPLE_COM)
                .is_some()
        );
        assert!(
            relay
                .handle_query(now, guest(2), &QUERY_EXAMPLE_COM)
                .is_some()
        );
        assert_eq!(relay.handle_query(now, guest(3), &QUERY_EXAMPLE_COM), None);
        assert_eq!(relay.stats().dropped_full, 1);
        // An answer frees a slot.
        relay.handle_answer(now, ns1(), &answer_for(0)).unwrap();
        assert!(
            relay
                .handle_query(now, guest(3), &QUERY_EXAMPLE_COM)
                .is_some()
        );

        let mut closed = DnsRelay::new(vec![ns1()], 0, TIMEOUT);
        assert_eq!(closed.handle_query(now, guest(1), &QUERY_EXAMPLE_COM), None);
        assert_eq!(closed.stats().dropped_full, 1);
    }

    #[test]
    fn without_nameservers_queries_are_dropped() {
        let mut relay = DnsRelay::new(vec![], 16, TIMEOUT);
        assert_eq!(
            relay.handle_query(Instant::now(), guest(1), &QUERY_EXAMPLE_COM),
            None
        );
        assert_eq!(relay.stats().no_upstream, 1);
    }

    #[test]
    fn a_timed_out_query_is_retried_once_at_the_next_nameserver() {
        let t0 = Instant::now();
        let mut relay = DnsRelay::new(vec![ns1(), ns2()], 16, TIMEOUT);
        let first = relay
            .handle_query(t0, guest(1), &QUERY_EXAMPLE_COM)
            .unwrap();
        assert_eq!(
            relay.handle_timeout(t0 + TIMEOUT - Duration::from_millis(1)),
            vec![]
        );

        let t1 = t0 + TIMEOUT;
        let retry = relay.handle_timeout(t1);
        assert_eq!(
            retry,
            vec![UpstreamQuery {
                upstream: ns2(),
                bytes: first.bytes.clone()
            }]
        );
        assert_eq!(relay.poll_at(), Some(t1 + TIMEOUT));
        // The first server's late answer no longer counts.
        assert_eq!(relay.handle_answer(t1, ns1(), &answer_for(0)), None);

        let t2 = t1 + TIMEOUT;
        assert_eq!(relay.handle_timeout(t2), vec![]);
        assert_eq!(relay.poll_at(), None);
        assert_eq!(relay.stats().timeouts, 2);
        assert_eq!(relay.handle_answer(t2, ns2(), &answer_for(0)), None);
    }

    #[test]
    fn a_single_nameserver_gets_a_second_try() {
        let t0 = Instant::now();
        let mut relay = DnsRelay::new(vec![ns1()], 16, TIMEOUT);
        relay
            .handle_query(t0, guest(1), &QUERY_EXAMPLE_COM)
            .unwrap();
        let retry = relay.handle_timeout(t0 + TIMEOUT);
        assert_eq!(retry.len(), 1);
        assert_eq!(retry[0].upstream, ns1());
        let (client, _) = relay
            .handle_answer(t0 + TIMEOUT, ns1(), &answer_for(0))
            .unwrap();
        assert_eq!(client, guest(1));
    }

    #[test]
    fn odd_timeouts_do_not_loop_or_panic() {
        let t0 = Instant::now();
        let mut zero = DnsRelay::new(vec![ns1()], 16, Duration::ZERO);
        zero.handle_query(t0, guest(1), &QUERY_EXAMPLE_COM).unwrap();
        assert_eq!(
            zero.handle_timeout(t0).len(),
            1,
            "retried once, then dropped"
        );
        assert_eq!(zero.poll_at(), None);

        let mut huge = DnsRelay::new(vec![ns1()], 16, Duration::MAX);
        huge.handle_query(t0, guest(1), &QUERY_EXAMPLE_COM).unwrap();
        assert_eq!(huge.poll_at(), Some(t0));
    }

    #[test]
    fn changed_nameservers_apply_to_new_queries() {
        let now = Instant::now();
        let mut relay = DnsRelay::new(vec![ns1()], 16, TIMEOUT);
        relay
            .handle_query(now, guest(1), &QUERY_EXAMPLE_COM)
            .unwrap();
        relay.set_upstreams(vec![ns2()]);
        let second = relay
            .handle_query(now, guest(2), &QUERY_EXAMPLE_COM)
            .unwrap();
        assert_eq!(second.upstream, ns2());
        // The first query still takes its answer from where it went.
        assert_eq!(
            relay.handle_answer(now, ns1(), &answer_for(0)).unwrap().0,
            guest(1)
        );
        // With no nameserver left, a timed-out query is dropped rather than retried.
        relay.set_upstreams(vec![]);
        assert_eq!(relay.handle_timeout(now + TIMEOUT), vec![]);
    }

    #[test]
    fn never_panics_on_prefixes_of_real_messages() {
        let now = Instant::now();
        let mut relay = DnsRelay::new(vec![ns1()], 1024, TIMEOUT);
        for len in 0..=ANSWER_EXAMPLE_COM.len() {
            let _ = relay.handle_query(
                now,
                guest(1),
                &QUERY_EXAMPLE_COM[..len.min(QUERY_EXAMPLE_COM.len())],
            );
            let _ = relay.handle_answer(now, ns1(), &ANSWER_EXAMPLE_COM[..len]);
            let _ = relay.handle_query(now, guest(1), &ANSWER_EXAMPLE_COM[..len]);
        }
        let _ = relay.handle_timeout(now + TIMEOUT * 3);
    }

    /// A poor man's fuzzer until `fuzz/fuzz_targets/dns.rs` exists: flip bytes and cut lengths
    /// of the two real messages, deterministically (xorshift), through every entry point.
    #[test]
    fn never_panics_on_mutated_messages() {
        let t0 = Instant::now();
        let mut relay = DnsRelay::new(vec![ns1(), ns2()], 64, TIMEOUT);
        let mut state = 0x9e37_79b9_u32;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        for round in 0..20_000_u32 {
            let seed: &[u8] = if round % 2 == 0 {
                &QUERY_EXAMPLE_COM
            } else {
                &ANSWER_EXAMPLE_COM
            };
            let mut msg = seed.to_vec();
            for _ in 0..next() % 4 {
                let at = next() as usize % msg.len();
                msg[at] = next().to_le_bytes()[0];
            }
            msg.truncate(next() as usize % (msg.len() + 1));
            let now = t0 + Duration::from_millis(u64::from(round));
            let _ = relay.handle_query(now, guest(1), &msg);
            let _ = relay.handle_answer(now, if round % 3 == 0 { ns2() } else { ns1() }, &msg);
            let _ = relay.handle_timeout(now);
        }
        let s = relay.stats();
        assert!(s.queries > 0 && s.malformed > 0 && s.timeouts > 0, "{s:?}");
    }
}
