//! `fault-client`: parses the command line and calls [`fault_client::run`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match fault_client::run(fault_client::Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("fault-client: {err:#}");
            // Exit at once: a workload thread may still be blocked on a fault that will never
            // be resolved; exiting kills it before its userfaultfd is closed.
            std::process::exit(1)
        }
    }
}
