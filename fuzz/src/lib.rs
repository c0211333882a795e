//! What the fuzz targets share: the private network namespace the host-socket targets run
//! in, and the framing that turns one fuzzer input into a sequence of timed messages.
//!
//! Hygiene: a target that opens host sockets (frame ingest, the API against the real
//! network) calls [`enter_private_netns`] first. It moves the fuzzing thread into a network
//! namespace of its own, with only `lo`, so a guest flow towards any address either reaches a
//! socket this process made on loopback or fails at once; nothing leaves the machine. When
//! that is impossible the process exits rather than fuzz in the machine's own namespace.

use std::os::unix::fs::MetadataExt;
use std::sync::Once;
use std::time::Duration;

/// Moves the calling thread (libFuzzer's main thread, which runs every input) into a new
/// network namespace with `lo` up and ping sockets allowed, once per process.
///
/// It always makes a new namespace, even when the run is wrapped in `unshare -n` already:
/// whether the current one is the machine's cannot be told reliably (pid 1 may itself be in
/// a container, and its namespace unreadable). Exits the process when it cannot.
pub fn enter_private_netns() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let before = netns_id();
        if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
            eprintln!(
                "this fuzz target opens host sockets and must run in a network namespace of \
                 its own, but unshare(CLONE_NEWNET) failed ({e}): run it as root or under \
                 `unshare -r`"
            );
            std::process::exit(2);
        }
        let after = netns_id();
        if before.is_none() || after.is_none() || before == after {
            eprintln!(
                "cannot tell that unshare(CLONE_NEWNET) left the network namespace; refusing to run"
            );
            std::process::exit(2);
        }
        set_up_private_netns();
    });
}

/// The calling thread's network namespace (device and inode of its nsfs file).
fn netns_id() -> Option<(u64, u64)> {
    let m = std::fs::metadata("/proc/thread-self/ns/net").ok()?;
    Some((m.dev(), m.ino()))
}

/// `lo` up (so the loopback actors and host-loopback flows work) and ICMP echo sockets
/// allowed for every group, both in the private namespace only.
fn set_up_private_netns() {
    let up = tapir::netlink::Netlink::open()
        .and_then(|mut nl| nl.link_index("lo").and_then(|lo| nl.link_set_up(lo)));
    if let Err(e) = up {
        eprintln!("warning: cannot bring lo up in the private namespace: {e}");
    }
    // /proc/sys/net belongs to the namespace of the thread that opens it: the private one.
    let _ = std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647");
}

/// One input as a sequence of timed messages: each is a two-byte big-endian length, a
/// delay byte (see [`delay`]) and that many bytes (fewer at the end of the input).
pub fn records(mut data: &[u8]) -> impl Iterator<Item = (Duration, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 3 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([data[0], data[1]]));
        let wait = delay(data[2]);
        let end = (3 + len).min(data.len());
        let body = &data[3..end];
        data = &data[end..];
        Some((wait, body))
    })
}

/// A delay byte's virtual time: 0–127 are steps of 10 ms (up to 1.27 s: retransmissions,
/// delayed ACKs), 128–255 whole seconds from 1 to 128 (DNS and idle timeouts, RA periods).
pub fn delay(byte: u8) -> Duration {
    if byte < 128 {
        Duration::from_millis(u64::from(byte) * 10)
    } else {
        Duration::from_secs(u64::from(byte - 127))
    }
}

/// Encodes messages in the [`records`] format (for seed corpora and regression inputs).
pub fn encode<'a>(messages: impl IntoIterator<Item = (u8, &'a [u8])>) -> Vec<u8> {
    let mut out = Vec::new();
    for (delay, body) in messages {
        let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.push(delay);
        out.extend_from_slice(&body[..usize::from(len)]);
    }
    out
}
