//! The command line of the `hugepage` binary: clap definitions and [`run`], which only calls
//! the library.

use clap::{Parser, Subcommand};
use uffd_core::units::{self, ParseError};

use crate::backing::{Backing, HugetlbPlacement};
use crate::bench::{self, BenchConfig, BenchError};
use crate::chunks::Order;
use crate::pool::{self, PoolError};
use crate::status;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// `setup` needs root.
    #[error("setting the pool needs root; run: {hint}")]
    NotRoot {
        /// The command that sets the pool as root.
        hint: String,
    },
    /// `setup` failed.
    #[error("setting the {size} pool: {source}")]
    Setup {
        /// The pool, e.g. `2M`.
        size: String,
        /// Why.
        source: PoolError,
    },
    /// `bench` failed.
    #[error("bench of {backing}: {source}")]
    Bench {
        /// The backing benchmarked.
        backing: Backing,
        /// Why.
        source: BenchError,
    },
    /// The JSON could not be written.
    #[error("writing JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// The huge-page assembler: status of the machine, pool setup, and a server-less bench.
#[derive(Debug, Parser)]
#[command(name = "hugepage", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Hugetlb pools, THP mode, userfaultfd access and features, and what to run to fix them.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Sets a hugetlb pool size (needs root) and checks the kernel found the pages.
    Setup {
        /// Pages the pool should hold.
        #[arg(long)]
        pages: u64,
        /// Huge page size: 2M or 1G.
        #[arg(long, default_value = "2M", value_parser = parse_huge_size)]
        size: u64,
    },
    /// Assembles huge pages from chunks of a pattern, places them, verifies every byte.
    Bench {
        /// anon, thp, hugetlb-2m or hugetlb-1g.
        #[arg(long, default_value = "thp")]
        backing: Backing,
        /// hugetlb only: copy (one huge COPY) or continue (alias mapping + CONTINUE).
        #[arg(long, default_value = "copy")]
        placement: HugetlbPlacement,
        /// Chunk size (4 KiB multiple), e.g. 64KiB, 1M.
        #[arg(long, default_value = "64KiB", value_parser = parse_chunk)]
        chunk: u64,
        /// seq, shuffled or preempted (urgent pages placed inside units first).
        #[arg(long, default_value = "shuffled")]
        order: Order,
        /// Units to assemble (default: 64 x 2M, 2 x 1G, 1024 x 4K for anon).
        #[arg(long)]
        pages: Option<u64>,
        /// Units whose chunks are interleaved.
        #[arg(long, default_value_t = 4)]
        window: usize,
        /// Pattern and order seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Urgent 4 KiB pages per THP unit with --order preempted.
        #[arg(long, default_value_t = 4)]
        urgent: usize,
        /// Never grow the hugetlb pool, even as root.
        #[arg(long)]
        no_grow: bool,
        /// Rounds on fresh regions; the last is reported (the first warms up VM memory).
        #[arg(long, default_value_t = 2)]
        rounds: u32,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// A chunk: a non-zero multiple of 4 KiB (`64KiB`, `64K` and `1M` are powers of 1024 here).
fn parse_chunk(text: &str) -> Result<u64, ParseError> {
    units::parse_multiple(text, 4096, None)
}

/// A huge page size: 2M or 1G.
fn parse_huge_size(text: &str) -> Result<u64, ParseError> {
    match units::parse_bytes(text)? {
        size @ (0x20_0000 | 0x4000_0000) => Ok(size),
        _ => Err(ParseError::NotOneOf {
            input: text.to_owned(),
            allowed: "a huge page size: 2M or 1G",
        }),
    }
}

/// Runs one command, printing to stdout.
pub fn run(cli: Cli) -> Result<(), CommandError> {
    match cli.command {
        Command::Status { json } => {
            let s = status::status();
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{s}");
            }
        }
        Command::Setup { pages, size } => {
            if !pool::is_root() {
                return Err(CommandError::NotRoot {
                    hint: pool::fix_hint(size, pages),
                });
            }
            let p = status::setup(size, pages).map_err(|source| CommandError::Setup {
                size: pool::size_name(size),
                source,
            })?;
            println!(
                "{} pool: total {} free {} reserved {} ({})",
                p.size, p.total, p.free, p.reserved, p.sysctl
            );
        }
        Command::Bench {
            backing,
            placement,
            chunk,
            order,
            pages,
            window,
            seed,
            urgent,
            no_grow,
            rounds,
            json,
        } => {
            let config = BenchConfig {
                backing,
                placement,
                chunk,
                order,
                units: pages.unwrap_or_else(|| bench::default_units(backing)),
                window,
                seed,
                urgent_per_unit: urgent,
                may_grow_pool: !no_grow,
                rounds,
            };
            let report = bench::run(&config, &mut |note| eprintln!("note: {note}"))
                .map_err(|source| CommandError::Bench { backing, source })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{report}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_chunk("64KiB"), Ok(65536));
        assert_eq!(parse_chunk("64K"), Ok(65536));
        assert_eq!(parse_chunk("1M"), Ok(1 << 20));
        assert!(parse_chunk("1000").is_err());
        assert_eq!(parse_huge_size("1G"), Ok(1 << 30));
        assert!(parse_huge_size("4M").is_err());
    }

    #[test]
    fn arguments_parse() {
        let cli = Cli::try_parse_from([
            "hugepage",
            "bench",
            "--backing",
            "hugetlb-1g",
            "--placement",
            "continue",
            "--chunk",
            "256KiB",
            "--order",
            "preempted",
            "--pages",
            "1",
            "--json",
        ])
        .expect("valid");
        match cli.command {
            Command::Bench {
                backing,
                placement,
                chunk,
                order,
                pages,
                json,
                ..
            } => {
                assert_eq!(backing, Backing::Hugetlb1G);
                assert_eq!(placement, HugetlbPlacement::Continue);
                assert_eq!(
                    (chunk, order, pages, json),
                    (256 << 10, Order::Preempted, Some(1), true)
                );
            }
            other => panic!("parsed as {other:?}"),
        }
        assert!(Cli::try_parse_from(["hugepage", "bench", "--backing", "hugetlb"]).is_err());
    }
}
