use std::ffi::OsString;
use std::path::Path;

use tapir::cli::{Cli, Command};

// Flow rings as bare mappings: an idle flow costs no ring page (see sys::alloc).
#[global_allocator]
static ALLOCATOR: tapir::sys::alloc::MappedLarge = tapir::sys::alloc::MappedLarge;

fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    // Installed (or symlinked) as `slirp4netns`, or run as `tapir slirp4netns ...`: take
    // slirp4netns's command line as it is, so its clients need not know about tapir.
    let invoked_as = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("tapir");
    if invoked_as == "slirp4netns" {
        init_logging(0);
        std::process::exit(tapir::commands::slirp4netns::main(&args[1..]));
    }
    if args.get(1).is_some_and(|a| a == "slirp4netns") {
        init_logging(0);
        std::process::exit(tapir::commands::slirp4netns::main(&args[2..]));
    }

    // Installed (or symlinked) as `tapir-cni` in a runtime's CNI bin directory: a CNI plugin,
    // driven by CNI_* variables and stdin, with no arguments of its own.
    if invoked_as == "tapir-cni" {
        init_logging(0);
        std::process::exit(tapir::commands::cni::main());
    }

    let cli = Cli::parse_ordered();
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Run(args) => tapir::commands::run::run(*args),
        Command::Network(cmd) => tapir::commands::network::run(cmd),
        Command::Cni => Ok(tapir::commands::cni::main()),
        Command::Bench(args) => tapir::commands::bench::bench(args),
        Command::BenchClient(args) => tapir::commands::bench::client(args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("tapir: {}", e.sentence());
            std::process::exit(e.exit_code());
        }
    }
}

/// Logs on stderr: `-v` counts, `RUST_LOG` overrides.
fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_target(false)
        .init();
}
