//! Guest ICMP echo ("ping") through unprivileged ICMP datagram sockets.
//!
//! A ping socket (`socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)`) lets an unprivileged user send
//! echo requests when `net.ipv4.ping_group_range` covers the user's group. The kernel owns
//! the echo identifier (it is the socket's "port"), so each flow remembers the guest's own
//! identifier and restores it in the replies. One flow per (guest identifier, destination);
//! it expires after `Limits::icmp_idle`. When the host refuses ping sockets the request is
//! dropped and counted, as slirp4netns does.
//!
//! How many echo requests reach the host is bounded by [`EchoRate`], a token bucket over all
//! flows together (`--limit icmp-rate`): a guest cannot make tapir ping a host (or flood the
//! host's ping sockets) faster than that, whatever it sends. Requests tapir answers itself
//! (to the gateway) cost no host socket and are bounded by the queue towards the guest.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

/// An echo flow: the guest's identifier, its source address and the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EchoKey {
    pub ident: u16,
    pub src: IpAddr,
    pub dst: IpAddr,
}

#[derive(Debug)]
pub struct EchoFlow {
    pub key: EchoKey,
    pub socket: mio::net::UdpSocket,
    pub last_active: Instant,
    /// The guest's latest request on this flow, carried or not (see [`EchoRate::admit`]).
    pub last_request: Instant,
}

/// A flow whose previous request came at least this long ago (a `ping` at up to 10 per
/// second) is quiet: it may use the tokens [`EchoRate`] keeps back from busy flows.
pub const QUIET: Duration = Duration::from_millis(100);

/// Nanoseconds in a second: one token is worth this many units of [`EchoRate::level`].
const NANOS: u64 = 1_000_000_000;

/// The echo-request rate limit: a token bucket refilled at `per_sec` tokens a second, which
/// holds a twentieth of a second's worth (at least 2; 50 at the default 1000/s, as the
/// kernel's own `icmp_msgs_burst`). Time is passed in.
///
/// A flood from one flow would otherwise take every token the moment it appears, and an
/// ordinary `ping` beside it would lose nearly every request. So the last fifth of the bucket
/// (at least one token) is kept for quiet flows (see [`QUIET`]): a busy flow is refused once
/// the bucket is down to that reserve, a quiet one still gets a token. The total stays within
/// `per_sec` a second plus the bucket, whichever flows send.
#[derive(Debug, Clone)]
pub struct EchoRate {
    per_sec: u64,
    /// Tokens the bucket holds when full.
    capacity: u64,
    /// Tokens only quiet flows may take.
    reserve: u64,
    /// The tokens in the bucket, in units of 1/NANOS token (a nanosecond adds `per_sec`).
    level: u64,
    last: Option<Instant>,
}

impl EchoRate {
    /// A full bucket for `per_sec` requests a second (`per_sec` ≥ 1, as `Limits` ensures).
    pub fn new(per_sec: u32) -> EchoRate {
        let per_sec = u64::from(per_sec.max(1));
        let capacity = (per_sec / 20).max(2);
        EchoRate {
            per_sec,
            capacity,
            reserve: (capacity / 5).max(1),
            level: capacity * NANOS,
            last: None,
        }
    }

    /// Whether a request may go out at `now`, taking a token if so. `previous` is the time of
    /// the flow's previous request (`None` for a new flow, which counts as quiet).
    #[must_use]
    pub fn admit(&mut self, now: Instant, previous: Option<Instant>) -> bool {
        self.refill(now);
        let quiet = previous.is_none_or(|p| now.saturating_duration_since(p) >= QUIET);
        let keep = if quiet { 0 } else { self.reserve };
        if self.level < (keep + 1) * NANOS {
            return false;
        }
        self.level -= NANOS;
        true
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = match self.last {
            Some(last) if now <= last => return,
            Some(last) => now - last,
            None => Duration::ZERO,
        };
        self.last = Some(now);
        let added = u64::try_from(elapsed.as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_mul(self.per_sec);
        self.level = self.level.saturating_add(added).min(self.capacity * NANOS);
    }
}

/// A non-blocking ping socket (ICMP or ICMPv6) connected to `dst`.
pub fn connect(dst: IpAddr) -> io::Result<mio::net::UdpSocket> {
    let socket = match dst {
        IpAddr::V4(_) => Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4))?,
        IpAddr::V6(_) => Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::ICMPV6))?,
    };
    socket.set_nonblocking(true)?;
    socket.connect(&SocketAddr::new(dst, 0).into())?;
    Ok(mio::net::UdpSocket::from_std(socket.into()))
}

