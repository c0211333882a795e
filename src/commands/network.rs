//! `tapir network prune`: the cleanup for bridge-network runs that were killed.

use crate::cli::NetworkCommand;
use crate::error::Error;
use crate::kernel;

pub fn run(cmd: NetworkCommand) -> Result<i32, Error> {
    match cmd {
        NetworkCommand::Prune { state_dir } => {
            if !nix::unistd::geteuid().is_root() {
                return Err(Error::NeedsRoot(
                    "tapir network prune needs root (it removes bridges, veths and nftables rules)"
                        .into(),
                ));
            }
            let dir = state_dir.unwrap_or_else(kernel::default_state_dir);
            let owners = kernel::prune(&dir)?;
            for owner in owners {
                println!("removed the stale lease of {owner}");
            }
            Ok(0)
        }
    }
}
