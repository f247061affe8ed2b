//! `hugepage`: parses the command line and calls the library ([`hugepage::cli::run`]).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    uffd_core::logging::init("warn");
    hugepage::cli::run(hugepage::cli::Cli::parse())
}
