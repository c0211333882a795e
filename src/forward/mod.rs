//! (being written)
pub mod spec;
