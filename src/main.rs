//! The `copycat` binary: parse the command line, build a runtime, run the command.

use std::process::ExitCode;

fn main() -> ExitCode {
    // kube, reqwest and the AWS SDK all use rustls; exactly one process-wide crypto provider must be
    // installed before any of them builds a TLS config, or rustls panics at the first connection.
    if rustls::crypto::ring::default_provider().install_default().is_err() {
        eprintln!("copycat: a TLS crypto provider was already installed");
    }
    let cli = copycat::cli::Cli::parse_go_style();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("copycat: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(copycat::app::main(cli))
}
