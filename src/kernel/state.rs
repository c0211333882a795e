//! The lease file: which owner holds which address on which bridge, with its published ports.
//!
//! `STATE_DIR/leases.json` is read and rewritten whole while `STATE_DIR/lock` is held with an
//! exclusive flock ([`StateLock`]), and written through a temporary file and a rename, so a
//! crash never leaves it half-written. The JSON is small and hand-mapped (serde_json `Value`):
//! a malformed file is refused with its path, never guessed at.
//!
//! Besides the leases the file remembers the `ip_forward` value found before tapir set it, so
//! the last detach can restore it.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::ffi::OsStringExt as _;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde_json::{Value, json};

use super::ipam::Ipv4Subnet;
use crate::forward::spec::{PortForward, Proto};

/// One attachment's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub owner: String,
    pub ifname: String,
    pub bridge: String,
    pub subnet: Ipv4Subnet,
    pub gateway: Ipv4Addr,
    pub address: Ipv4Addr,
    pub host_veth: String,
    pub ip_masq: bool,
    /// The process the lease lives and dies with (`tapir run`), if any.
    pub pid: Option<u32>,
    pub publish: Vec<PortForward>,
}

/// Everything in the lease file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub leases: Vec<Lease>,
    /// `net.ipv4.ip_forward` before the first bridge was made ("0" or "1").
    pub ip_forward_before: Option<String>,
    /// Bridges tapir created (and so deletes when no lease names them); a bridge that was
    /// there before is used but never deleted.
    pub bridges_created: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create the state directory {path}: {cause}")]
    Dir {
        path: PathBuf,
        cause: crate::sys::OsError,
    },
    #[error("cannot lock {path}: {cause}")]
    Lock {
        path: PathBuf,
        cause: crate::sys::OsError,
    },
    #[error("cannot read {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: crate::sys::OsError,
    },
    #[error("cannot write {path}: {cause}")]
    Write {
        path: PathBuf,
        cause: crate::sys::OsError,
    },
    #[error(
        "the lease file {path} is malformed ({detail}); move it away and run `tapir network prune`"
    )]
    Malformed { path: PathBuf, detail: String },
}

/// The exclusive lock on a state directory, held until dropped.
pub struct StateLock {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl StateLock {
    /// Creates the directory if needed and waits for the exclusive lock.
    pub fn acquire(dir: &Path) -> Result<StateLock, StateError> {
        fs::create_dir_all(dir).map_err(|e| StateError::Dir {
            path: dir.to_path_buf(),
            cause: e.into(),
        })?;
        Ok(StateLock {
            dir: dir.to_path_buf(),
            _lock: lock_file(&dir.join("lock"))?,
        })
    }

    /// Like [`StateLock::acquire`], then the lock on who manages the current network namespace
    /// ([`Manager`]), always in this order.
    pub fn acquire_managed(dir: &Path) -> Result<(StateLock, Manager), StateError> {
        let lock = StateLock::acquire(dir)?;
        Ok((lock, Manager::lock()?))
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self) -> PathBuf {
        self.dir.join("leases.json")
    }

    /// The state on disk; empty if there is no lease file yet.
    pub fn load(&self) -> Result<State, StateError> {
        read_state(&self.file())
    }

    /// Replaces the state on disk (atomically: temporary file, fsync, rename).
    pub fn save(&self, state: &State) -> Result<(), StateError> {
        let path = self.file();
        let tmp = self.dir.join("leases.json.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(render(state).as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| StateError::Write {
            path: path.clone(),
            cause: e.into(),
        })
    }
}

/// Which state directory manages the shared objects of the current network namespace: the
/// `inet tapir` table and `ip_forward`, which every lease file would otherwise rebuild or
/// restore from its own leases alone. The file `/run/tapir/netns-INODE.owner` names it and is
/// flock'd while read or written. It is only taken after a [`StateLock`]
/// ([`StateLock::acquire_managed`]), so the two locks cannot deadlock. A directory whose lease
/// file holds no lease (or is gone) manages nothing, and the next one to attach takes over.
/// A file naming nobody (new, from before there were manager files, or emptied by a crash
/// while it was rewritten) stands for the namespace's default directory,
/// `/run/tapir/netns-INODE`.
pub struct Manager {
    path: PathBuf,
    default_dir: PathBuf,
    _lock: Flock<File>,
}

