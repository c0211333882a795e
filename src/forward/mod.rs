//! Port forwards: `-p` brings host clients into the guest (`spec`), `-T` takes the guest's
//! loopback clients to the host (`to_host`).
pub mod spec;
pub mod to_host;
