//! The CNI 1.0.0 plugin protocol: what a container runtime hands `tapir-cni`, and what it gets
//! back.
//!
//! Theory of operation. A runtime (containerd, CRI-O, podman's CNI backend, `cnitool`) execs the
//! plugin once per operation, in the runtime's own network namespace, with the operation in the
//! `CNI_*` environment ([`env`]) and the network configuration as JSON on stdin ([`config`]).
//! The plugin prints one JSON document on stdout — the result of ADD, or an error object — and
//! exits 0, or 1 with the error ([`result`]). [`handle`] is that whole exchange as a function:
//! environment map and stdin bytes in, stdout text and exit status out. The real work (veth,
//! bridge, lease, NAT) is the [`Backend`]'s; `commands::cni` plugs in the kernel path, the unit
//! tests a fake. Nothing here touches a file descriptor.
//!
//! The checks run in the order libcni's `skel` runs them, so a runtime sees the error it would
//! see from the reference plugins: the environment (code 4), then VERSION (which needs no
//! configuration), then decoding stdin (6), the version (1), the configuration's fields (7, or 2
//! for a field tapir understands but does not do), and only then the backend.
//!
//! Commands and their contract (SPEC.md, "CNI Operations"):
//! - ADD: attach the container to the bridge, print the result. A failed ADD leaves nothing (the
//!   backend rolls back).
//! - DEL: remove everything ADD made, best effort; it succeeds when repeated and when the
//!   network namespace is already gone (CNI_NETNS may then be empty). prevResult is not needed:
//!   the backend finds what to remove by container id and interface name.
//! - CHECK (0.4.0 and later): the attachment still matches prevResult (addresses, MACs).
//! - VERSION: the versions this plugin speaks.
//!
//! Not done: STATUS and GC (CNI 1.1), chained IPAM plugins (tapir allocates addresses itself;
//! `ipam.type` is `host-local` or `tapir`), IPv6.

pub mod config;
pub mod env;
pub mod result;

use std::collections::HashMap;
use std::fmt;

pub use config::NetConf;
pub use env::{Command, Invocation};
pub use result::Attached;

/// The versions of the spec tapir-cni speaks, oldest first. 0.3.x and 0.4.0 results differ
/// from 1.0.0 only by a `"version": "4"` on each address; CHECK needs 0.4.0.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// The version tapir-cni answers in when the request names none it can use.
pub const CURRENT_VERSION: &str = "1.0.0";

/// The largest network configuration read from stdin. Real ones are a few KiB; prevResult of a
/// container with many interfaces stays far below this.
pub const MAX_CONFIG_LEN: usize = 1 << 20;

/// The error codes of SPEC.md's "Error" section (1–99 are the spec's; 100 and up the plugin's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 1: the configuration's cniVersion is not one this plugin speaks.
    IncompatibleVersion,
    /// 2: a configuration field this plugin knows but does not support (the message names the
    /// key and value).
    UnsupportedField,
    /// 3: the container is unknown or does not exist.
    UnknownContainer,
    /// 4: a CNI_* environment variable is missing or invalid.
    InvalidEnvironment,
    /// 5: reading stdin (or another I/O step of the protocol) failed.
    Io,
    /// 6: stdin is not the JSON document it should be.
    Decode,
    /// 7: the configuration is well-formed JSON but a value is wrong.
    InvalidConfig,
    /// 11: a transient condition (a busy lock); the runtime may retry.
    TryAgainLater,
    /// 999: tapir's own failure (netlink, nftables, the lease file), with the sentence saying what.
    Tapir,
}

impl ErrorCode {
    pub fn number(self) -> u32 {
        match self {
            ErrorCode::IncompatibleVersion => 1,
            ErrorCode::UnsupportedField => 2,
            ErrorCode::UnknownContainer => 3,
            ErrorCode::InvalidEnvironment => 4,
            ErrorCode::Io => 5,
            ErrorCode::Decode => 6,
            ErrorCode::InvalidConfig => 7,
            ErrorCode::TryAgainLater => 11,
            ErrorCode::Tapir => 999,
        }
    }
}

