//! The subcommands, each a thin shell over the library.
pub mod run;
pub mod slirp4netns_args;
