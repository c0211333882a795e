//! Adaptive busy polling: how long the event loop spins on a non-blocking poll before it
//! blocks in `epoll_wait`.
//!
//! A request/response exchange through tapir wakes it twice per round trip. On a VM a wakeup
//! of an idle vCPU costs more than the work it wakes tapir for (the vCPU halts, and the
//! interrupt that resumes it goes through the hypervisor), so for latency-bound traffic a short
//! spin beats a sleep. This is QEMU's adaptive iothread polling (`poll-max-ns`), with its
//! rules:
//! - the window starts at zero: an idle tapir never spins;
//! - a wait that ended within the window leaves it as it is;
//! - a wait that ended later than the window but within the maximum grows it (4 µs, then
//!   doubling, up to the maximum);
//! - a wait longer than the maximum resets it to zero: polling would not have paid;
//! - a wait that ended on a timer, with no event, says nothing about the traffic.
//!
//! One rule is tapir's: after a turn that carried bulk data the window is zero. A stream keeps
//! the loop busy without help, and on a small machine a spinning tapir takes the CPU that the
//! stream's two ends need (measured: spliced streams lost about 8% with it).
//!
//! Sans-I/O: the loop passes in how long it waited and what the turn carried.

use std::time::Duration;

/// The default maximum window. QEMU's is 32 µs, but the wait a spin has to cover holds the
/// host peer's whole turn, its own wakeup included. On a 2-vCPU VM with slow wakeups (a plain
/// veth round trip: 56 µs) a 32 µs window hardly ever opened, and tapir's round trips stayed at
/// slirp4netns's, about 97 µs; with 128 µs they took 44–63 µs.
pub const DEFAULT_MAX: Duration = Duration::from_micros(128);
/// The first window after a wait that polling would have caught.
const FIRST_WINDOW: Duration = Duration::from_micros(4);
/// A turn that carried at least this many bytes (frames to and from the guest, host-socket
/// bytes of TCP flows, spliced bytes) was bulk work, not an exchange of small messages.
pub const BULK_TURN_BYTES: u64 = 16 * 1024;

#[derive(Debug, Clone)]
pub struct BusyPoll {
    max: Duration,
    window: Duration,
}

impl BusyPoll {
    /// A poller that spins for at most `max` before each wait (zero: never).
    pub fn new(max: Duration) -> BusyPoll {
        BusyPoll {
            max,
            window: Duration::ZERO,
        }
    }

    /// Whether it ever spins (the loop then times its waits).
    pub fn is_enabled(&self) -> bool {
        !self.max.is_zero()
    }

    /// How long to spin before the next wait, given what the turn before it carried.
    #[must_use]
    pub fn poll_window(&mut self, turn_bytes: u64) -> Duration {
        if turn_bytes >= BULK_TURN_BYTES {
            self.window = Duration::ZERO;
        }
        self.window
    }

    /// The wait that just ended took `waited` (spinning and blocking together); `event`: it
    /// ended because an fd was ready, not because a timer was due.
    pub fn handle_wait(&mut self, waited: Duration, event: bool) {
        if !event || waited <= self.window {
            return;
        }
        self.window = if waited > self.max {
            Duration::ZERO
        } else if self.window.is_zero() {
            FIRST_WINDOW.min(self.max)
        } else {
            (self.window * 2).min(self.max)
        };
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// A poller whose window short waits have grown to the default maximum.
    fn grown() -> BusyPoll {
        let mut poll = BusyPoll::new(DEFAULT_MAX);
        for _ in 0..7 {
            let _ = poll.poll_window(0);
            poll.handle_wait(us(100), true);
        }
        assert_eq!(poll.poll_window(0), DEFAULT_MAX);
        poll
    }

    #[test]
    fn an_idle_loop_never_spins() {
        let mut poll = BusyPoll::new(DEFAULT_MAX);
        for _ in 0..10 {
            assert_eq!(poll.poll_window(100), Duration::ZERO);
            poll.handle_wait(Duration::from_millis(5), true);
        }
        assert_eq!(poll.poll_window(100), Duration::ZERO);
    }

    #[test]
    fn short_waits_grow_the_window_to_the_maximum_and_keep_it() {
        let mut poll = BusyPoll::new(DEFAULT_MAX);
        let mut windows = Vec::new();
        for _ in 0..8 {
            windows.push(poll.poll_window(128));
            poll.handle_wait(us(100), true);
        }
        let expected = [0, 4, 8, 16, 32, 64, 128, 128].map(us);
        assert_eq!(windows, expected);
    }

    #[test]
    fn one_long_wait_resets_the_window() {
        let mut poll = grown();
        poll.handle_wait(DEFAULT_MAX + us(1), true);
        assert_eq!(poll.poll_window(0), Duration::ZERO);
    }

    #[test]
    fn a_timer_says_nothing_about_the_traffic() {
        let mut poll = BusyPoll::new(DEFAULT_MAX);
        poll.handle_wait(us(10), true);
        poll.handle_wait(Duration::from_millis(200), false);
        poll.handle_wait(us(3), false);
        assert_eq!(poll.poll_window(0), us(4));
    }

    #[test]
    fn bulk_turns_do_not_spin() {
        let mut poll = grown();
        assert_eq!(poll.poll_window(BULK_TURN_BYTES - 1), DEFAULT_MAX);
        assert_eq!(poll.poll_window(BULK_TURN_BYTES), Duration::ZERO);
        poll.handle_wait(us(20), true);
        assert_eq!(poll.poll_window(64 * 1024), Duration::ZERO);
    }

    #[test]
    fn a_zero_maximum_turns_it_off() {
        let mut poll = BusyPoll::new(Duration::ZERO);
        for _ in 0..5 {
            assert_eq!(poll.poll_window(0), Duration::ZERO);
            poll.handle_wait(us(1), true);
        }
        let mut small = BusyPoll::new(us(3));
        small.handle_wait(us(2), true);
        assert_eq!(small.poll_window(0), us(3));
    }
}
