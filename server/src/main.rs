//! The `ringlog` broker binary: parse flags, set up logging, run until SIGTERM.

use clap::Parser;
use ringlog_server::alloc::BrokerAlloc;
use ringlog_server::config::{Config, Flags};

#[global_allocator]
static ALLOC: BrokerAlloc = BrokerAlloc;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    ringlog_server::alloc::tune_system_allocator();
    let config = match Config::resolve(Flags::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringlog: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = ringlog_server::shard::runtime::run(config) {
        tracing::error!(error = %e, "ringlog failed");
        std::process::exit(1);
    }
}
