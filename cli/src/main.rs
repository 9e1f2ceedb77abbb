//! `gcf`: the cf-style command line for GRouter's admin API.
//!
//! # Layout
//!
//! ```text
//!  main (flags, exit codes) ──► commands ──► api (HTTP) ──► admin API of a node
//!                                   │  └──► table (text)
//!                                   └─────► target (config.toml)
//! ```
//!
//! - `main` (this file): parses flags with clap, finds the config path, dispatches to
//!   [`commands`], prints errors as `FAILED` plus the message, maps errors to exit codes.
//! - [`commands`]: one function per command; pure `*_rows` helpers build each table.
//! - [`api`]: the blocking HTTP client and the lenient response structs.
//! - [`table`]: aligned tables, `key: value` blocks, JSON re-indentation; no I/O.
//! - [`target`]: the saved API URL and token (`$GCF_HOME` or `~/.config/gcf`).
//!
//! Must never: hold logic a test would need (that lives in the modules), or print the
//! token.
//!
//! Exit codes (CONTRACT.md): 0 ok, 1 runtime failure (API, network, app not found),
//! 2 usage or config error (clap's own usage errors exit 2 as well).

#![forbid(unsafe_code)]

mod api;
mod commands;
mod table;
mod target;

use std::fmt;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// An error the user can fix by changing flags or the config: exits 2, not 1.
#[derive(Debug)]
pub struct UsageError(String);

impl UsageError {
    /// A usage error with `message` (which should name the flag or file at fault).
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The cf-style command line for GRouter, the global router for multi-datacentre
/// Cloud Foundry.
#[derive(Debug, Parser)]
#[command(name = "gcf", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Set or view the target admin API (saved in $GCF_HOME or ~/.config/gcf).
    Api {
        /// Admin API URL of any GRouter node, e.g. http://127.0.0.1:9090.
        url: Option<String>,
        /// File holding the admin bearer token (the node's admin.token_file).
        #[arg(long, value_name = "FILE", requires = "url")]
        token_file: Option<PathBuf>,
    },
    /// Show the targeted node: site, sync state, routes, peers, uptime.
    Status {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the sites of the mesh with their health and nodes.
    Sites {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List routes across all sites.
    Routes {
        /// Only routes served at this site.
        #[arg(long, value_name = "SITE")]
        site: Option<String>,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List apps across all sites.
    Apps {
        /// Only apps running at this site.
        #[arg(long, value_name = "SITE")]
        site: Option<String>,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one app (by name, ORG/SPACE/NAME or app GUID) and its instances per site.
    App {
        /// App name, ORG/SPACE/NAME (when a name is in several orgs or spaces), or the
        /// app's GUID at any site.
        name: String,
        /// Print the app's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List this node's peer connections.
    Peers {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    // Usage errors exit 2 and --help/--version exit 0, as clap decides.
    let cli = Cli::parse();
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let result = run(cli, &mut out).and_then(|()| out.flush().map_err(Into::into));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            // Best effort: stdout may be gone, the message and exit code still matter.
            let _ = out.flush();
            eprintln!("FAILED\n{err:#}");
            if err.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

fn run(cli: Cli, out: &mut dyn Write) -> Result<()> {
    let config = target::config_path()?;
    match cli.command {
        Command::Api { url: None, .. } => commands::api_show(&config, out),
        Command::Api {
            url: Some(url),
            token_file,
        } => commands::api_set(&config, &url, token_file.as_deref(), out),
        Command::Status { json } => commands::status(&commands::connect(&config)?, json, out),
        Command::Sites { json } => commands::sites(&commands::connect(&config)?, json, out),
        Command::Routes { site, json } => {
            commands::routes(&commands::connect(&config)?, site.as_deref(), json, out)
        }
        Command::Apps { site, json } => {
            commands::apps(&commands::connect(&config)?, site.as_deref(), json, out)
        }
        Command::App { name, json } => {
            commands::app(&commands::connect(&config)?, &name, json, out)
        }
        Command::Peers { json } => commands::peers(&commands::connect(&config)?, json, out),
    }
}

/// `gcf routes | head` closing the pipe early is not a failure.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|e| e.downcast_ref::<io::Error>())
        .any(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn usage_errors_are_clap_usage_errors() {
        // clap exits 2 for these; --token-file without a URL is one of them.
        for args in [
            &["gcf", "api", "--token-file", "t"][..],
            &["gcf", "app"],
            &["gcf", "routes", "--bogus"],
            &["gcf"],
        ] {
            let err = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
        }
        let cli = Cli::try_parse_from(["gcf", "routes", "--site", "lon", "--json"]).unwrap();
        assert!(matches!(cli.command, Command::Routes { site: Some(s), json: true } if s == "lon"));
    }
}
