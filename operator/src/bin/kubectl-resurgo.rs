//! `kubectl resurgo`: the kubectl plugin. kubectl runs `kubectl-resurgo` from PATH with the
//! words after `resurgo`, so `kubectl resurgo status lazio-health --watch` lands here.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Resurgo as a kubectl plugin.
#[derive(Parser)]
#[command(name = "kubectl resurgo", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show where the recovery stands (the same as `resurgo status`).
    Status(resurgo::status_view::StatusArgs),
}

fn main() -> ExitCode {
    let Command::Status(args) = Cli::parse().command;
    match resurgo::status_view::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kubectl resurgo: {error}");
            ExitCode::FAILURE
        }
    }
}
