//! slirp4netns API requests and replies, as bytes in and bytes out.
//!
//! [`parse_request`] turns what a client sent into a [`Request`] or an [`ApiError`] whose
//! `Display` is slirp4netns's exact error description; the `*_response` functions render the
//! reply bytes. Nothing here holds a socket or a forward table: the caller looks ids up,
//! binds host sockets, and sends [`ApiError::AddFailed`] or [`ApiError::RemoveFailed`] (or
//! [`ApiError::BadId`] for an unknown id) when its part fails.
//!
//! Accepting what slirp4netns 1.2 (parson) accepts, checked against the real binary:
//! - The request ends at the first NUL byte (slirp4netns handles it as a C string), a UTF-8
//!   byte-order mark is skipped, and anything after the first JSON value is ignored, so the
//!   usual trailing newline is fine.
//! - `execute` must be a string; `arguments` is only read for `add_hostfwd` and
//!   `remove_hostfwd`, and a missing or non-object `arguments` reads as empty.
//! - `add_hostfwd` fields are checked in slirp4netns's order (proto, host_addr, host_port,
//!   guest_addr, guest_port), so the first bad one is the one reported.
//! - `proto` is exactly `tcp` or `udp`. RootlessKit strips the `4` from `tcp4`/`udp4` itself.
//! - A `host_addr` or `guest_addr` that is missing, `""` or not a string means "default":
//!   `0.0.0.0` for the host, and `None` for the guest (the caller uses the guest's address).
//! - Ports and ids are JSON numbers. Integral floats such as `8080.0` are accepted.
//!
//! Where tapir is stricter or looser on purpose:
//! - slirp4netns casts numbers to `int`, so `8080.7` became 8080, `-1` and `70000` reached
//!   `htons` and a string port became 0. Here a port must be a whole number in 1..=65535 and
//!   an id a whole number of at least 1; anything else is the field's bad-arguments error.
//! - `host_addr` and `guest_addr` may be IPv6 (slirp4netns is IPv4-only).
//! - slirp4netns crashes on `add_hostfwd` without a `proto` (it calls `strcmp(NULL)`); here
//!   that is the proto error.
//! - Duplicate keys are refused by parson ("cannot parse JSON"); serde_json keeps the last
//!   one. Nesting deeper than serde_json's 128 levels is "cannot parse JSON" (parson: 2048).
//! - `stats` is a tapir extension.

use std::net::{IpAddr, Ipv4Addr};

use serde_json::Value;

use crate::forward::spec::Proto;

/// The size of slirp4netns's request buffer: a request this long or longer is refused.
pub const REQUEST_BUFFER_LEN: usize = 4096;

/// One API request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `{"execute":"add_hostfwd","arguments":{...}}`: reply with [`add_response`].
    AddHostfwd(HostFwd),
    /// `{"execute":"list_hostfwd"}`: reply with [`list_response`].
    ListHostfwd,
    /// `{"execute":"remove_hostfwd","arguments":{"id":N}}`: reply with [`remove_response`].
    RemoveHostfwd { id: u64 },
    /// `{"execute":"stats"}` (tapir extension): reply with [`stats_response`].
    Stats,
    /// `{"execute":"list_policy"}` (tapir extension): reply with [`policy_response`].
    ListPolicy,
    /// `{"execute":"set_policy","arguments":{"rules":["deny 10.0.0.0/8",...],
    /// "deny_private":false}}` (tapir extension): replace the egress policy at once.
    SetPolicy {
        rules: Vec<String>,
        deny_private: bool,
    },
}

/// One host port forwarded into the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFwd {
    pub proto: Proto,
    /// Where to listen on the host; `0.0.0.0` when the request gave none.
    pub host_addr: IpAddr,
    pub host_port: u16,
    /// The guest address to deliver to; `None` means the guest's own (network+100).
    pub guest_addr: Option<IpAddr>,
    pub guest_port: u16,
}