/// An error as the runtime receives it: `{cniVersion, code, msg, details}` on stdout, exit 1.
/// `msg` is one sentence naming the offending value; `details` says more when there is more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: ErrorCode,
    pub msg: String,
    pub details: Option<String>,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = Some(details.into());
        self
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (CNI error {})", self.msg, self.code.number())?;
        if let Some(details) = &self.details {
            write!(f, ": {details}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// What carries out an attachment: the kernel path in `commands::cni`, a fake in tests.
///
/// Each method gets the validated configuration and invocation; ADD and CHECK always have a
/// network namespace, DEL may not.
pub trait Backend {
    /// Creates the attachment (or fails leaving nothing behind).
    fn add(&mut self, conf: &NetConf, call: &Invocation) -> Result<Attached, CniError>;
    /// Removes whatever ADD made for this container id and interface; Ok when nothing is left.
    fn del(&mut self, conf: &NetConf, call: &Invocation) -> Result<(), CniError>;
    /// Reads back the attachment as it is now; an error when it is missing or broken.
    fn check(&mut self, conf: &NetConf, call: &Invocation) -> Result<Attached, CniError>;
}

/// What the plugin prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The whole of stdout (empty for a successful DEL or CHECK).
    pub stdout: String,
    /// 0 on success, 1 with an error object on stdout.
    pub exit_code: i32,
}

impl Reply {
    fn ok(stdout: String) -> Reply {
        Reply {
            stdout,
            exit_code: 0,
        }
    }

    fn error(version: &str, error: &CniError) -> Reply {
        Reply {
            stdout: result::render_error(version, error),
            exit_code: 1,
        }
    }
}

/// One plugin invocation: the environment and stdin in, stdout and the exit status out.
pub fn handle(env: &HashMap<String, String>, stdin: &[u8], backend: &mut dyn Backend) -> Reply {
    let call = match Invocation::from_env(env) {
        Ok(call) => call,
        Err(e) => return Reply::error(&reply_version(stdin), &e),
    };
    if call.command == Command::Version {
        return Reply::ok(result::render_version());
    }
    if stdin.len() > MAX_CONFIG_LEN {
        let e = CniError::new(
            ErrorCode::Decode,
            format!("the network configuration on stdin is longer than {MAX_CONFIG_LEN} bytes"),
        );
        return Reply::error(CURRENT_VERSION, &e);
    }
    let conf = match NetConf::parse(stdin, call.command) {
        Ok(conf) => conf,
        Err(e) => return Reply::error(&reply_version(stdin), &e),
    };
    let version = conf.cni_version.clone();
    let outcome = match call.command {
        Command::Add => backend
            .add(&conf, &call)
            .map(|attached| result::render_add(&conf, &call, &attached)),
        Command::Del => backend.del(&conf, &call).map(|()| String::new()),
        Command::Check => check(&conf, &call, backend).map(|()| String::new()),
        Command::Version => unreachable!("VERSION was answered above"),
    };
    match outcome {
        Ok(stdout) => Reply::ok(stdout),
        Err(e) => Reply::error(&version, &e),
    }
}

fn check(conf: &NetConf, call: &Invocation, backend: &mut dyn Backend) -> Result<(), CniError> {
    let Some(prev) = &conf.prev_result else {
        return Err(CniError::new(
            ErrorCode::InvalidConfig,
            "CHECK needs the ADD result as prevResult, and the configuration has none",
        ));
    };
    let now = backend.check(conf, call)?;
    result::compare(conf, call, prev, &now)
}

/// The reply when stdin could not be read at all (code 5).
pub fn unreadable_stdin(error: &std::io::Error) -> Reply {
    let e = CniError::new(
        ErrorCode::Io,
        format!("cannot read the network configuration on stdin: {error}"),
    );
    Reply::error(CURRENT_VERSION, &e)
}

/// The cniVersion an error is reported in: the request's, when it names one tapir-cni speaks.
fn reply_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| CURRENT_VERSION.to_string())
}

