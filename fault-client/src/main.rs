//! `fault-client`: parses the command line and calls [`fault_client::run`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    uffd_core::logging::init("warn");
    match fault_client::run(fault_client::Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("fault-client: {}", uffd_core::logging::error_chain(&err));
            // Exit at once: a workload thread may still be blocked on a fault that will never
            // be resolved; exiting kills it before its userfaultfd is closed.
            std::process::exit(1)
        }
    }
}