/// The echo request a ping socket expects: type 8 (ICMPv6: 128), code 0; the kernel fills
/// the identifier and the checksum.
pub fn echo_request(v6: bool, seq_no: u16, data: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&[if v6 { 128 } else { 8 }, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&seq_no.to_be_bytes());
    out.extend_from_slice(data);
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn request_layout() {
        let mut out = Vec::new();
        echo_request(false, 0x0102, b"abc", &mut out);
        assert_eq!(out, [8, 0, 0, 0, 0, 0, 1, 2, b'a', b'b', b'c']);
        echo_request(true, 7, b"", &mut out);
        assert_eq!(out, [128, 0, 0, 0, 0, 0, 0, 7]);
    }

    /// Requests a flow sends every `gap` for `secs` from `start`, and how many got through.
    fn busy(rate: &mut EchoRate, start: Instant, gap: Duration, secs: u64) -> usize {
        let mut previous = None;
        let mut admitted = 0;
        let mut t = start;
        while t < start + Duration::from_secs(secs) {
            admitted += usize::from(rate.admit(t, previous));
            previous = Some(t);
            t += gap;
        }
        admitted
    }

    #[test]
    fn a_flood_gets_the_rate_and_the_bucket_less_its_reserve() {
        let start = Instant::now();
        let mut rate = EchoRate::new(1000);
        // 100 000 a second for 3 s: the bucket (50, 10 of them reserved), then one token a
        // millisecond (the last one due at 3 s is not reached).
        let admitted = busy(&mut rate, start, Duration::from_micros(10), 3);
        assert_eq!(admitted, 40 + 2999);
    }

    #[test]
    fn the_bucket_refills_at_the_rate_and_no_further() {
        let start = Instant::now();
        let mut rate = EchoRate::new(100);
        // Capacity 5 (100/20), reserve 1: a busy flow empties it down to the reserve.
        let admitted = (0..10)
            .filter(|i| rate.admit(start, (*i > 0).then_some(start)))
            .count();
        assert_eq!(admitted, 4);
        // A long pause fills the bucket, not more: 5 tokens, 4 for a busy flow.
        let later = start + Duration::from_secs(3600);
        let admitted = (0..10).filter(|_| rate.admit(later, Some(later))).count();
        assert_eq!(admitted, 4);
        // 10 ms at 100/s is one token.
        assert!(rate.admit(later + Duration::from_millis(10), Some(later)));
        assert!(!rate.admit(later + Duration::from_millis(10), Some(later)));
    }

    #[test]
    fn a_quiet_ping_beside_a_flood_keeps_getting_through() {
        let start = Instant::now();
        let mut rate = EchoRate::new(1000);
        let mut flood_previous = None;
        let (mut quiet_sent, mut quiet_admitted, mut flood_admitted) = (0, 0, 0);
        let mut t = start;
        let mut next_quiet = start;
        while t < start + Duration::from_secs(3) {
            flood_admitted += usize::from(rate.admit(t, flood_previous));
            flood_previous = Some(t);
            if t >= next_quiet {
                // An ordinary ping every 200 ms, its previous request 200 ms before.
                let previous = (t > start).then(|| t - Duration::from_millis(200));
                quiet_sent += 1;
                quiet_admitted += usize::from(rate.admit(t, previous));
                next_quiet += Duration::from_millis(200);
            }
            t += Duration::from_micros(10);
        }
        assert_eq!(quiet_sent, 15);
        assert_eq!(quiet_admitted, quiet_sent, "the quiet flow lost requests");
        assert!(flood_admitted + quiet_admitted <= 3000 + 50);
        assert!(flood_admitted >= 2900, "{flood_admitted}");
    }

    #[test]
    fn many_quiet_flows_share_the_same_rate() {
        let start = Instant::now();
        let mut rate = EchoRate::new(10);
        // A request a millisecond for 3 s, each from a new flow (quiet by definition): the
        // bucket of 2, then one token every 100 ms (at 100, 200, ..., 2900 ms).
        let admitted = (0..3000)
            .filter(|i| rate.admit(start + Duration::from_millis(*i), None))
            .count();
        assert_eq!(admitted, 2 + 29);
    }

    #[test]
    fn time_going_backwards_adds_nothing() {
        let start = Instant::now() + Duration::from_secs(10);
        let mut rate = EchoRate::new(1);
        assert!(rate.admit(start, None));
        assert!(rate.admit(start, None));
        assert!(!rate.admit(start - Duration::from_secs(5), None));
        assert!(!rate.admit(start, None));
        assert!(rate.admit(start + Duration::from_secs(1), None));
    }
}
