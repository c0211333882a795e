//! Virtual services the guest talks to: the DNS forwarder, the DHCP server and the IPv6
//! router advertisement timetable.
pub mod dhcp;
pub mod dns;
pub mod ra;
