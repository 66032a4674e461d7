//! The `strangle` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

// Pingora allocates and frees buffers on every request; glibc's malloc spent about a sixth of
// the proxy's CPU time on that in the load benchmark (perf), mimalloc far less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use strangle::cli::{self, AdminTarget};

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

#[derive(Args, Clone)]
struct Admin {
    /// The admin API of the running proxy.
    #[arg(
        long = "admin",
        env = "STRANGLE_ADMIN",
        default_value = "http://127.0.0.1:9901"
    )]
    url: String,
    /// The admin token, if the proxy has one.
    #[arg(long, env = "STRANGLE_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl From<Admin> for AdminTarget {
    fn from(a: Admin) -> AdminTarget {
        AdminTarget {
            url: a.url,
            token: a.token,
        }
    }
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
        /// Take the listening sockets of the strangle running on this config (send it SIGQUIT
        /// within 5 seconds): a binary upgrade or restart that refuses no connection.
        #[arg(long)]
        upgrade: bool,
        /// The Unix socket the sockets are handed over on (default: in `/tmp/strangle-UID/`,
        /// named after the config's path; the running process and the new one must agree).
        #[arg(long, env = "STRANGLE_UPGRADE_SOCKET", value_name = "PATH")]
        upgrade_socket: Option<PathBuf>,
    },
    /// Validate config files; print every problem; exit 1 on any.
    Check {
        #[arg(default_value = "config/strangle.toml")]
        files: Vec<PathBuf>,
    },
    /// Set the share of a route's users on the new side: `strangle shift /bookings 25%`.
    Shift {
        /// The route's path (`/bookings`) or id (`bookings`).
        route: String,
        /// `25%`, `25` or `0.5%` (two decimals at most).
        #[arg(allow_hyphen_values = true)]
        percent: String,
        /// Edit this config file directly instead of asking the running proxy.
        #[arg(long)]
        file: Option<PathBuf>,
        #[command(flatten)]
        admin: Admin,
    },
    /// Start a working migration on loopback: a demo monolith, a new service and the proxy.
    Demo {
        /// Stop after this many seconds instead of at Ctrl-C.
        #[arg(long = "for", value_name = "SECONDS")]
        run_for: Option<u64>,
    },
    /// What the monolith still serves, by path template, largest first, each with a route entry
    /// to paste into the config.
    Inventory {
        /// Print JSON instead of a list.
        #[arg(long)]
        json: bool,
        /// How many templates, at most.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        admin: Admin,
    },
    /// Shifts and reloads, newest last: every route's, or ROUTE's (its shifts, and reloads).
    History {
        /// A route's path (`/bookings`) or id.
        route: Option<String>,
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
        /// How many entries, at most.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        admin: Admin,
    },
    /// A shadowing route's results: how many copies matched, and its last mismatches with the
    /// JSON paths that differed.
    Diffs {
        /// The route's path (`/bookings`) or id.
        route: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: Admin,
    },
    /// A route's progressive rollout: `status` (where it is, its gates, why it last moved), or
    /// `pause` (stop advancing; a failing gate still rolls back), `resume`, `promote` (to the
    /// last step at once) and `abort` (back to 0%).
    Rollout {
        /// The route's path (`/bookings`) or id.
        route: String,
        #[arg(value_parser = ["status", "pause", "resume", "promote", "abort"])]
        action: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: Admin,
    },
    /// Sends the requests a capture spool kept (`capture = { ... }`, one JSON record a line)
    /// again to one side of their routes, through the proxy, and prints how each went.
    Replay {
        /// The spool file (`capture.jsonl`, or a copy).
        file: PathBuf,
        /// The side to send them to.
        #[arg(long, value_parser = ["legacy", "new"])]
        to: String,
        /// At most this many requests a second.
        #[arg(long)]
        rate: Option<f64>,
        /// A header to send instead of the record's (`--header "authorization: Bearer ..."`:
        /// kept credentials are redacted); may be repeated.
        #[arg(long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
        #[command(flatten)]
        admin: Admin,
    },
    /// The migration at a glance: per route its shift, traffic per side, errors and latency.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Refresh every 2 seconds (or every N seconds with --watch=N).
        #[arg(long, num_args = 0..=1, default_missing_value = "2", value_name = "SECONDS")]
        watch: Option<u64>,
        #[command(flatten)]
        admin: Admin,
    },
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn run_client<F, T>(f: impl FnOnce() -> F) -> anyhow::Result<T>
where
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    quiet_on_closed_stdout();
    runtime()?.block_on(f())
}

/// A client command whose reader went away (`strangle diffs ROUTE | head`) ends as a program
/// killed by SIGPIPE would (exit 141), not with a panic and a backtrace: Rust ignores SIGPIPE,
/// so `println!` finds the pipe closed and panics.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let text = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if text.contains("failed printing to stdout") && text.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            config,
            upgrade,
            upgrade_socket,
        } => strangle::server::serve(config, upgrade, upgrade_socket),
        Command::Check { files } => return check(&files),
        Command::Shift {
            route,
            percent,
            file: Some(file),
            ..
        } => cli::shift_file(&file, &route, &percent).map(|msg| println!("{msg}")),
        Command::Shift {
            route,
            percent,
            file: None,
            admin,
        } => run_client(|| async move { cli::shift(&admin.into(), &route, &percent).await })
            .map(|msg| println!("{msg}")),
        Command::Demo { run_for } => {
            run_client(
                || async move { strangle::demo::run(run_for.map(Duration::from_secs)).await },
            )
        }
        Command::Inventory { json, limit, admin } => {
            run_client(|| async move { cli::inventory(&admin.into(), limit, json).await })
        }
        Command::History {
            route,
            json,
            limit,
            admin,
        } => run_client(|| async move {
            cli::history(&admin.into(), route.as_deref(), limit, json).await
        }),
        Command::Rollout {
            route,
            action,
            json,
            admin,
        } => run_client(|| async move { cli::rollout(&admin.into(), &route, &action, json).await }),
        Command::Replay {
            file,
            to,
            rate,
            headers,
            admin,
        } => run_client(
            || async move { cli::replay(&admin.into(), &file, &to, rate, &headers).await },
        ),
        Command::Diffs { route, json, admin } => {
            run_client(|| async move { cli::diffs(&admin.into(), &route, json).await })
        }
        Command::Status { json, watch, admin } => run_client(|| async move {
            cli::status(
                &admin.into(),
                json,
                watch.map(|s| Duration::from_secs(s.max(1))),
            )
            .await
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strangle: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(files: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for file in files {
        match strangle::config::load(file) {
            Ok(config) => {
                for w in &config.warnings {
                    eprintln!("{}", w.as_warning());
                }
                println!(
                    "{}: ok ({} routes, {} upstreams, {} warning(s))",
                    file.display(),
                    config.routes.len(),
                    config.upstreams.len(),
                    config.warnings.len()
                )
            }
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
