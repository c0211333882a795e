//! Virtual services the guest talks to: the DNS forwarder.
pub mod dns;
