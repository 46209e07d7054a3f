//! The `resurgo` command.

mod plan_report;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

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
    /// Run the operator: reconcile RecoveryPlans until SIGTERM or Ctrl-C. Uses the in-cluster
    /// service account, or KUBECONFIG outside a cluster; RUST_LOG sets the log levels.
    Run {
        /// How to write log lines.
        #[arg(long, value_enum, env = "RESURGO_LOG_FORMAT", default_value = "text")]
        log_format: resurgo::operator::LogFormat,
        /// Reconcile only the Resurgo objects matching this label selector, such as
        /// `!resurgo.dev/test-operator` or `team=platform`, so that several operators can
        /// share a cluster. Default: all of them.
        #[arg(long, value_name = "LABEL_SELECTOR", env = "RESURGO_SELECTOR")]
        selector: Option<String>,
        /// Where to serve /metrics, /healthz and /readyz (port 0: any free port, logged).
        #[arg(
            long,
            value_name = "ADDR",
            env = "RESURGO_METRICS_ADDR",
            default_value = "0.0.0.0:8080"
        )]
        metrics_addr: std::net::SocketAddr,
        /// Run the controllers only while holding a coordination.k8s.io Lease, so that of
        /// several replicas exactly one acts. Off by default; the Helm chart turns it on.
        #[arg(long, env = "RESURGO_LEADER_ELECTION")]
        leader_election: bool,
        /// The name of that Lease.
        #[arg(
            long,
            value_name = "NAME",
            env = "RESURGO_LEASE_NAME",
            default_value = "resurgo-leader"
        )]
        lease_name: String,
        /// The namespace of that Lease. Default: the pod's own (POD_NAMESPACE), else the
        /// kubeconfig's namespace.
        #[arg(long, value_name = "NAMESPACE", env = "POD_NAMESPACE")]
        lease_namespace: Option<String>,
        /// How long a leader that stopped renewing keeps the Lease, in seconds: the longest
        /// a standby waits before it takes over from a replica that died (at least 3).
        #[arg(
            long,
            value_name = "SECONDS",
            env = "RESURGO_LEASE_DURATION",
            default_value_t = 15
        )]
        lease_duration: u64,
    },
    /// Print the CustomResourceDefinitions of every Resurgo kind as YAML.
    Crd {
        /// Write one file per kind into this directory instead of printing a stream.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
    /// Check RecoveryPlans offline and print the recovery order, the waves, the critical path
    /// and every error. Fails when a plan has errors or when no plan is found.
    Plan {
        /// A YAML file, or a directory searched recursively for *.yaml and *.yml files.
        #[arg(short = 'f', long = "filename", value_name = "PATH")]
        path: PathBuf,
    },
    /// Show where the recovery stands: each plan's tiers with progress bars, what every
    /// service is doing or waiting for, and time against each tier's RTO.
    Status(resurgo::status_view::StatusArgs),
    /// Make an age key pair for encrypting backups, off the cluster: the identity (private
    /// key) goes to a new file readable only by you, the recipient (public key, for
    /// `encryption.recipients`) is printed.
    Keygen {
        /// The file to write the identity to; it must not exist yet.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            log_format,
            selector,
            metrics_addr,
            leader_election,
            lease_name,
            lease_namespace,
            lease_duration,
        } => resurgo::operator::run(resurgo::operator::Options {
            log_format,
            selector: selector.filter(|s| !s.is_empty()),
            metrics_addr,
            leader_election: leader_election.then(|| resurgo::operator::LeaseOptions {
                name: lease_name,
                namespace: lease_namespace.filter(|n| !n.is_empty()),
                duration: std::time::Duration::from_secs(lease_duration.max(3)),
            }),
        })
        .map_err(CliError::Operator),
        Command::Crd { out_dir } => crd(out_dir),
        Command::Plan { path } => plan(&path),
        Command::Status(args) => resurgo::status_view::run(args).map_err(CliError::Status),
        Command::Keygen { output } => keygen(&output),
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
    #[error(transparent)]
    Plan(#[from] plan_report::CheckFailed),
    #[error(transparent)]
    Operator(resurgo::operator::StartError),
    #[error(transparent)]
    Status(resurgo::status_view::StatusError),
}

fn keygen(output: &Path) -> Result<(), CliError> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let (identity, recipient) = resurgo::backup::archive::generate_identity();
    let write = |source| CliError::Write {
        path: output.to_owned(),
        source,
    };
    // Created with 0600 and never overwritten: an identity lost to an overwrite loses
    // every backup made to it.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(output)
        .map_err(write)?;
    writeln!(file, "# public key: {recipient}\n{identity}").map_err(write)?;
    println!("{recipient}");
    Ok(())
}

fn plan(path: &Path) -> Result<(), CliError> {
    let report = plan_report::check(path);
    print!("{}", report.render());
    Ok(report.verdict()?)
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
