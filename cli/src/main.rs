//! `gcf`: the cf-style command line for GRouter's admin API.
//!
//! # Layout
//!
//! ```text
//!  main (flags, exit codes) ──► commands ──► api (HTTP) ──► admin API of a node
//!                                   │  ├──► table (text)
//!                                   │  ├──► policy (pure policy edits)
//!                                   │  ├──► placement (pure placement text, Done rule)
//!                                   │  └──► indicatif (spinner lines, terminals only)
//!                                   └─────► target (config.toml)
//! ```
//!
//! - `main` (this file): parses flags with clap, finds the config path, checks whether
//!   stdout is a terminal (`gcf scale`'s progress), dispatches to [`commands`], prints
//!   errors as `FAILED` plus the message, maps errors to exit codes.
//! - [`commands`]: one function per command; pure `*_rows` helpers build each table.
//! - [`api`]: the blocking HTTP client and the lenient response structs.
//! - [`policy`]: the control-plane commands' argument syntax and policy edits; no I/O.
//! - [`placement`]: `gcf scale --sites` syntax, the placement API's Done rule, progress
//!   lines (and when a plain one is due) and the placement tables; no I/O.
//! - [`table`]: aligned tables, `key: value` blocks, JSON re-indentation; no I/O.
//! - [`target`]: the saved API URL, token, org and space (`$GCF_HOME` or
//!   `~/.config/gcf`).
//!
//! Must never: hold logic a test would need (that lives in the modules), or print the
//! token.
//!
//! Exit codes (CONTRACT.md): 0 ok, 1 runtime failure (API, network, app not found),
//! 2 usage or config error (clap's own usage errors exit 2 as well).

#![forbid(unsafe_code)]

mod api;
mod commands;
mod placement;
mod policy;
mod table;
mod target;

