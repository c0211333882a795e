//! Virtual services the guest talks to: the DNS forwarder and the DHCP server.
pub mod dhcp;
pub mod dns;
