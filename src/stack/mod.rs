//! (being written)
pub mod device;
pub mod pcap;
