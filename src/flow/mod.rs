//! (being written)
pub mod addr;
pub mod icmp;
pub mod policy;
pub mod splice;
pub mod tcp;
pub mod udp;
