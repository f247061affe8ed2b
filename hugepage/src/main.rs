//! `hugepage`: parses the command line and calls the library ([`hugepage::cli::run`]).

use clap::Parser;

fn main() -> std::process::ExitCode {
    uffd_core::logging::init("warn");
    match hugepage::cli::run(hugepage::cli::Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hugepage: {}", uffd_core::logging::error_chain(&err));
            std::process::ExitCode::FAILURE
        }
    }
}
