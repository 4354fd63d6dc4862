//! `keel`: the benchmark workload (`keel bench`, the main job) and the operator's tools
//! (`recover`, `verify`, `repair`, `inspect`, `dump`). docs/cli.md documents the command names,
//! flags, exit codes and JSON keys.
//!
//! Exit codes: 0 ok; 1 error; 2 usage (clap); 3 torn tail only (verify); 4 corruption refused.
//! Logs go to stderr through `tracing` (`-v`/`-q`, `RUST_LOG`; default `warn`: repairs and refusals).

#![deny(missing_docs)]

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(error) => cli::usage_error(error),
    };
    cli::init_logging(&args);
    let json = args.json();
    match cli::run(args) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            cli::print_error(&error, json);
            ExitCode::from(error.exit_code())
        }
    }
}
