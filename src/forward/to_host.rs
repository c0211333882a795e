//! The `-T` option (pasta's `--tcp-ns`): `GUEST_PORT[:HOST_PORT]`.
//!
//! tapir listens on the guest's 127.0.0.1 at `GUEST_PORT` and joins each client there to the
//! host's 127.0.0.1 at `HOST_PORT` (the same port when omitted), spliced with no copy through
//! tapir (`flow::splice`). TCP only, IPv4 only, one port per value: ranges are refused with
//! an error naming the text rather than guessed at.

use std::fmt;
use std::str::FromStr;

use super::spec::parse_port;

/// One port on the guest's loopback forwarded to one port on the host's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToHost {
    /// Where tapir listens, on the guest's 127.0.0.1.
    pub guest_port: u16,
    /// Where clients go, on the host's 127.0.0.1.
    pub host_port: u16,
}

/// A `-T` value that cannot be used; each message names the whole value and the bad part.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ToHostError {
    #[error("-T {0:?}: expected GUEST_PORT[:HOST_PORT], each between 1 and 65535")]
    Syntax(String),
    #[error("-T {spec:?}: guest port {port} is not between 1 and 65535")]
    GuestPort { spec: String, port: String },
    #[error("-T {spec:?}: host port {port} is not between 1 and 65535")]
    HostPort { spec: String, port: String },
}

impl FromStr for ToHost {
    type Err = ToHostError;

    fn from_str(spec: &str) -> Result<Self, ToHostError> {
        let (guest, host) = match spec.split_once(':') {
            None => (spec, None),
            Some((_, host)) if host.contains(':') => {
                return Err(ToHostError::Syntax(spec.to_string()));
            }
            Some((guest, host)) => (guest, Some(host)),
        };
        if guest.is_empty() || host == Some("") {
            return Err(ToHostError::Syntax(spec.to_string()));
        }
        let guest_port = parse_port(guest).ok_or_else(|| ToHostError::GuestPort {
            spec: spec.to_string(),
            port: guest.to_string(),
        })?;
        let host_port = match host {
            None => guest_port,
            Some(host) => parse_port(host).ok_or_else(|| ToHostError::HostPort {
                spec: spec.to_string(),
                port: host.to_string(),
            })?,
        };
        Ok(ToHost {
            guest_port,
            host_port,
        })
    }
}

impl fmt::Display for ToHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.guest_port, self.host_port)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn parse(s: &str) -> Result<ToHost, ToHostError> {
        s.parse()
    }

    fn to_host(guest_port: u16, host_port: u16) -> ToHost {
        ToHost {
            guest_port,
            host_port,
        }
    }

    #[test]
    fn one_port_is_the_same_on_both_sides() {
        assert_eq!(parse("5432"), Ok(to_host(5432, 5432)));
        assert_eq!(parse("8080:80"), Ok(to_host(8080, 80)));
        assert_eq!(parse("1:65535"), Ok(to_host(1, 65535)));
    }

    #[test]
    fn display_parses_back() {
        for spec in ["5432", "8080:80"] {
            let parsed = parse(spec).unwrap();
            assert_eq!(parse(&parsed.to_string()), Ok(parsed));
        }
    }

    #[test]
    fn bad_values_name_the_text_and_the_part() {
        let cases = [
            (
                "",
                "-T \"\": expected GUEST_PORT[:HOST_PORT], each between 1 and 65535",
            ),
            (
                ":80",
                "-T \":80\": expected GUEST_PORT[:HOST_PORT], each between 1 and 65535",
            ),
            (
                "80:",
                "-T \"80:\": expected GUEST_PORT[:HOST_PORT], each between 1 and 65535",
            ),
            (
                "1:2:3",
                "-T \"1:2:3\": expected GUEST_PORT[:HOST_PORT], each between 1 and 65535",
            ),
            ("0", "-T \"0\": guest port 0 is not between 1 and 65535"),
            (
                "8000-8010",
                "-T \"8000-8010\": guest port 8000-8010 is not between 1 and 65535",
            ),
            (
                "80:65536",
                "-T \"80:65536\": host port 65536 is not between 1 and 65535",
            ),
            (
                "80:+8",
                "-T \"80:+8\": host port +8 is not between 1 and 65535",
            ),
        ];
        for (spec, message) in cases {
            assert_eq!(parse(spec).unwrap_err().to_string(), message, "{spec:?}");
        }
    }
}
