//! What both binaries do before anything else: logging to stderr (without
//! colours when stderr is not a terminal, so log files stay plain text) and
//! the async runtime.

use std::io::IsTerminal;
use std::path::PathBuf;

/// `--config FILE` (or `FLEETLS_CONFIG`), for every subcommand: a TOML file
/// whose keys are the long flags (flags and variables win over it).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigFlag {
    /// TOML config file (its keys are the flags of `run` / `serve`)
    #[arg(long, global = true, env = "FLEETLS_CONFIG")]
    pub config: Option<PathBuf>,
}

/// A fleetls program's command line: `--config` for every subcommand, and
/// the subcommand `C`.
#[derive(Debug, clap::Parser)]
#[command(version)]
pub struct Cli<C: clap::Subcommand> {
    /// The config file.
    #[command(flatten)]
    pub config: ConfigFlag,
    /// What to do.
    #[command(subcommand)]
    pub command: C,
}

impl<C: clap::Subcommand> Cli<C> {
    /// Parses this process's arguments as the program `name`, described by
    /// `about` (a usage error exits with clap's message and code 2).
    pub fn parse_as(name: &'static str, about: &'static str) -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let matches = with_env(Self::command())
            .name(name)
            .bin_name(name)
            .about(about)
            .get_matches();
        Self::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

/// Flags never read from the environment: a confirmation is given on the
/// command line each time, and clap's own `--help` / `--version`.
const NOT_FROM_ENV: &[&str] = &["yes", "help", "version"];

/// Gives every long flag of `command` and of its subcommands, at every
/// depth, the variable `FLEETLS_<FLAG>` (`--step-timeout` →
/// `FLEETLS_STEP_TIMEOUT`) unless it names one already; positional
/// arguments and [`NOT_FROM_ENV`] have none. A switch (`--json`) is on
/// when its variable is set to anything but `0`, `false`, `no`, `off` or
/// `n`; a flag on the command line wins over its variable.
pub fn with_env(command: clap::Command) -> clap::Command {
    command
        .mut_args(|arg| {
            let Some(long) = arg.get_long() else {
                return arg;
            };
            if arg.get_env().is_some() || NOT_FROM_ENV.contains(&long) {
                return arg;
            }
            let var = format!("FLEETLS_{}", long.replace('-', "_").to_uppercase());
            match arg.get_action() {
                clap::ArgAction::SetTrue => arg
                    .env(var)
                    .value_parser(clap::builder::FalseyValueParser::new()),
                clap::ArgAction::Set | clap::ArgAction::Append => arg.env(var),
                _ => arg,
            }
        })
        .mut_subcommands(with_env)
}

/// Raw settings that come in layers: flags (and their variables) over a
/// config file.
pub trait Layered: Default {
    /// Fills every setting not given in `self` from `lower`.
    fn or(self, lower: Self) -> Self;
}

impl ConfigFlag {
    /// The checked configuration: `flags` over the config file (read with
    /// `read` when one is named), checked by `check` before anything runs.
    pub fn load<R: Layered, C>(
        &self,
        flags: R,
        read: impl FnOnce(&std::path::Path) -> Result<R, crate::ConfigError>,
        check: impl FnOnce(R) -> Result<C, crate::ConfigError>,
    ) -> Result<C, crate::ConfigError> {
        let file = match &self.config {
            Some(path) => read(path)?,
            None => R::default(),
        };
        check(flags.or(file))
    }
}

/// Sets up logging (`RUST_LOG`, default `info,lapin=warn`) and builds the
/// runtime; `None` (said on stderr) when the runtime cannot start.
pub fn start() -> Option<tokio::runtime::Runtime> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,lapin=warn".into()),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => Some(runtime),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            None
        }
    }
}

/// Writes `args` and a newline to stdout. A reader that went away
/// (`fleetls-parent status | head -c 20`) ends the program quietly with exit
/// code 0 — never a panic; any other write error ends it with code 1 and
/// says why.
pub fn print_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// `println!` that ends the program quietly when stdout's reader went away
/// (see [`print_line`]).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::process::print_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::process::print_line(format_args!($($arg)*))
    };
}
