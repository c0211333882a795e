//! Noticing that the host's `/etc/resolv.conf` changed, as libslirp does, so that the DNS
//! forwarder follows a VPN or NetworkManager that rewrites it while tapir runs.
//!
//! At most once a second (when a DNS query asks), the file's identity (device, inode, size,
//! modification time) is compared with the one last read; a difference reads it again. A file
//! that cannot be looked at (gone for a moment during a rewrite, or out of the sandbox's reach)
//! is no news: the nameservers tapir has stay. Parsing is [`parse_resolv_conf`]'s.
//!
//! Under the sandbox, [`dirs_to_keep`] names the directories the file lives in (following its
//! symlinks, as `/etc/resolv.conf` → `/run/systemd/resolve/stub-resolv.conf`), which the
//! sandbox keeps readable, as slirp4netns keeps /etc and /run.

use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::service::dns::parse_resolv_conf;

/// The host's resolver configuration.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// How often the file is looked at, at most.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What tells one version of the file from another without reading it.
type Stamp = (u64, u64, u64, i64, i64);

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

#[derive(Debug)]
pub struct ResolvWatch {
    path: PathBuf,
    seen: Option<Stamp>,
    checked: Option<Instant>,
}

impl ResolvWatch {
    /// Watches `path`, taking the version there now as the one already read.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let seen = stamp(&path);
        ResolvWatch {
            path,
            seen,
            checked: None,
        }
    }

    /// The nameservers the file now names, if it changed since it was last read and a second
    /// has passed since the last look.
    pub fn poll(&mut self, now: Instant) -> Option<Vec<IpAddr>> {
        if self
            .checked
            .is_some_and(|t| now.saturating_duration_since(t) < CHECK_EVERY)
        {
            return None;
        }
        self.checked = Some(now);
        let stamp = stamp(&self.path)?;
        if self.seen == Some(stamp) {
            return None;
        }
        let nameservers = read_nameservers(&self.path)?;
        self.seen = Some(stamp);
        Some(nameservers)
    }
}

/// The nameservers `path` names; `None` when it cannot be read.
pub fn read_nameservers(path: &Path) -> Option<Vec<IpAddr>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(parse_resolv_conf(&text))
}

/// The directories `path` and the targets of its symlinks live in (at most 8 links deep),
/// outermost first, without repeats.
pub fn dirs_to_keep(path: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut at = path.to_path_buf();
    for _ in 0..8 {
        let Some(dir) = at.parent().map(Path::to_path_buf) else {
            break;
        };
        if !dirs.contains(&dir) {
            dirs.push(dir.clone());
        }
        match std::fs::read_link(&at) {
            Ok(target) => at = lexical(&dir.join(target)),
            Err(_) => break,
        }
    }
    dirs
}

/// `path` with its `.` and `..` components worked out on the text alone.
fn lexical(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod test {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tapir-resolv-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_rewrite_is_seen_after_a_second_and_a_vanished_file_is_no_news() {
        let dir = scratch("watch");
        let file = dir.join("resolv.conf");
        std::fs::write(&file, "nameserver 192.0.2.1\n").unwrap();
        let mut watch = ResolvWatch::new(&file);
        let t0 = Instant::now();
        assert_eq!(watch.poll(t0), None, "unchanged");
        // Replaced as NetworkManager does it: a new file renamed over the old one.
        std::fs::write(
            dir.join("new"),
            "nameserver 192.0.2.2\nnameserver 192.0.2.3\n",
        )
        .unwrap();
        std::fs::rename(dir.join("new"), &file).unwrap();
        assert_eq!(
            watch.poll(t0 + Duration::from_millis(500)),
            None,
            "too soon"
        );
        let t1 = t0 + Duration::from_secs(1);
        let now = watch.poll(t1).expect("the new file");
        assert_eq!(
            now,
            [
                "192.0.2.2".parse::<IpAddr>().unwrap(),
                "192.0.2.3".parse().unwrap()
            ]
        );
        assert_eq!(watch.poll(t1 + Duration::from_secs(1)), None, "read once");
        std::fs::remove_file(&file).unwrap();
        assert_eq!(
            watch.poll(t1 + Duration::from_secs(2)),
            None,
            "gone: no news"
        );
        std::fs::write(&file, "nameserver 192.0.2.4\n").unwrap();
        let back = watch.poll(t1 + Duration::from_secs(3));
        assert_eq!(back, Some(vec!["192.0.2.4".parse().unwrap()]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_directories_of_a_symlinked_file_are_all_kept() {
        let dir = scratch("dirs");
        std::fs::create_dir_all(dir.join("run/resolve")).unwrap();
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(dir.join("run/resolve/stub.conf"), "nameserver 127.0.0.53\n").unwrap();
        std::os::unix::fs::symlink("../run/resolve/stub.conf", dir.join("etc/resolv.conf"))
            .unwrap();
        let kept = dirs_to_keep(&dir.join("etc/resolv.conf"));
        assert_eq!(kept, [dir.join("etc"), dir.join("run/resolve")]);
        assert_eq!(dirs_to_keep(Path::new("/")), Vec::<PathBuf>::new());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