/// A request that cannot be carried out. `Display` is slirp4netns's `desc`, verbatim.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ApiError {
    #[error("bad request: too large message")]
    TooLarge,
    #[error("bad request: cannot parse JSON")]
    CannotParseJson,
    #[error("bad request: json_object() failed")]
    NotAnObject,
    #[error("bad request: no execute found")]
    NoExecute,
    #[error("bad request: unknown execute")]
    UnknownExecute,
    #[error("bad request: add_hostfwd: bad arguments.proto")]
    BadProto,
    #[error("bad request: add_hostfwd: bad arguments.host_addr")]
    BadHostAddr,
    #[error("bad request: add_hostfwd: bad arguments.host_port")]
    BadHostPort,
    #[error("bad request: add_hostfwd: bad arguments.guest_addr")]
    BadGuestAddr,
    /// An address on the guest's side that is not the guest's (slirp4netns would take it).
    #[error(
        "bad request: add_hostfwd: bad arguments.guest_addr: {asked} is not the guest's address, {guest}"
    )]
    NotTheGuest { asked: Ipv4Addr, guest: Ipv4Addr },
    #[error("bad request: add_hostfwd: bad arguments.guest_port")]
    BadGuestPort,
    /// The caller could not listen on the host address (in use, privileged port, ...).
    #[error("bad request: add_hostfwd: slirp_add_hostfwd failed")]
    AddFailed,
    /// Also the caller's answer for an id it does not hold.
    #[error("bad request: remove_hostfwd: bad arguments.id")]
    BadId,
    #[error("bad request: remove_hostfwd: slirp_remove_hostfwd failed")]
    RemoveFailed,
    #[error("bad request: set_policy: bad arguments.rules")]
    BadRules,
    /// A rule the policy parser refused; the text is its sentence.
    #[error("bad request: set_policy: {0}")]
    BadRule(String),
}

/// Parses one request: everything the client sent on its connection.
pub fn parse_request(bytes: &[u8]) -> Result<Request, ApiError> {
    if bytes.len() >= REQUEST_BUFFER_LEN {
        return Err(ApiError::TooLarge);
    }
    let value = match first_value(bytes) {
        Some(Ok(value)) => value,
        _ => return Err(ApiError::CannotParseJson),
    };
    let object = value.as_object().ok_or(ApiError::NotAnObject)?;
    let execute = object.get("execute").and_then(Value::as_str);
    let arguments = object.get("arguments");
    match execute.ok_or(ApiError::NoExecute)? {
        "add_hostfwd" => parse_add(arguments).map(Request::AddHostfwd),
        "list_hostfwd" => Ok(Request::ListHostfwd),
        "remove_hostfwd" => parse_remove(arguments),
        "stats" => Ok(Request::Stats),
        "list_policy" => Ok(Request::ListPolicy),
        "set_policy" => parse_set_policy(arguments),
        _ => Err(ApiError::UnknownExecute),
    }
}

/// Whether `bytes`, read so far from a connection, already hold a whole request (or can
/// only be an error), so the server may answer without waiting for end of file.
///
/// slirp4netns answers after one `read()`, so some clients never shut down their write side
/// and wait for the reply; a server that waited for end of file would hang with them.
pub fn request_is_complete(bytes: &[u8]) -> bool {
    if bytes.len() >= REQUEST_BUFFER_LEN || bytes.contains(&0) {
        return true;
    }
    match first_value(bytes) {
        None => false,
        Some(Ok(_)) => true,
        Some(Err(e)) => !e.is_eof(),
    }
}

/// The first JSON value in a request, read the way slirp4netns reads its buffer: up to the
/// first NUL, after a byte-order mark, ignoring whatever follows the value. `None` when there
/// is nothing but white space.
fn first_value(bytes: &[u8]) -> Option<Result<Value, serde_json::Error>> {
    let bytes = bytes.split(|&b| b == 0).next().unwrap_or_default();
    // parson does not check UTF-8, so neither do we: bad bytes become U+FFFD.
    let text = String::from_utf8_lossy(bytes);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .next()
}