impl Manager {
    /// Waits for the lock on the current network namespace's manager file.
    fn lock() -> Result<Manager, StateError> {
        fs::create_dir_all(RUN_DIR).map_err(|e| StateError::Dir {
            path: RUN_DIR.into(),
            cause: e.into(),
        })?;
        let default_dir = netns_dir();
        Manager::lock_at(&default_dir.with_extension("owner"), default_dir)
    }

    fn lock_at(path: &Path, default_dir: PathBuf) -> Result<Manager, StateError> {
        Ok(Manager {
            path: path.to_path_buf(),
            default_dir,
            _lock: lock_file(path)?,
        })
    }

    /// The directory in charge.
    fn named(&self) -> Result<PathBuf, StateError> {
        let mut name = fs::read(&self.path).map_err(|e| StateError::Read {
            path: self.path.clone(),
            cause: e.into(),
        })?;
        if name.last() == Some(&b'\n') {
            name.pop();
        }
        if name.is_empty() {
            return Ok(self.default_dir.clone());
        }
        Ok(PathBuf::from(std::ffi::OsString::from_vec(name)))
    }

    /// Another state directory that holds leases here, with how many, if there is one. Its
    /// lease file unreadable or malformed is an error, not "no lease": refusing is safer than
    /// rebuilding the table without its rules.
    pub fn rival(&self, state_dir: &Path) -> Result<Option<(PathBuf, usize)>, StateError> {
        let named = self.named()?;
        if same_dir(&named, state_dir) {
            return Ok(None);
        }
        let leases = read_state(&named.join("leases.json"))?.leases.len();
        Ok((leases > 0).then_some((named, leases)))
    }

    /// Names `state_dir` as the manager. (Rewritten in place, not renamed over: the flock is
    /// on this file.)
    pub fn record(&self, state_dir: &Path) -> Result<(), StateError> {
        let dir = fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
        let mut text = dir.into_os_string().into_vec();
        text.push(b'\n');
        fs::write(&self.path, text).map_err(|e| StateError::Write {
            path: self.path.clone(),
            cause: e.into(),
        })
    }
}

/// The lease file at `path`; empty if there is none.
fn read_state(path: &Path) -> Result<State, StateError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
        Err(e) => {
            return Err(StateError::Read {
                path: path.to_path_buf(),
                cause: e.into(),
            });
        }
    };
    parse(&text).map_err(|detail| StateError::Malformed {
        path: path.to_path_buf(),
        detail,
    })
}

/// Opens (creating) `path` and waits for an exclusive flock on it.
fn lock_file(path: &Path) -> Result<Flock<File>, StateError> {
    let lock_err = |cause: crate::sys::OsError| StateError::Lock {
        path: path.to_path_buf(),
        cause,
    };
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| lock_err(e.into()))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| lock_err(e.into()))
}

/// Where the manager files and the default state directories live.
const RUN_DIR: &str = "/run/tapir";

