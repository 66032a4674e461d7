//! The `strangle` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "strangle",
    version,
    about = "An edge proxy for strangler-fig migrations"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// The config file.
        #[arg(
            short,
            long,
            env = "STRANGLE_CONFIG",
            default_value = "config/strangle.toml"
        )]
        config: PathBuf,
    },
    /// Validate config files; print every problem; exit 1 on any.
    Check {
        #[arg(default_value = "config/strangle.toml")]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => match strangle::server::serve(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Check { files } => {
            let mut failed = false;
            for file in &files {
                match strangle::config::load(file) {
                    Ok(config) => println!(
                        "{}: ok ({} routes, {} upstreams)",
                        file.display(),
                        config.routes.len(),
                        config.upstreams.len()
                    ),
                    Err(errors) => {
                        failed = true;
                        eprintln!("{errors}");
                        eprintln!("{}: {} error(s)", file.display(), errors.0.len());
                    }
                }
            }
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}
