//! The `emrflow` binary: parses the command line, sets up logging and progress output, and hands
//! each subcommand to a library crate. It holds no pipeline, training or consensus logic; that
//! lives in `pipeline`, `ml`, `ledger`, `scheduler` and `executors`.

mod commands;

use std::process::ExitCode;

use clap::Parser;

use commands::{Cli, ExitStatus};

// Query execution allocates and frees large buffers for every batch; the system allocator hands
// them back to the kernel and faults fresh zeroed pages in again, which showed as a tenth of
// training time in `perf`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    commands::init_tracing(cli.global.verbose, cli.command.is_server());
    // Plans are decoded and planned recursively on the worker threads (a scheduler receives a
    // client's whole plan); a FHIR export's flattening, with a pivot expression per code,
    // overflowed the default 2 MiB stacks. The space is reserved, not committed.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(32 << 20)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            commands::report_error(
                &anyhow::Error::new(e).context("cannot start the async runtime"),
            );
            return ExitStatus::Error.into();
        }
    };
    let status = runtime.block_on(commands::dispatch(cli));
    match status {
        Ok(status) => status.into(),
        Err(e) => {
            commands::report_error(&e);
            ExitStatus::Error.into()
        }
    }
}