/// The current network namespace's default state directory, `/run/tapir/netns-INODE`, named by
/// the namespace's inode.
pub fn netns_dir() -> PathBuf {
    let inode = fs::metadata("/proc/self/ns/net")
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap_or(0);
    Path::new(RUN_DIR).join(format!("netns-{inode}"))
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The lease file's text.
pub fn render(state: &State) -> String {
    let leases: Vec<Value> = state.leases.iter().map(lease_json).collect();
    let doc = json!({
        "version": 1,
        "ip_forward_before": state.ip_forward_before,
        "bridges_created": state.bridges_created,
        "leases": leases,
    });
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    text
}

fn lease_json(l: &Lease) -> Value {
    let publish: Vec<String> = l.publish.iter().map(ToString::to_string).collect();
    json!({
        "owner": l.owner,
        "ifname": l.ifname,
        "bridge": l.bridge,
        "subnet": l.subnet.to_string(),
        "gateway": l.gateway.to_string(),
        "address": l.address.to_string(),
        "host_veth": l.host_veth,
        "ip_masq": l.ip_masq,
        "pid": l.pid,
        "publish": publish,
    })
}

/// Parses the lease file's text; the error says what is wrong.
pub fn parse(text: &str) -> Result<State, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if doc.get("version").and_then(Value::as_u64) != Some(1) {
        return Err("no \"version\": 1".into());
    }
    let ip_forward_before = match doc.get("ip_forward_before") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("\"ip_forward_before\" is not a string".into()),
    };
    let bridges_created = match doc.get("bridges_created") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|b| b.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or("\"bridges_created\" holds a non-string")?,
        Some(_) => return Err("\"bridges_created\" is not an array".into()),
    };
    let leases = doc
        .get("leases")
        .and_then(Value::as_array)
        .ok_or("no \"leases\" array")?
        .iter()
        .enumerate()
        .map(|(i, v)| parse_lease(v).map_err(|e| format!("lease {i}: {e}")))
        .collect::<Result<_, _>>()?;
    Ok(State {
        leases,
        ip_forward_before,
        bridges_created,
    })
}