use std::fmt;
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::api::SitesSpec;
use crate::commands::{Display, ScaleRequest, Wait};
use crate::policy::Mode;

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
    /// Set or view the targeted org and space (used by scale and placement).
    ///
    /// Saved with the API target. Without flags it shows the API, org and space; -o or -s
    /// alone changes only that one.
    Target {
        /// The org of the apps to place.
        #[arg(short = 'o', long = "org", value_name = "ORG")]
        org: Option<String>,
        /// The space of the apps to place.
        #[arg(short = 's', long = "space", value_name = "SPACE")]
        space: Option<String>,
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
    /// List the route and site policies in force.
    Policies {
        /// Print the API's JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Serve an app only from sites of the given regions (on failover too).
    Pin {
        /// App name, ORG/SPACE/NAME, app GUID or route host; every route host of the app
        /// gets the policy.
        app: String,
        /// Regions, comma-separated: eu or eu,us.
        #[arg(long, value_name = "REGIONS", value_parser = parse_regions)]
        regions: Regions,
        /// Print the API's answers to the writes as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Let any region serve an app again.
    Unpin {
        /// App name, ORG/SPACE/NAME, app GUID or route host.
        app: String,
        /// Print the API's answers to the writes as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Take a site out of service: the whole site, or only for one app.
    Drain {
        /// The site to drain.
        #[arg(long, value_name = "SITE")]
        site: String,
        /// Only this app (name, ORG/SPACE/NAME, GUID or route host); without it the whole
        /// site is drained and its nodes' /healthz answers 503.
        app: Option<String>,
        /// Print the API's answers to the writes as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Put a drained site back into service.
    Undrain {
        /// The site to undrain.
        #[arg(long, value_name = "SITE")]
        site: String,
        /// Only this app (name, ORG/SPACE/NAME, GUID or route host).
        app: Option<String>,
        /// Print the API's answers to the writes as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Spread an app's remote traffic and DNS answers across sites by weight.
    Weights {
        /// App name, ORG/SPACE/NAME, app GUID or route host.
        app: String,
        /// SITE=N pairs, comma-separated, e.g. lon=3,nyc=1 (0 = never).
        #[arg(value_name = "WEIGHTS", value_parser = parse_weights)]
        weights: Weights,
        /// Print the API's answers to the writes as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Choose how an app's requests reach other sites: proxy over the mesh or redirect.
    SetRouting {
        /// App name, ORG/SPACE/NAME, app GUID or route host.
        app: String,
        /// proxy or redirect.
        #[arg(long, value_enum)]
        mode: Mode,
        /// Print the API's answers to the writes as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Place an app on N sites, or on the named sites, with K instances each.
    ///
    /// The app is in the targeted org and space (gcf target -o ORG -s SPACE). GRouter
    /// copies its droplet to chosen sites that lack it and scales it to zero at sites no
    /// longer chosen. gcf waits, with a progress line per site, until every chosen site
    /// runs the app or failed (exit 1), unless --no-wait.
    Scale {
        /// The app's name in the targeted org and space.
        app: String,
        /// How many sites (GRouter chooses them), e.g. 2, or which, e.g. lon,nyc.
        #[arg(long, value_name = "N|LIST", value_parser = placement::parse_sites,
              allow_negative_numbers = true)]
        sites: SitesSpec,
        /// Instances at each chosen site (0 to 10000); without it the app keeps the
        /// instances it has.
        #[arg(short = 'i', long = "instances", value_name = "K",
              value_parser = clap::value_parser!(u32).range(0..=10_000))]
        instances: Option<u32>,
        /// Return once the placement is written, without waiting for the sites.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this many seconds (exit 1, naming the sites not done).
        #[arg(long, value_name = "SECS", default_value_t = 600,
              value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "no_wait")]
        timeout: u64,
        /// Print the placement's JSON at the end instead of progress and a table.
        #[arg(long)]
        json: bool,
    },
    /// Show where an app of the targeted org and space is placed, site by site.
    Placement {
        /// The app's name in the targeted org and space.
        app: String,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the placements of all apps.
    Placements {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the TLS certificates of the mesh (metadata only).
    Certs {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Upload a certificate and key for HOST; every node serves it by SNI.
    UploadCert {
        /// The host name the certificate is for (must be one of its SANs).
        host: String,
        /// PEM file with the certificate chain, leaf first.
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// PEM file with the private key.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Print the API's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Delete an uploaded certificate.
    DeleteCert {
        /// The host name it was uploaded for.
        host: String,
        /// Print the API's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// List the configuration writes this node accepted, newest first.
    Audit {
        /// At most this many entries.
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `--regions` as parsed (a newtype, so clap takes the flag once rather than as a list).
#[derive(Debug, Clone)]
struct Regions(Vec<String>);

fn parse_regions(arg: &str) -> Result<Regions, String> {
    policy::parse_regions(arg).map(Regions)
}

/// `WEIGHTS` as parsed.
#[derive(Debug, Clone)]
struct Weights(Vec<(String, u32)>);

fn parse_weights(arg: &str) -> Result<Weights, String> {
    policy::parse_weights(arg).map(Weights)
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
        Command::Target {
            org: None,
            space: None,
        } => commands::target_show(&config, out),
        Command::Target { org, space } => {
            commands::target_set(&config, org.as_deref(), space.as_deref(), out)
        }
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
        Command::Policies { json } => commands::policies(&commands::connect(&config)?, json, out),
        Command::Pin { app, regions, json } => {
            commands::pin(&commands::connect(&config)?, &app, &regions.0, json, out)
        }
        Command::Unpin { app, json } => {
            commands::unpin(&commands::connect(&config)?, &app, json, out)
        }
        Command::Drain { site, app, json } => commands::drain(
            &commands::connect(&config)?,
            &site,
            app.as_deref(),
            json,
            out,
        ),
        Command::Undrain { site, app, json } => commands::undrain(
            &commands::connect(&config)?,
            &site,
            app.as_deref(),
            json,
            out,
        ),
        Command::Weights { app, weights, json } => {
            commands::weights(&commands::connect(&config)?, &app, &weights.0, json, out)
        }
        Command::SetRouting { app, mode, json } => {
            commands::set_routing(&commands::connect(&config)?, &app, mode, json, out)
        }
        Command::Scale {
            app,
            sites,
            instances,
            no_wait,
            timeout,
            json,
        } => {
            let (client, org, space) = commands::connect_space(&config)?;
            let wait = (!no_wait).then_some(Wait {
                timeout: Duration::from_secs(timeout),
                interval: Wait::INTERVAL,
            });
            let display = if json {
                Display::Json
            } else if io::stdout().is_terminal() {
                Display::Terminal
            } else {
                Display::Plain
            };
            let request = ScaleRequest { sites, instances };
            commands::scale(&client, &org, &space, &app, &request, wait, display, out)
        }
        Command::Placement { app, json } => {
            let (client, org, space) = commands::connect_space(&config)?;
            commands::placement(&client, &org, &space, &app, json, out)
        }
        Command::Placements { json } => {
            commands::placements(&commands::connect(&config)?, json, out)
        }
        Command::Certs { json } => commands::certs(&commands::connect(&config)?, json, out),
        Command::UploadCert {
            host,
            cert,
            key,
            json,
        } => commands::upload_cert(&commands::connect(&config)?, &host, &cert, &key, json, out),
        Command::DeleteCert { host, json } => {
            commands::delete_cert(&commands::connect(&config)?, &host, json, out)
        }
        Command::Audit { limit, json } => {
            commands::audit(&commands::connect(&config)?, limit, json, out)
        }
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

    /// Issue 13: malformed control-plane arguments are usage errors (exit 2) that name
    /// the flag or argument, before any request.
    #[test]
    fn control_plane_usage_errors_name_the_flag() {
        let cases: [(&[&str], &str); 9] = [
            (&["gcf", "pin", "shop"], "--regions"),
            (&["gcf", "pin", "shop", "--regions", "eu,,us"], "--regions"),
            (&["gcf", "weights", "shop", "lon=x"], "<WEIGHTS>"),
            (&["gcf", "weights", "shop", "lon=-1"], "<WEIGHTS>"),
            (&["gcf", "weights", "shop", "lon"], "<WEIGHTS>"),
            (
                &["gcf", "set-routing", "shop", "--mode", "teleport"],
                "--mode",
            ),
            (&["gcf", "drain", "shop"], "--site"),
            (
                &["gcf", "upload-cert", "h.example.com", "--cert", "c.pem"],
                "--key",
            ),
            (&["gcf", "audit", "--limit", "-3"], "-3"),
        ];
        for (args, flag) in cases {
            let err = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
            assert!(err.to_string().contains(flag), "{args:?}: {err}");
        }
        let err = Cli::try_parse_from(["gcf", "weights", "shop", "lon=-1"]).unwrap_err();
        assert!(
            err.to_string().contains("the weight of lon is negative"),
            "{err}"
        );

        let cli =
            Cli::try_parse_from(["gcf", "pin", "shop", "--regions", "eu,us", "--json"]).unwrap();
        assert!(
            matches!(cli.command, Command::Pin { app, regions: Regions(r), json: true }
            if app == "shop" && r == ["eu", "us"])
        );
        let cli = Cli::try_parse_from(["gcf", "weights", "shop", "lon=3,nyc=1"]).unwrap();
        assert!(
            matches!(cli.command, Command::Weights { weights: Weights(w), .. }
            if w == [("lon".to_owned(), 3), ("nyc".to_owned(), 1)])
        );
        let cli = Cli::try_parse_from(["gcf", "drain", "--site", "nyc"]).unwrap();
        assert!(
            matches!(cli.command, Command::Drain { site, app: None, json: false } if site == "nyc")
        );
        let cli =
            Cli::try_parse_from(["gcf", "set-routing", "shop", "--mode", "redirect"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::SetRouting {
                mode: Mode::Redirect,
                ..
            }
        ));
    }

    /// Placement commands: `--sites` and the other flags are checked before any request;
    /// a malformed value is a usage error (exit 2) naming the flag.
    #[test]
    fn placement_usage_errors_name_the_flag() {
        let cases: [(&[&str], &str); 9] = [
            (&["gcf", "scale", "shop"], "--sites"),
            (&["gcf", "scale", "shop", "--sites", ""], "--sites"),
            (&["gcf", "scale", "shop", "--sites", "lon,,nyc"], "--sites"),
            (&["gcf", "scale", "shop", "--sites", "-1"], "negative"),
            (
                &["gcf", "scale", "shop", "--sites", "2", "-i", "10001"],
                "-i",
            ),
            (&["gcf", "scale", "shop", "--sites", "2", "-i", "x"], "-i"),
            (
                &["gcf", "scale", "shop", "--sites", "2", "--timeout", "0"],
                "--timeout",
            ),
            (
                &[
                    "gcf",
                    "scale",
                    "shop",
                    "--sites",
                    "2",
                    "--no-wait",
                    "--timeout",
                    "5",
                ],
                "--timeout",
            ),
            (&["gcf", "placement"], "<APP>"),
        ];
        for (args, flag) in cases {
            let err = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
            assert!(err.to_string().contains(flag), "{args:?}: {err}");
        }

        let cli = Cli::try_parse_from([
            "gcf",
            "scale",
            "shop",
            "--sites",
            "lon,nyc",
            "-i",
            "3",
            "--timeout",
            "60",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Scale { app, sites: SitesSpec::List(s), instances: Some(3), no_wait: false,
                timeout: 60, json: false }
            if app == "shop" && s == ["lon", "nyc"]
        ));
        let cli = Cli::try_parse_from([
            "gcf",
            "scale",
            "shop",
            "--sites",
            "2",
            "--no-wait",
            "--json",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Scale {
                sites: SitesSpec::Count(2),
                instances: None,
                no_wait: true,
                timeout: 600,
                json: true,
                ..
            }
        ));
        let cli = Cli::try_parse_from(["gcf", "target", "-o", "demo"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Target { org: Some(o), space: None } if o == "demo"
        ));
        let cli = Cli::try_parse_from(["gcf", "target", "--org", "d", "--space", "p"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Target {
                org: Some(_),
                space: Some(_)
            }
        ));
    }
}
