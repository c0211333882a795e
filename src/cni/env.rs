//! The `CNI_*` environment: which operation, on which container, namespace and interface.
//!
//! Which variables each command needs follows libcni's `skel` (SPEC.md "Parameters"):
//! CNI_CONTAINERID and CNI_IFNAME for ADD, DEL and CHECK; CNI_NETNS for ADD and CHECK (DEL must
//! work once the namespace is gone). CNI_PATH is read but not required: tapir-cni execs no
//! other plugin. All missing variables are named in one error, as `skel` does. The container id
//! and interface name are checked the way libcni checks them, so a hostile value never reaches
//! a file name or a netlink message.

use std::collections::HashMap;
use std::path::PathBuf;

use super::{CniError, ErrorCode};

/// The operation in CNI_COMMAND.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
}

/// One invocation's parameters, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    /// CNI_CONTAINERID: keys the lease and names the host-side veth.
    pub container_id: String,
    /// CNI_NETNS: the container's network namespace; `None` only for DEL.
    pub netns: Option<PathBuf>,
    /// CNI_IFNAME: the interface to create inside the container (e.g. `eth0`).
    pub ifname: String,
    /// CNI_ARGS: `K=V;K2=V2`, in order. tapir-cni uses none of them (runtimes pass
    /// `IgnoreUnknown=1`, `K8S_POD_NAME=...`), but a malformed list is refused as `skel` does.
    pub args: Vec<(String, String)>,
    /// CNI_PATH: where the runtime keeps plugins (colon-separated).
    pub path: Vec<PathBuf>,
}

impl Invocation {
    pub fn from_env(env: &HashMap<String, String>) -> Result<Invocation, CniError> {
        let get = |name: &str| env.get(name).map(String::as_str).filter(|v| !v.is_empty());
        let command = match get("CNI_COMMAND") {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            Some(other) => {
                return Err(CniError::new(
                    ErrorCode::InvalidEnvironment,
                    format!(
                        "CNI_COMMAND {other:?} is not one tapir-cni knows (ADD, DEL, CHECK, VERSION)"
                    ),
                ));
            }
            None => {
                return Err(CniError::new(
                    ErrorCode::InvalidEnvironment,
                    "required env variables [CNI_COMMAND] missing",
                ));
            }
        };
        if command == Command::Version {
            return Ok(Invocation {
                command,
                container_id: String::new(),
                netns: None,
                ifname: String::new(),
                args: Vec::new(),
                path: Vec::new(),
            });
        }
        let mut required = vec!["CNI_CONTAINERID", "CNI_IFNAME"];
        if command != Command::Del {
            required.insert(1, "CNI_NETNS");
        }
        let missing: Vec<&str> = required
            .into_iter()
            .filter(|name| get(name).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                format!("required env variables [{}] missing", missing.join(",")),
            ));
        }
        let container_id = get("CNI_CONTAINERID").unwrap_or_default().to_string();
        let ifname = get("CNI_IFNAME").unwrap_or_default().to_string();
        check_container_id(&container_id)?;
        check_ifname("CNI_IFNAME", &ifname)
            .map_err(|msg| CniError::new(ErrorCode::InvalidEnvironment, msg))?;
        Ok(Invocation {
            command,
            container_id,
            netns: get("CNI_NETNS").map(PathBuf::from),
            ifname,
            args: parse_args(get("CNI_ARGS").unwrap_or_default())?,
            path: get("CNI_PATH")
                .unwrap_or_default()
                .split(':')
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect(),
        })
    }
}

/// libcni's `ValidateContainerID`: a letter or digit, then letters, digits, `_`, `.`, `-`.
fn check_container_id(id: &str) -> Result<(), CniError> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok && id.len() <= 1024 {
        Ok(())
    } else {
        Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!(
                "CNI_CONTAINERID {id:?} is not a container id (letters, digits, `_`, `.`, `-`, \
                 starting with a letter or digit)"
            ),
        ))
    }
}

/// libcni's `ValidateInterfaceName` (the kernel's `dev_valid_name`): 1 to 15 bytes, not `.` or
/// `..`, no `/`, `:` or whitespace. Returns the sentence for `what` (the field it came from).
pub fn check_ifname(what: &str, name: &str) -> Result<(), String> {
    let bad = name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if bad {
        Err(format!(
            "{what} {name:?} is not an interface name (1 to 15 bytes, not `.` or `..`, without \
             `/`, `:` or whitespace)"
        ))
    } else {
        Ok(())
    }
}

