//! tapir: networking for rootless (and rootful) Linux containers.
//!
//! The rootless path moves a guest's Ethernet frames between a TAP device inside the guest's
//! network namespace and ordinary host sockets, terminating every flow in a smoltcp stack.
//! See `README.md` for the user's view and each module's `//!` header for its theory.

pub mod api;
pub mod bench;
pub mod busy_poll;
pub mod cli;
pub mod cni;
pub mod commands;
pub mod config;
pub mod error;
pub mod event_loop;
pub mod flow;
pub mod forward;
pub mod kernel;
pub mod namespace;
pub mod netlink;
pub mod service;
pub mod stack;
pub mod stats;
pub mod sys;