/// `major.minor.patch` as numbers, for "0.4.0 or later" comparisons.
pub fn version_tuple(version: &str) -> Option<(u32, u32, u32)> {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    let tuple = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(tuple)
}

#[cfg(test)]
mod test {
    use std::net::Ipv4Addr;

    use serde_json::{Value, json};

    use super::*;

    /// A backend that records what it was asked and answers from a script.
    #[derive(Default)]
    struct Fake {
        calls: Vec<(Command, String, Option<String>)>,
        fail_with: Option<CniError>,
        now: Option<Attached>,
    }

    fn attached() -> Attached {
        Attached {
            bridge: "br0".into(),
            bridge_mac: [0x02, 0, 0, 0, 0, 1],
            host_veth: "vethctr1".into(),
            host_veth_mac: None,
            container_ifname: "eth0".into(),
            container_mac: [0x02, 0, 0, 0, 0, 2],
            address: Ipv4Addr::new(10, 89, 0, 2),
            prefix_len: 24,
            gateway: Ipv4Addr::new(10, 89, 0, 1),
        }
    }

    impl Fake {
        fn record(&mut self, call: &Invocation) -> Result<(), CniError> {
            self.calls.push((
                call.command,
                call.container_id.clone(),
                call.netns.as_ref().map(|p| p.display().to_string()),
            ));
            self.fail_with.clone().map_or(Ok(()), Err)
        }
    }