/// CNI_ARGS: `K=V` pairs separated by `;`. An empty list is fine; a pair without `=` is not.
fn parse_args(text: &str) -> Result<Vec<(String, String)>, CniError> {
    text.split(';')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                format!("CNI_ARGS pair {pair:?} is not KEY=VALUE"),
            )),
        })
        .collect()
}

#[cfg(test)]
mod test {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "ctr1"),
        ("CNI_NETNS", "/run/netns/ct1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web-0"),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
    ];

    #[test]
    fn add_reads_every_variable() {
        let call = Invocation::from_env(&env(ADD)).unwrap();
        assert_eq!(call.command, Command::Add);
        assert_eq!(call.container_id, "ctr1");
        assert_eq!(call.netns, Some(PathBuf::from("/run/netns/ct1")));
        assert_eq!(call.ifname, "eth0");
        assert_eq!(
            call.args,
            vec![
                ("IgnoreUnknown".to_string(), "1".to_string()),
                ("K8S_POD_NAME".to_string(), "web-0".to_string())
            ]
        );
        assert_eq!(
            call.path,
            vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
    }

    #[test]
    fn missing_variables_are_all_named_like_skel() {
        let e = Invocation::from_env(&env(&[("CNI_COMMAND", "ADD")])).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidEnvironment);
        assert_eq!(
            e.msg,
            "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME] missing"
        );
        let e =
            Invocation::from_env(&env(&[("CNI_COMMAND", "CHECK"), ("CNI_NETNS", "")])).unwrap_err();
        assert!(e.msg.contains("CNI_NETNS"), "{e}");
    }

    #[test]
    fn del_needs_no_namespace() {
        let mut vars = env(ADD);
        vars.insert("CNI_COMMAND".into(), "DEL".into());
        vars.remove("CNI_NETNS");
        let call = Invocation::from_env(&vars).unwrap();
        assert_eq!(call.command, Command::Del);
        assert_eq!(call.netns, None);
        vars.insert("CNI_NETNS".into(), String::new());
        assert_eq!(Invocation::from_env(&vars).unwrap().netns, None);
    }

    #[test]
    fn version_needs_nothing_else() {
        let call = Invocation::from_env(&env(&[("CNI_COMMAND", "VERSION")])).unwrap();
        assert_eq!(call.command, Command::Version);
    }

    #[test]
    fn unknown_or_missing_command_is_code_4() {
        for vars in [
            env(&[("CNI_COMMAND", "GC")]),
            env(&[("CNI_COMMAND", "add")]),
            env(&[]),
        ] {
            let e = Invocation::from_env(&vars).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidEnvironment, "{e}");
        }
        let e = Invocation::from_env(&env(&[("CNI_COMMAND", "STATUS")])).unwrap_err();
        assert!(e.msg.contains("\"STATUS\""), "{e}");
    }

    #[test]
    fn hostile_container_ids_and_interface_names_are_refused() {
        for (key, value) in [
            ("CNI_CONTAINERID", "../../etc/passwd"),
            ("CNI_CONTAINERID", "-leading-dash"),
            ("CNI_CONTAINERID", "has space"),
            ("CNI_IFNAME", "a-name-longer-than-15"),
            ("CNI_IFNAME", ".."),
            ("CNI_IFNAME", "eth/0"),
            ("CNI_IFNAME", "eth:0"),
            ("CNI_IFNAME", "eth\t0"),
        ] {
            let mut vars = env(ADD);
            vars.insert(key.into(), value.into());
            let e = Invocation::from_env(&vars).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidEnvironment, "{key}={value:?}");
            assert!(e.msg.contains(&format!("{value:?}")), "{e}");
        }
        let mut vars = env(ADD);
        vars.insert("CNI_CONTAINERID".into(), "a1_b.c-D".into());
        vars.insert("CNI_IFNAME".into(), "net1234567890ab".into());
        assert!(Invocation::from_env(&vars).is_ok());
    }

    #[test]
    fn malformed_cni_args_are_code_4() {
        let mut vars = env(ADD);
        vars.insert("CNI_ARGS".into(), "IgnoreUnknown=1;oops".into());
        let e = Invocation::from_env(&vars).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidEnvironment);
        assert!(e.msg.contains("\"oops\""), "{e}");
        vars.insert("CNI_ARGS".into(), ";A=;".into());
        assert_eq!(
            Invocation::from_env(&vars).unwrap().args,
            vec![("A".to_string(), String::new())]
        );
    }
}
