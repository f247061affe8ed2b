//! `page-server`: parses the command line and calls [`page_server::run`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    uffd_core::logging::init("info");
    match page_server::run(page_server::Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("page-server: {}", uffd_core::logging::error_chain(&err));
            std::process::ExitCode::FAILURE
        }
    }
}
