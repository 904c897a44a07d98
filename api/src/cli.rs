//! The `tributary` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Tributary: one personal budget from many public funding streams.
#[derive(Debug, Parser)]
#[command(name = "tributary", version, about)]
pub struct Cli {
    /// The TOML configuration file; every key can be overridden as TRIBUTARY_<SECTION>__<KEY>.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log as JSON lines (for log shippers) instead of human-readable text.
    #[arg(long, global = true)]
    pub log_json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Migrate the store and serve GraphQL at /graphql.
    Serve,
    /// Apply pending migrations to the configured database and exit.
    Migrate,
    /// Run a self-contained demo: a fresh SQLite store, synthetic people, development tokens.
    Demo {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:8080")]
        bind: String,
        /// The folder for the demo's SQLite file (recreated on each run).
        #[arg(long, default_value = "demo-data")]
        data_dir: PathBuf,
        /// How many synthetic people to load.
        #[arg(long, default_value_t = 60)]
        people: usize,
    },
    /// Refresh every registered person from every connector now (and every bulk extract).
    Sync {
        /// How many people to refresh at once.
        #[arg(long, default_value_t = crate::services::sync::DEFAULT_CONCURRENCY)]
        concurrency: usize,
    },
    /// Work with the audit log.
    Audit {
        /// What to do with it.
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Print the GraphQL schema the server serves (what schema.graphql holds).
    Schema,
}

/// `tributary audit ...`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain (and the anchors, when configured); exit 0 when it holds,
    /// non-zero naming the first broken event.
    Verify,
    /// Sign the chain head and write it to `audit.anchor_dir`.
    Anchor,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn audit_verify_parses_with_a_config() {
        let cli =
            Cli::try_parse_from(["tributary", "audit", "verify", "--config", "x.toml"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Audit {
                command: AuditCommand::Verify
            }
        ));
        assert_eq!(cli.config, Some(PathBuf::from("x.toml")));
    }
}
