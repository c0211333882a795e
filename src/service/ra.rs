//! When tapir sends the guest a router advertisement (RFC 4861 section 6.2), sans-I/O.
//!
//! The advertisement itself is built by `stack::frame::router_advertisement`; this is only
//! its timetable, so the event loop can sleep until [`RaSchedule::poll_at`]. Unsolicited
//! advertisements start at once, repeat [`INITIAL_ADVERTISEMENTS`] times
//! [`INITIAL_INTERVAL`] apart (the guest may bring its interface up a moment after tapir
//! starts, and an advertisement it misses is not resent until it asks), then come every
//! [`INTERVAL`], well inside the router lifetime they announce. A router solicitation brings
//! the next one forward to now, but never closer than [`MIN_DELAY_BETWEEN_RAS`] to the last
//! one, so a guest cannot make tapir flood the link. There is no randomisation (the RFC's
//! guard against routers synchronising): tapir is the only router on the link.

use std::time::{Duration, Instant};

/// How many unsolicited advertisements open the schedule (MAX_INITIAL_RTR_ADVERTISEMENTS).
pub const INITIAL_ADVERTISEMENTS: u32 = 3;
/// Their spacing (MAX_INITIAL_RTR_ADVERT_INTERVAL).
pub const INITIAL_INTERVAL: Duration = Duration::from_secs(16);
/// The spacing afterwards: inside libslirp's 200..600 s, a sixth of the router lifetime.
pub const INTERVAL: Duration = Duration::from_secs(300);
/// The least time between two advertisements (MIN_DELAY_BETWEEN_RAS).
pub const MIN_DELAY_BETWEEN_RAS: Duration = Duration::from_secs(3);

/// When the next router advertisement is due.
#[derive(Debug, Clone)]
pub struct RaSchedule {
    next: Instant,
    last_sent: Option<Instant>,
    sent: u32,
}

impl RaSchedule {
    /// A schedule whose first advertisement is due at `now`.
    pub fn new(now: Instant) -> RaSchedule {
        RaSchedule {
            next: now,
            last_sent: None,
            sent: 0,
        }
    }

    /// The guest sent a router solicitation at `now`.
    pub fn handle_solicitation(&mut self, now: Instant) {
        let earliest = match self.last_sent {
            Some(last) => now.max(last + MIN_DELAY_BETWEEN_RAS),
            None => now,
        };
        self.next = self.next.min(earliest);
    }

    /// When the next advertisement is due.
    #[must_use]
    pub fn poll_at(&self) -> Instant {
        self.next
    }

    /// Whether an advertisement is due at `now`. If so the caller sends one, and the schedule
    /// moves on to the next.
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.sent = self.sent.saturating_add(1);
        self.last_sent = Some(now);
        let interval = if self.sent < INITIAL_ADVERTISEMENTS {
            INITIAL_INTERVAL
        } else {
            INTERVAL
        };
        self.next = now + interval;
        true
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn unsolicited_advertisements_start_fast_then_slow_down() {
        let t0 = Instant::now();
        let mut ra = RaSchedule::new(t0);
        assert_eq!(ra.poll_at(), t0);
        assert!(ra.poll_transmit(t0));
        assert!(!ra.poll_transmit(t0));
        assert_eq!(ra.poll_at(), t0 + secs(16));
        assert!(!ra.poll_transmit(t0 + secs(15)));
        assert!(ra.poll_transmit(t0 + secs(16)));
        assert!(ra.poll_transmit(t0 + secs(32)));
        assert_eq!(ra.poll_at(), t0 + secs(332));
        assert!(ra.poll_transmit(t0 + secs(332)));
        assert_eq!(ra.poll_at(), t0 + secs(632));
    }

    #[test]
    fn solicitation_brings_the_next_forward_but_not_too_close() {
        let t0 = Instant::now();
        let mut ra = RaSchedule::new(t0);
        for t in [0, 16, 32] {
            assert!(ra.poll_transmit(t0 + secs(t)));
        }
        // Long after the last one: answered at once.
        ra.handle_solicitation(t0 + secs(100));
        assert_eq!(ra.poll_at(), t0 + secs(100));
        assert!(ra.poll_transmit(t0 + secs(100)));
        assert_eq!(ra.poll_at(), t0 + secs(400));
        // A second solicitation right after: held back to 3 s after the last advertisement.
        ra.handle_solicitation(t0 + secs(101));
        assert_eq!(ra.poll_at(), t0 + secs(103));
        assert!(!ra.poll_transmit(t0 + secs(102)));
        assert!(ra.poll_transmit(t0 + secs(103)));
        // A solicitation never postpones one already due sooner.
        let mut ra = RaSchedule::new(t0);
        ra.handle_solicitation(t0 + secs(5));
        assert_eq!(ra.poll_at(), t0);
    }
}