    impl Backend for Fake {
        fn add(&mut self, _conf: &NetConf, call: &Invocation) -> Result<Attached, CniError> {
            self.record(call)?;
            Ok(attached())
        }
        fn del(&mut self, _conf: &NetConf, call: &Invocation) -> Result<(), CniError> {
            self.record(call)
        }
        fn check(&mut self, _conf: &NetConf, call: &Invocation) -> Result<Attached, CniError> {
            self.record(call)?;
            Ok(self.now.clone().unwrap_or_else(attached))
        }
    }

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"n","type":"tapir-cni","bridge":"br0",
        "ipam":{"type":"tapir","subnet":"10.89.0.0/24"}}"#;

    fn env(command: &str) -> HashMap<String, String> {
        [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "ctr1"),
            ("CNI_NETNS", "/run/netns/ct1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn json_of(reply: &Reply) -> Value {
        serde_json::from_str(&reply.stdout).unwrap_or_else(|e| panic!("{e}: {}", reply.stdout))
    }

    #[test]
    fn add_prints_the_result_and_exits_0() {
        let mut fake = Fake::default();
        let reply = handle(&env("ADD"), CONF.as_bytes(), &mut fake);
        assert_eq!(reply.exit_code, 0, "{}", reply.stdout);
        let v = json_of(&reply);
        assert_eq!(v["ips"][0]["address"], "10.89.0.2/24");
        assert_eq!(v["interfaces"][2]["sandbox"], "/run/netns/ct1");
        assert_eq!(
            fake.calls,
            vec![(Command::Add, "ctr1".into(), Some("/run/netns/ct1".into()))]
        );
    }

    #[test]
    fn del_prints_nothing_and_works_without_a_namespace() {
        let mut fake = Fake::default();
        let mut vars = env("DEL");
        vars.remove("CNI_NETNS");
        let reply = handle(&vars, CONF.as_bytes(), &mut fake);
        assert_eq!(
            reply,
            Reply {
                stdout: String::new(),
                exit_code: 0
            }
        );
        assert_eq!(fake.calls, vec![(Command::Del, "ctr1".into(), None)]);
    }

    #[test]
    fn version_ignores_stdin_and_touches_nothing() {
        let mut fake = Fake::default();
        let vars: HashMap<String, String> =
            [("CNI_COMMAND".to_string(), "VERSION".to_string())].into();
        for stdin in [&b"{\"cniVersion\":\"1.0.0\"}"[..], b"", b"garbage"] {
            let reply = handle(&vars, stdin, &mut fake);
            assert_eq!(reply.exit_code, 0);
            assert_eq!(json_of(&reply)["supportedVersions"][3], "1.0.0");
        }
        assert!(fake.calls.is_empty());
    }

    #[test]
    fn errors_come_before_the_backend_in_skel_order() {
        let mut fake = Fake::default();
        // Environment first, even when stdin is garbage too.
        let reply = handle(&HashMap::new(), b"garbage", &mut fake);
        assert_eq!(
            (reply.exit_code, json_of(&reply)["code"].clone()),
            (1, json!(4))
        );
        let reply = handle(&env("ADD"), b"garbage", &mut fake);
        assert_eq!(json_of(&reply)["code"], 6);
        let reply = handle(
            &env("ADD"),
            br#"{"cniVersion":"2.0.0","name":"n","type":"t"}"#,
            &mut fake,
        );
        assert_eq!(json_of(&reply)["code"], 1);
        assert_eq!(json_of(&reply)["cniVersion"], "1.0.0");
        let reply = handle(
            &env("ADD"),
            br#"{"cniVersion":"0.4.0","name":"n","type":"t","ipam":{"type":"dhcp"}}"#,
            &mut fake,
        );
        let v = json_of(&reply);
        assert_eq!(
            (v["code"].clone(), v["cniVersion"].clone()),
            (json!(2), json!("0.4.0"))
        );
        assert!(fake.calls.is_empty());
    }

    #[test]
    fn backend_failures_are_reported_in_the_configured_version() {
        let mut fake = Fake {
            fail_with: Some(CniError::new(
                ErrorCode::TryAgainLater,
                "the lease file is busy",
            )),
            ..Fake::default()
        };
        let reply = handle(&env("ADD"), CONF.as_bytes(), &mut fake);
        assert_eq!(reply.exit_code, 1);
        assert_eq!(
            json_of(&reply),
            json!({"cniVersion": "1.0.0", "code": 11, "msg": "the lease file is busy"})
        );
    }

    fn with_prev(prev: &str) -> String {
        let mut conf: Value = serde_json::from_str(CONF).unwrap();
        conf["prevResult"] = serde_json::from_str(prev).unwrap();
        conf.to_string()
    }

    #[test]
    fn check_compares_the_backend_with_prev_result() {
        let mut fake = Fake::default();
        let added = handle(&env("ADD"), CONF.as_bytes(), &mut fake).stdout;
        let checked = with_prev(&added);
        let reply = handle(&env("CHECK"), checked.as_bytes(), &mut fake);
        assert_eq!((reply.exit_code, reply.stdout.as_str()), (0, ""));

        fake.now = Some(Attached {
            address: Ipv4Addr::new(10, 89, 0, 7),
            ..attached()
        });
        let reply = handle(&env("CHECK"), checked.as_bytes(), &mut fake);
        assert_eq!(reply.exit_code, 1);
        let v = json_of(&reply);
        assert_eq!(v["code"], 999);
        assert!(v["msg"].as_str().unwrap().contains("10.89.0.7/24"), "{v}");
    }

    #[test]
    fn check_without_prev_result_is_refused_before_the_backend() {
        let mut fake = Fake::default();
        let reply = handle(&env("CHECK"), CONF.as_bytes(), &mut fake);
        assert_eq!(json_of(&reply)["code"], 7);
        assert!(fake.calls.is_empty());
    }

    #[test]
    fn an_oversized_configuration_is_refused_unparsed() {
        let mut fake = Fake::default();
        let mut big = CONF.as_bytes().to_vec();
        big.resize(MAX_CONFIG_LEN + 1, b' ');
        let reply = handle(&env("ADD"), &big, &mut fake);
        assert_eq!(json_of(&reply)["code"], 6);
        big.truncate(MAX_CONFIG_LEN);
        assert_eq!(handle(&env("ADD"), &big, &mut fake).exit_code, 0);
    }

    #[test]
    fn version_tuples() {
        assert_eq!(version_tuple("1.0.0"), Some((1, 0, 0)));
        assert_eq!(version_tuple("0.4.0"), Some((0, 4, 0)));
        for bad in ["1.0", "1.0.0.0", "a.b.c", ""] {
            assert_eq!(version_tuple(bad), None, "{bad}");
        }
    }
}