fn parse_add(arguments: Option<&Value>) -> Result<HostFwd, ApiError> {
    let field = |name: &str| arguments.and_then(|a| a.get(name));
    let text = |name: &str| {
        field(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };

    let proto = match text("proto") {
        Some("tcp") => Proto::Tcp,
        Some("udp") => Proto::Udp,
        _ => return Err(ApiError::BadProto),
    };
    let host_addr = match text("host_addr") {
        None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Some(addr) => addr.parse().map_err(|_| ApiError::BadHostAddr)?,
    };
    let host_port = field("host_port")
        .and_then(port)
        .ok_or(ApiError::BadHostPort)?;
    let guest_addr = match text("guest_addr") {
        None => None,
        Some(addr) => Some(addr.parse().map_err(|_| ApiError::BadGuestAddr)?),
    };
    let guest_port = field("guest_port")
        .and_then(port)
        .ok_or(ApiError::BadGuestPort)?;
    Ok(HostFwd {
        proto,
        host_addr,
        host_port,
        guest_addr,
        guest_port,
    })
}

fn parse_remove(arguments: Option<&Value>) -> Result<Request, ApiError> {
    let id = arguments
        .and_then(|a| a.get("id"))
        .and_then(|v| whole_number(v, u64::MAX))
        .filter(|&id| id >= 1)
        .ok_or(ApiError::BadId)?;
    Ok(Request::RemoveHostfwd { id })
}

fn port(value: &Value) -> Option<u16> {
    let n = whole_number(value, u64::from(u16::MAX))?;
    u16::try_from(n).ok().filter(|&p| p != 0)
}

/// A JSON number that is a whole number in `0..=max`, written as an integer or as a float
/// (`8080.0`; Go clients marshal `float64` ids that way).
fn whole_number(value: &Value, max: u64) -> Option<u64> {
    if let Some(n) = value.as_u64() {
        return (n <= max).then_some(n);
    }
    let f = value.as_f64()?;
    // 2^64: every whole f64 below it converts to u64 exactly.
    const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;
    if f.fract() != 0.0 || !(0.0..TWO_POW_64).contains(&f) {
        return None;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let n = f as u64;
    (n <= max).then_some(n)
}

/// `{"error":{"desc":"..."}}`.
pub fn error_response(e: &ApiError) -> Vec<u8> {
    format!(r#"{{"error":{{"desc":{}}}}}"#, json_string(&e.to_string())).into_bytes()
}

/// `{"return":{"id":N}}`, the reply to a successful `add_hostfwd`.
pub fn add_response(id: u64) -> Vec<u8> {
    format!(r#"{{"return":{{"id":{id}}}}}"#).into_bytes()
}

/// `{"return":{}}`, the reply to a successful `remove_hostfwd`.
pub fn remove_response() -> Vec<u8> {
    br#"{"return":{}}"#.to_vec()
}

/// The reply to `list_hostfwd`, with the entries both under `return` (as slirp4netns's man
/// page and tests expect) and at the top level (as slirp4netns 1.2 really sends them).
/// Entries print in slirp4netns's key order. The caller should store the resolved guest
/// address; a `None` one prints as `""`.
pub fn list_response(entries: &[(u64, HostFwd)]) -> Vec<u8> {
    let list: Vec<String> = entries.iter().map(|(id, fwd)| entry(*id, fwd)).collect();
    let list = list.join(",");
    format!(r#"{{"return":{{"entries":[{list}]}},"entries":[{list}]}}"#).into_bytes()
}

fn entry(id: u64, fwd: &HostFwd) -> String {
    let guest_addr = fwd.guest_addr.map(|a| a.to_string()).unwrap_or_default();
    format!(
        r#"{{"id":{id},"proto":"{}","host_addr":{},"host_port":{},"guest_addr":{},"guest_port":{}}}"#,
        fwd.proto,
        json_string(&fwd.host_addr.to_string()),
        fwd.host_port,
        json_string(&guest_addr),
        fwd.guest_port
    )
}

/// `{"return":{"name":N,...}}` with the pairs in the order given (tapir extension).
pub fn stats_response(pairs: &[(&str, u64)]) -> Vec<u8> {
    let fields: Vec<String> = pairs
        .iter()
        .map(|(name, n)| format!("{}:{n}", json_string(name)))
        .collect();
    format!(r#"{{"return":{{{}}}}}"#, fields.join(",")).into_bytes()
}

fn parse_set_policy(arguments: Option<&Value>) -> Result<Request, ApiError> {
    let arguments = arguments
        .and_then(Value::as_object)
        .ok_or(ApiError::BadRules)?;
    let list = arguments
        .get("rules")
        .and_then(Value::as_array)
        .ok_or(ApiError::BadRules)?;
    let rules = list
        .iter()
        .map(|r| r.as_str().map(str::to_owned))
        .collect::<Option<Vec<String>>>()
        .ok_or(ApiError::BadRules)?;
    let deny_private = match arguments.get("deny_private") {
        None => false,
        Some(v) => v.as_bool().ok_or(ApiError::BadRules)?,
    };
    Ok(Request::SetPolicy {
        rules,
        deny_private,
    })
}

/// One rule of the policy for [`policy_response`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyEntry {
    pub action: String,
    pub rule: String,
    pub hits: u64,
}

impl PolicyEntry {
    /// `policy`'s rules with their hit counts, and the count of flows no rule matched.
    pub fn list(policy: &crate::flow::policy::Policy) -> (Vec<PolicyEntry>, u64) {
        let rules = policy
            .rules_with_counters()
            .map(|(action, rule, hits)| PolicyEntry {
                action: action.to_string(),
                rule: rule.to_string(),
                hits,
            })
            .collect();
        (rules, policy.default_hits())
    }
}

/// `{"return":{"rules":[{"action":"deny","rule":"10.0.0.0/8","hits":2},...],"default_hits":5}}`
pub fn policy_response(rules: &[PolicyEntry], default_hits: u64) -> Vec<u8> {
    let entries: Vec<String> = rules
        .iter()
        .map(|e| {
            format!(
                r#"{{"action":{},"rule":{},"hits":{}}}"#,
                json_string(&e.action),
                json_string(&e.rule),
                e.hits
            )
        })
        .collect();
    format!(
        r#"{{"return":{{"rules":[{}],"default_hits":{default_hits}}}}}"#,
        entries.join(",")
    )
    .into_bytes()
}

fn json_string(text: &str) -> String {
    Value::from(text).to_string()
}

#[cfg(test)]
mod test {
    use super::*;

    fn add(
        proto: Proto,
        host: &str,
        host_port: u16,
        guest: Option<&str>,
        guest_port: u16,
    ) -> Request {
        Request::AddHostfwd(HostFwd {
            proto,
            host_addr: host.parse().unwrap(),
            host_port,
            guest_addr: guest.map(|g| g.parse().unwrap()),
            guest_port,
        })
    }

    fn desc(request: &str) -> String {
        parse_request(request.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn rootlesskit_requests() {
        // pkg/port/slirp4netns: json.Encoder output, struct field order, trailing newline.
        let req = b"{\"execute\":\"add_hostfwd\",\"arguments\":{\"proto\":\"tcp\",\
            \"host_addr\":\"0.0.0.0\",\"host_port\":8080,\"guest_addr\":\"10.0.2.100\",\
            \"guest_port\":80}}\n";
        assert_eq!(
            parse_request(req),
            Ok(add(Proto::Tcp, "0.0.0.0", 8080, Some("10.0.2.100"), 80))
        );
        // ParentIP left empty, and udp (RootlessKit has already turned udp4 into udp).
        let req = b"{\"execute\":\"add_hostfwd\",\"arguments\":{\"proto\":\"udp\",\
            \"host_addr\":\"\",\"host_port\":5353,\"guest_addr\":\"10.0.2.100\",\
            \"guest_port\":53}}\n";
        assert_eq!(
            parse_request(req),
            Ok(add(Proto::Udp, "0.0.0.0", 5353, Some("10.0.2.100"), 53))
        );
        let req = b"{\"execute\":\"add_hostfwd\",\"arguments\":{\"proto\":\"tcp\",\
            \"host_addr\":\"127.0.0.1\",\"host_port\":5201,\"guest_addr\":\"\",\
            \"guest_port\":5201}}\n";
        assert_eq!(
            parse_request(req),
            Ok(add(Proto::Tcp, "127.0.0.1", 5201, None, 5201))
        );
        let req = b"{\"execute\":\"remove_hostfwd\",\"arguments\":{\"id\":1}}\n";
        assert_eq!(parse_request(req), Ok(Request::RemoveHostfwd { id: 1 }));
    }

    #[test]
    fn podman_request() {
        let req = b"{\"execute\":\"add_hostfwd\",\"arguments\":{\"proto\":\"tcp\",\
            \"host_addr\":\"0.0.0.0\",\"host_port\":8080,\"guest_addr\":\"\",\
            \"guest_port\":80}}\n";
        assert_eq!(
            parse_request(req),
            Ok(add(Proto::Tcp, "0.0.0.0", 8080, None, 80))
        );
    }

    #[test]
    fn slirp4netns_test_suite_requests() {
        // tests/test-slirp4netns-api-socket.sh, sent with `echo` (spaces, newline).
        assert_eq!(desc("badjson\n"), "bad request: cannot parse JSON");
        assert_eq!(
            desc("{\"unexpectedjson\": 42}\n"),
            "bad request: no execute found"
        );
        assert_eq!(
            desc("{\"execute\": \"bad\"}\n"),
            "bad request: unknown execute"
        );
        assert_eq!(
            desc("{\"execute\": \"add_hostfwd\", \"arguments\":{\"proto\": \"bad\"}}\n"),
            "bad request: add_hostfwd: bad arguments.proto"
        );
        assert_eq!(
            parse_request(&[0u8; 8192][..REQUEST_BUFFER_LEN]),
            Err(ApiError::TooLarge)
        );
        let req = "{\"execute\": \"add_hostfwd\", \"arguments\":{\"proto\": \"tcp\",\
            \"host_port\":8080,\"guest_port\":80}}\n";
        assert_eq!(
            parse_request(req.as_bytes()),
            Ok(add(Proto::Tcp, "0.0.0.0", 8080, None, 80))
        );
        assert_eq!(
            parse_request(b"{\"execute\": \"list_hostfwd\"}\n"),
            Ok(Request::ListHostfwd)
        );
        assert_eq!(
            parse_request(b"{\"execute\": \"remove_hostfwd\", \"arguments\":{\"id\": 1}}\n"),
            Ok(Request::RemoveHostfwd { id: 1 })
        );
    }

    #[test]
    fn other_clients_key_orders_and_spacing() {
        // serde_json::json! without preserve_order sorts keys.
        let req = br#"{"arguments":{"guest_port":22,"host_addr":"127.0.0.1","host_port":2222,"proto":"tcp"},"execute":"add_hostfwd"}"#;
        assert_eq!(
            parse_request(req),
            Ok(add(Proto::Tcp, "127.0.0.1", 2222, None, 22))
        );
        let req = b"\n\t{\"execute\": \"add_hostfwd\",\n\t\t\"arguments\": {\"proto\": \"tcp\", \
            \"host_addr\": \"0.0.0.0\", \"host_port\": 2375,\n\t\t\"guest_addr\": \
            \"10.0.2.100\", \"guest_port\": 2375}}";
        assert_eq!(
            parse_request(req),
            Ok(add(Proto::Tcp, "0.0.0.0", 2375, Some("10.0.2.100"), 2375))
        );
    }

    #[test]
    fn request_envelope_errors() {
        assert_eq!(desc(""), "bad request: cannot parse JSON");
        assert_eq!(desc(" \n"), "bad request: cannot parse JSON");
        assert_eq!(
            desc("{\"execute\":\"list_hostfwd\""),
            "bad request: cannot parse JSON"
        );
        assert_eq!(
            desc("{'execute':'list_hostfwd'}"),
            "bad request: cannot parse JSON"
        );
        assert_eq!(
            desc("{\"execute\":\"list_hostfwd\",}"),
            "bad request: cannot parse JSON"
        );
        assert_eq!(
            desc("/* c */ {\"execute\":\"list_hostfwd\"}"),
            "bad request: cannot parse JSON"
        );
        assert_eq!(desc(r#"{"a":"\ud800"}"#), "bad request: cannot parse JSON");
        assert_eq!(desc("[]"), "bad request: json_object() failed");
        assert_eq!(desc("\"x\""), "bad request: json_object() failed");
        assert_eq!(desc("null"), "bad request: json_object() failed");
        assert_eq!(desc("{}"), "bad request: no execute found");
        assert_eq!(desc("{\"execute\":1}"), "bad request: no execute found");
        assert_eq!(desc("{\"execute\":null}"), "bad request: no execute found");
        assert_eq!(desc("{\"execute\":\"\"}"), "bad request: unknown execute");
        assert_eq!(
            desc("{\"execute\":\"LIST_HOSTFWD\"}"),
            "bad request: unknown execute"
        );
    }

    #[test]
    fn read_like_slirp4netns_reads_its_buffer() {
        let list = Ok(Request::ListHostfwd);
        assert_eq!(
            parse_request(b"{\"execute\":\"list_hostfwd\"} trailing garbage"),
            list
        );
        assert_eq!(
            parse_request(b"{\"execute\":\"list_hostfwd\"}{\"x\":1}"),
            list
        );
        assert_eq!(
            parse_request(b"{\"execute\":\"list_hostfwd\"}\0garbage"),
            list
        );
        assert_eq!(
            parse_request(b"\xef\xbb\xbf{\"execute\":\"list_hostfwd\"}"),
            list
        );
        assert_eq!(
            parse_request(b"{\"execute\":\"list_hostfwd\",\"a\":\"\xff\"}"),
            list
        );
        assert_eq!(parse_request(br#"{"execute":"list\u005fhostfwd"}"#), list);
        assert_eq!(
            parse_request(br#"{"execute":"list_hostfwd","arguments":{"id":1}}"#),
            list
        );
        assert_eq!(
            desc("\0{\"execute\":\"list_hostfwd\"}"),
            "bad request: cannot parse JSON"
        );
    }

    #[test]
    fn size_limit() {
        let pad = |len: usize| {
            let head = br#"{"execute":"list_hostfwd"}"#;
            let mut req = head.to_vec();
            req.resize(len, b' ');
            req
        };
        assert_eq!(
            parse_request(&pad(REQUEST_BUFFER_LEN - 1)),
            Ok(Request::ListHostfwd)
        );
        assert_eq!(
            parse_request(&pad(REQUEST_BUFFER_LEN)),
            Err(ApiError::TooLarge)
        );
        assert_eq!(
            parse_request(&pad(REQUEST_BUFFER_LEN + 1)),
            Err(ApiError::TooLarge)
        );
        assert_eq!(
            error_response(&ApiError::TooLarge),
            br#"{"error":{"desc":"bad request: too large message"}}"#
        );
    }

    #[test]
    fn add_hostfwd_arguments() {
        let parse = |args: &str| {
            parse_request(format!(r#"{{"execute":"add_hostfwd","arguments":{args}}}"#).as_bytes())
        };
        assert_eq!(
            parse(
                r#"{"proto":"tcp","host_addr":"::1","host_port":8080,"guest_addr":"fd00::100","guest_port":80}"#
            ),
            Ok(add(Proto::Tcp, "::1", 8080, Some("fd00::100"), 80)),
            "IPv6 is a tapir extension"
        );
        assert_eq!(
            parse(
                r#"{"proto":"udp","host_addr":null,"host_port":53,"guest_addr":5,"guest_port":53}"#
            ),
            Ok(add(Proto::Udp, "0.0.0.0", 53, None, 53)),
            "non-string addresses read as missing, as parson's dotget_string does"
        );
        assert_eq!(
            parse(r#"{"proto":"tcp","host_port":8080.0,"guest_port":8e1}"#),
            Ok(add(Proto::Tcp, "0.0.0.0", 8080, None, 80))
        );
        assert_eq!(
            parse(r#"{"proto":"tcp","host_port":1,"guest_port":65535}"#),
            Ok(add(Proto::Tcp, "0.0.0.0", 1, None, 65535))
        );
    }

    #[test]
    fn add_hostfwd_errors() {
        let err = |args: &str| {
            parse_request(format!(r#"{{"execute":"add_hostfwd"{args}}}"#).as_bytes())
                .unwrap_err()
                .to_string()
        };
        let proto = "bad request: add_hostfwd: bad arguments.proto";
        let host_addr = "bad request: add_hostfwd: bad arguments.host_addr";
        let host_port = "bad request: add_hostfwd: bad arguments.host_port";
        let guest_addr = "bad request: add_hostfwd: bad arguments.guest_addr";
        let guest_port = "bad request: add_hostfwd: bad arguments.guest_port";

        // Without arguments slirp4netns 1.2 segfaults; here it is the first field's error.
        assert_eq!(err(""), proto);
        assert_eq!(err(r#","arguments":"x""#), proto);
        assert_eq!(err(r#","arguments":{}"#), proto);
        for bad in [r#""TCP""#, r#""tcp4""#, r#""sctp""#, r#""""#, "1", "null"] {
            assert_eq!(
                err(&format!(r#","arguments":{{"proto":{bad}}}"#)),
                proto,
                "{bad}"
            );
        }
        for bad in [
            r#""010.0.0.1""#,
            r#""bad""#,
            r#""fe80::1%eth0""#,
            r#""1.2.3.4 ""#,
        ] {
            let args = format!(
                r#","arguments":{{"proto":"tcp","host_addr":{bad},"host_port":80,"guest_port":80}}"#
            );
            assert_eq!(err(&args), host_addr, "{bad}");
        }
        for bad in [
            "0",
            "-1",
            "65536",
            "83617",
            "8080.7",
            "-0.5",
            r#""8080""#,
            "true",
            "null",
            "1e400",
        ] {
            let args =
                format!(r#","arguments":{{"proto":"tcp","host_port":{bad},"guest_port":80}}"#);
            let expected = if bad == "1e400" {
                "bad request: cannot parse JSON"
            } else {
                host_port
            };
            assert_eq!(err(&args), expected, "{bad}");
        }
        assert_eq!(
            err(r#","arguments":{"proto":"tcp","guest_port":80}"#),
            host_port
        );
        for bad in [r#""10.0.2.100 ""#, r#""bad""#, r#""10.0.2""#] {
            let args = format!(
                r#","arguments":{{"proto":"tcp","host_port":80,"guest_addr":{bad},"guest_port":80}}"#
            );
            assert_eq!(err(&args), guest_addr, "{bad}");
        }
        for bad in ["0", "-1", "65617", "80.9", r#""80""#] {
            let args =
                format!(r#","arguments":{{"proto":"tcp","host_port":80,"guest_port":{bad}}}"#);
            assert_eq!(err(&args), guest_port, "{bad}");
        }
        assert_eq!(
            err(r#","arguments":{"proto":"tcp","host_port":80}"#),
            guest_port
        );
        // The first bad field in slirp4netns's order wins.
        assert_eq!(
            err(r#","arguments":{"proto":"tcp","host_port":0,"guest_addr":"bad"}"#),
            host_port
        );
        assert_eq!(
            err(r#","arguments":{"proto":"tcp","host_port":1,"guest_port":0,"guest_addr":"bad"}"#),
            guest_addr
        );
        assert_eq!(
            err(r#","arguments":{"proto":"tcp","host_addr":"bad","host_port":0,"guest_port":0}"#),
            host_addr
        );
        assert_eq!(
            err(r#","arguments":{"proto":"x","host_addr":"bad"}"#),
            proto
        );
    }

    #[test]
    fn remove_hostfwd_arguments() {
        let parse = |args: &str| {
            parse_request(format!(r#"{{"execute":"remove_hostfwd"{args}}}"#).as_bytes())
        };
        assert_eq!(
            parse(r#","arguments":{"id":3}"#),
            Ok(Request::RemoveHostfwd { id: 3 })
        );
        assert_eq!(
            parse(r#","arguments":{"id":3.0}"#),
            Ok(Request::RemoveHostfwd { id: 3 })
        );
        assert_eq!(
            parse(r#","arguments":{"id":18446744073709551615}"#),
            Ok(Request::RemoveHostfwd { id: u64::MAX })
        );
        assert_eq!(
            parse(r#","arguments":{"id":1.8446744073709552e19}"#),
            Err(ApiError::BadId),
            "2^64 as a float is out of range, not u64::MAX"
        );
        for bad in ["", r#","arguments":{}"#, r#","arguments":1"#] {
            assert_eq!(parse(bad), Err(ApiError::BadId), "{bad}");
        }
        for bad in ["0", "-1", "1.5", r#""2""#, "null", "1e300"] {
            assert_eq!(
                parse(&format!(r#","arguments":{{"id":{bad}}}"#)),
                Err(ApiError::BadId),
                "{bad}"
            );
        }
        assert_eq!(
            ApiError::BadId.to_string(),
            "bad request: remove_hostfwd: bad arguments.id"
        );
    }

    #[test]
    fn stats_extension() {
        assert_eq!(parse_request(br#"{"execute":"stats"}"#), Ok(Request::Stats));
        assert_eq!(
            stats_response(&[("tcp_flows", 3), ("drop_malformed", 0)]),
            br#"{"return":{"tcp_flows":3,"drop_malformed":0}}"#
        );
        assert_eq!(stats_response(&[]), br#"{"return":{}}"#);
        assert_eq!(stats_response(&[("a\"b", 1)]), br#"{"return":{"a\"b":1}}"#);
    }

    #[test]
    fn policy_requests() {
        assert_eq!(
            parse_request(br#"{"execute":"list_policy"}"#),
            Ok(Request::ListPolicy)
        );
        assert_eq!(
            parse_request(br#"{"execute":"set_policy","arguments":{"rules":["deny all"],"deny_private":true}}"#),
            Ok(Request::SetPolicy {
                rules: vec!["deny all".into()],
                deny_private: true
            })
        );
        for bad in [
            r#"{"execute":"set_policy"}"#,
            r#"{"execute":"set_policy","arguments":{}}"#,
            r#"{"execute":"set_policy","arguments":{"rules":"deny all"}}"#,
            r#"{"execute":"set_policy","arguments":{"rules":[1]}}"#,
            r#"{"execute":"set_policy","arguments":{"rules":[],"deny_private":"yes"}}"#,
        ] {
            assert_eq!(
                parse_request(bad.as_bytes()),
                Err(ApiError::BadRules),
                "{bad}"
            );
        }
        let entries = [PolicyEntry {
            action: "deny".into(),
            rule: "10.0.0.0/8".into(),
            hits: 2,
        }];
        assert_eq!(
            policy_response(&entries, 5),
            br#"{"return":{"rules":[{"action":"deny","rule":"10.0.0.0/8","hits":2}],"default_hits":5}}"#
        );
    }

    #[test]
    fn replies_are_byte_exact() {
        assert_eq!(add_response(1), br#"{"return":{"id":1}}"#);
        assert_eq!(
            add_response(u64::MAX),
            br#"{"return":{"id":18446744073709551615}}"#
        );
        assert_eq!(remove_response(), br#"{"return":{}}"#);
        assert_eq!(
            list_response(&[]),
            br#"{"return":{"entries":[]},"entries":[]}"#
        );
        let fwd = |proto, host: &str, hp, guest: &str, gp| HostFwd {
            proto,
            host_addr: host.parse().unwrap(),
            host_port: hp,
            guest_addr: Some(guest.parse().unwrap()),
            guest_port: gp,
        };
        let entries = [
            (1, fwd(Proto::Tcp, "0.0.0.0", 8080, "10.0.2.100", 80)),
            (3, fwd(Proto::Udp, "127.0.0.1", 5353, "10.0.2.100", 53)),
        ];
        let e1 = r#"{"id":1,"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80}"#;
        let e3 = r#"{"id":3,"proto":"udp","host_addr":"127.0.0.1","host_port":5353,"guest_addr":"10.0.2.100","guest_port":53}"#;
        assert_eq!(
            String::from_utf8(list_response(&entries)).unwrap(),
            format!(r#"{{"return":{{"entries":[{e1},{e3}]}},"entries":[{e1},{e3}]}}"#)
        );
        let v6 = [(2, fwd(Proto::Tcp, "::1", 80, "fd00::100", 80))];
        let v6_entry = r#"{"id":2,"proto":"tcp","host_addr":"::1","host_port":80,"guest_addr":"fd00::100","guest_port":80}"#;
        assert_eq!(
            String::from_utf8(list_response(&v6)).unwrap(),
            format!(r#"{{"return":{{"entries":[{v6_entry}]}},"entries":[{v6_entry}]}}"#)
        );
        let mut unresolved = entries[0].1;
        unresolved.guest_addr = None;
        assert!(
            String::from_utf8(list_response(&[(1, unresolved)]))
                .unwrap()
                .contains(r#""guest_addr":"","#)
        );
        // The list reply is valid JSON whichever way a client reads it.
        let reply: Value = serde_json::from_slice(&list_response(&entries)).unwrap();
        assert_eq!(reply["return"]["entries"][1]["id"], 3);
        assert_eq!(reply["entries"][0]["guest_port"], 80);
    }

    #[test]
    fn every_error_desc() {
        let all = [
            (ApiError::TooLarge, "bad request: too large message"),
            (ApiError::CannotParseJson, "bad request: cannot parse JSON"),
            (ApiError::NotAnObject, "bad request: json_object() failed"),
            (ApiError::NoExecute, "bad request: no execute found"),
            (ApiError::UnknownExecute, "bad request: unknown execute"),
            (
                ApiError::BadProto,
                "bad request: add_hostfwd: bad arguments.proto",
            ),
            (
                ApiError::BadHostAddr,
                "bad request: add_hostfwd: bad arguments.host_addr",
            ),
            (
                ApiError::BadHostPort,
                "bad request: add_hostfwd: bad arguments.host_port",
            ),
            (
                ApiError::BadGuestAddr,
                "bad request: add_hostfwd: bad arguments.guest_addr",
            ),
            (
                ApiError::BadGuestPort,
                "bad request: add_hostfwd: bad arguments.guest_port",
            ),
            (
                ApiError::AddFailed,
                "bad request: add_hostfwd: slirp_add_hostfwd failed",
            ),
            (
                ApiError::BadId,
                "bad request: remove_hostfwd: bad arguments.id",
            ),
            (
                ApiError::RemoveFailed,
                "bad request: remove_hostfwd: slirp_remove_hostfwd failed",
            ),
        ];
        for (e, text) in all {
            assert_eq!(e.to_string(), text);
            assert_eq!(
                String::from_utf8(error_response(&e)).unwrap(),
                format!(r#"{{"error":{{"desc":"{text}"}}}}"#)
            );
        }
    }

    #[test]
    fn completeness_lets_the_server_answer_early() {
        assert!(!request_is_complete(b""));
        assert!(!request_is_complete(b"  \n"));
        assert!(!request_is_complete(b"{\"execute\":\"add_hostfwd\",\"argu"));
        assert!(!request_is_complete(b"{\"execute\":\"list_hostfwd\""));
        assert!(request_is_complete(b"{\"execute\":\"list_hostfwd\"}"));
        assert!(request_is_complete(b"{\"execute\":\"list_hostfwd\"}\n"));
        assert!(
            request_is_complete(b"badjson"),
            "garbage is an answer already"
        );
        assert!(request_is_complete(b"{\"a\"\0"));
        assert!(request_is_complete(&[b' '; REQUEST_BUFFER_LEN]));
    }

    #[test]
    fn never_panics_on_odd_bytes() {
        let cases: [&[u8]; 16] = [
            b"{",
            b"}",
            b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
            b"\xff\xfe",
            b"\xef\xbb\xbf",
            b"{\"execute\":\"add_hostfwd\",\"arguments\":{\"proto\":\"tcp\",\"host_port\":1e308,\"guest_port\":-1e308}}",
            b"{\"execute\":\"add_hostfwd\",\"arguments\":{\"proto\":\"tcp\",\"host_port\":-0,\"guest_port\":-0.0}}",
            b"{\"execute\":\"add_hostfwd\",\"arguments\":{\"proto\":\"tcp\",\"host_port\":18446744073709551616,\"guest_port\":1}}",
            b"{\"execute\":\"remove_hostfwd\",\"arguments\":{\"id\":18446744073709551616}}",
            b"{\"execute\":\"remove_hostfwd\",\"arguments\":{\"id\":1.8446744073709552e19}}",
            b"{\"execute\":\"remove_hostfwd\",\"arguments\":{\"id\":-9223372036854775808}}",
            b"{\"execute\":\"add_hostfwd\",\"arguments\":[1,2]}",
            b"\"\\u0000\"",
            b"1",
            b"-",
            b"{\"execute\":[\"add_hostfwd\"]}",
        ];
        for case in cases {
            let _ = parse_request(case);
            let _ = request_is_complete(case);
            for cut in 0..case.len() {
                let _ = parse_request(&case[..cut]);
                let _ = request_is_complete(&case[..cut]);
            }
        }
        let deep = "[".repeat(REQUEST_BUFFER_LEN - 1);
        assert_eq!(
            parse_request(deep.as_bytes()),
            Err(ApiError::CannotParseJson)
        );
    }
}
