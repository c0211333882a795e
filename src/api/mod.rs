//! The slirp4netns API socket: port forwards added and removed at run time.
//!
//! RootlessKit (`--port-driver=slirp4netns`) and Podman (`port_handler=slirp4netns`) talk to
//! the UNIX stream socket given by `--api-socket`. The protocol is slirp4netns's, and tapir
//! keeps it byte for byte:
//!
//! - One request per connection. The client writes one JSON object (usually followed by a
//!   newline), then shuts down its write side; the server answers with one compact JSON object
//!   without a trailing newline, then shuts the connection down and closes it.
//! - A request of [`proto::REQUEST_BUFFER_LEN`] bytes or more is refused as too large.
//!   slirp4netns decides that from a single `read()` into a 4096-byte buffer; the server shell
//!   should read until end of file or until it holds that many bytes, so that a client writing
//!   in pieces is not cut short, and hand what it read to [`proto::parse_request`].
//! - Forward ids start at 1, grow by one per successful add, and are never reused, even after
//!   a remove. RootlessKit keeps its own map keyed by these ids.
//! - Errors are `{"error":{"desc":"..."}}` with slirp4netns's exact descriptions; clients only
//!   look for the `error` key, but tests grep the descriptions.
//!
//! [`proto`] holds the sans-I/O half: bytes in, a typed [`proto::Request`] or an
//! [`proto::ApiError`] out, and the reply bytes for each outcome. The forward table and the
//! socket belong to the caller.

pub mod proto;
pub mod server;