fn parse_lease(v: &Value) -> Result<Lease, String> {
    let text = |key: &str| -> Result<String, String> {
        v.get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("no string {key:?}"))
    };
    let addr = |key: &str| -> Result<Ipv4Addr, String> {
        text(key)?
            .parse()
            .map_err(|_| format!("{key:?} is not an IPv4 address"))
    };
    let pid = match v.get("pid") {
        None | Some(Value::Null) => None,
        Some(p) => Some(
            p.as_u64()
                .and_then(|p| u32::try_from(p).ok())
                .ok_or("\"pid\" is not a process id")?,
        ),
    };
    let publish = v
        .get("publish")
        .and_then(Value::as_array)
        .ok_or("no \"publish\" array")?
        .iter()
        .map(|p| {
            p.as_str()
                .ok_or("a \"publish\" entry is not a string".to_string())
                .and_then(|s| s.parse::<PortForward>().map_err(|e| e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    Ok(Lease {
        owner: text("owner")?,
        ifname: text("ifname")?,
        bridge: text("bridge")?,
        subnet: text("subnet")?.parse().map_err(|e| format!("{e}"))?,
        gateway: addr("gateway")?,
        address: addr("address")?,
        host_veth: text("host_veth")?,
        ip_masq: v
            .get("ip_masq")
            .and_then(Value::as_bool)
            .ok_or("no boolean \"ip_masq\"")?,
        pid,
        publish,
    })
}

impl State {
    pub fn find(&self, owner: &str, ifname: &str) -> Option<&Lease> {
        self.leases
            .iter()
            .find(|l| l.owner == owner && l.ifname == ifname)
    }

    /// True if some lease is on `bridge`.
    pub fn bridge_in_use(&self, bridge: &str) -> bool {
        self.leases.iter().any(|l| l.bridge == bridge)
    }

    /// The lease already publishing a host port that `wanted` would clash with.
    pub fn port_clash(&self, wanted: &PortForward) -> Option<&Lease> {
        self.leases.iter().find(|l| {
            l.publish.iter().any(|p| {
                p.proto == wanted.proto
                    && p.host.port() == wanted.host.port()
                    && ips_overlap(p.host, wanted.host)
            })
        })
    }
}

fn ips_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    let any = |ip: IpAddr| ip.is_unspecified();
    any(a.ip()) || any(b.ip()) || a.ip() == b.ip()
}

/// `Proto` as nft and the lease file spell it.
pub fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn lease(owner: &str, addr: u8, publish: &[&str]) -> Lease {
        Lease {
            owner: owner.into(),
            ifname: "eth0".into(),
            bridge: "tapir0".into(),
            subnet: "172.30.0.0/16".parse().unwrap(),
            gateway: Ipv4Addr::new(172, 30, 0, 1),
            address: Ipv4Addr::new(172, 30, 0, addr),
            host_veth: format!("tapir{owner}"),
            ip_masq: true,
            pid: Some(42),
            publish: publish.iter().map(|p| p.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn round_trips() {
        let state = State {
            leases: vec![
                lease("a", 2, &["5005:5000", "127.0.0.1:53:53/udp"]),
                lease("b", 3, &[]),
            ],
            ip_forward_before: Some("0".into()),
            bridges_created: vec!["tapir0".into()],
        };
        assert_eq!(parse(&render(&state)), Ok(state));
    }

    #[test]
    fn malformed_files_are_refused_not_guessed() {
        assert!(parse("").is_err());
        assert!(parse("{\"version\": 2, \"leases\": []}").is_err());
        let bad = render(&State {
            leases: vec![lease("a", 2, &[])],
            ..State::default()
        })
        .replace("172.30.0.2", "not-an-address");
        assert_eq!(
            parse(&bad),
            Err("lease 0: \"address\" is not an IPv4 address".into())
        );
    }

    #[test]
    fn port_clashes_consider_protocol_and_host_ip() {
        let state = State {
            leases: vec![lease("a", 2, &["127.0.0.1:8080:80"])],
            ..State::default()
        };
        let clash = |s: &str| {
            state
                .port_clash(&s.parse().unwrap())
                .map(|l| l.owner.clone())
        };
        assert_eq!(clash("8080:80"), Some("a".into()));
        assert_eq!(clash("127.0.0.1:8080:81"), Some("a".into()));
        assert_eq!(clash("127.0.0.2:8080:80"), None);
        assert_eq!(clash("8080:80/udp"), None);
        assert_eq!(clash("8081:80"), None);
    }

    #[test]
    fn a_state_directory_with_leases_keeps_the_namespace_from_another() {
        let root = std::env::temp_dir().join(format!("tapir-manager-{}", std::process::id()));
        let (a, b, default) = (root.join("a"), root.join("b"), root.join("default"));
        for dir in [&a, &b, &default] {
            fs::create_dir_all(dir).unwrap();
        }
        let manager = Manager::lock_at(&root.join("netns.owner"), default.clone()).unwrap();
        let with_lease = render(&State {
            leases: vec![lease("x", 2, &[])],
            ..State::default()
        });
        assert_eq!(manager.rival(&a).unwrap(), None, "nobody manages it yet");
        // Named by nobody, the default directory is in charge: leases from before there
        // was a manager file count.
        fs::write(default.join("leases.json"), &with_lease).unwrap();
        assert_eq!(manager.rival(&a).unwrap(), Some((default.clone(), 1)));
        assert_eq!(manager.rival(&default).unwrap(), None);
        fs::remove_file(default.join("leases.json")).unwrap();

        manager.record(&a).unwrap();
        assert_eq!(manager.rival(&b).unwrap(), None, "a holds no lease yet");
        fs::write(a.join("leases.json"), &with_lease).unwrap();
        let a_named = Some((a.canonicalize().unwrap(), 1));
        assert_eq!(manager.rival(&b).unwrap(), a_named);
        assert_eq!(manager.rival(&a).unwrap(), None, "a is not its own rival");
        assert_eq!(manager.rival(&root.join("b/../a")).unwrap(), None);
        // A lease file that cannot be read refuses rather than lets b rebuild the table.
        fs::write(a.join("leases.json"), "{").unwrap();
        assert!(matches!(
            manager.rival(&b),
            Err(StateError::Malformed { .. })
        ));
        // Its last lease gone, a manages nothing and b may take over.
        fs::write(a.join("leases.json"), render(&State::default())).unwrap();
        assert_eq!(manager.rival(&b).unwrap(), None);
        manager.record(&b).unwrap();
        fs::write(b.join("leases.json"), &with_lease).unwrap();
        assert_eq!(
            manager.rival(&a).unwrap(),
            Some((b.canonicalize().unwrap(), 1))
        );
        fs::remove_dir_all(&root).unwrap();
    }
}
