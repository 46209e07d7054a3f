//! The `resurgo` command.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use resurgo::crd_files;

/// Declarative incident recovery for Kubernetes.
#[derive(Parser)]
#[command(name = "resurgo", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions of every Resurgo kind as YAML.
    Crd {
        /// Write one file per kind into this directory instead of printing a stream.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd { out_dir } => crd(out_dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("resurgo: {error}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("rendering the CRDs: {0}")]
    Render(#[from] resurgo::yaml::YamlError),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn crd(out_dir: Option<PathBuf>) -> Result<(), CliError> {
    match out_dir {
        None => {
            print!("{}", crd_files::render_stream()?);
            Ok(())
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir).map_err(|source| CliError::Write {
                path: dir.clone(),
                source,
            })?;
            for file in crd_files::render()? {
                let path = dir.join(&file.file_name);
                std::fs::write(&path, file.contents)
                    .map_err(|source| CliError::Write { path, source })?;
            }
            Ok(())
        }
    }
}
