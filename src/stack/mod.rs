//! (being written)
pub mod device;
pub mod frame;
pub mod pcap;
