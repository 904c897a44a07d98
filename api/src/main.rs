//! The `tributary` binary: parses the command line and calls into the library.

use std::process::ExitCode;

use clap::Parser;
use connectors::{Registry, Secrets};
use indicatif::{ProgressBar, ProgressStyle};
use tributary::audit::{self, ChainStatus};
use tributary::auth::Authenticator;
use tributary::cli::{AuditCommand, Cli, Command};
use tributary::config::Settings;
use tributary::services::sync;
use tributary::{Application, db, demo, graphql, telemetry};

/// mimalloc rather than glibc's allocator: a served budget makes a few thousand small
/// allocations, many freed on another thread than made them (the audit log's group writer's,
/// often on the other worker), and glibc's arenas spent a sixth of the hub's CPU in the
/// benchmark's profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Schema => {
            print!("{}", graphql::sdl());
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            bind,
            data_dir,
            people,
        } => {
            demo::run(demo::DemoOptions {
                config: cli.config,
                bind,
                data_dir,
                people,
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve => {
            let settings = Settings::load(cli.config.as_deref())?;
            let auth = Authenticator::from_settings(&settings)?;
            let app = Application::build(settings, auth, &Secrets::from_env()).await?;
            tracing::info!(port = app.port(), "serving GraphQL at /graphql");
            app.run_until_stopped().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sync { concurrency } => {
            let settings = Settings::load(cli.config.as_deref())?;
            let conn = db::connect(&settings.database).await?;
            db::migrate(&conn).await?;
            let registry = Registry::build(&settings.connectors, &Secrets::from_env())
                .map_err(|e| anyhow::anyhow!("configuration error: {e}"))?;
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} people ({per_sec}, {eta} left)")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            let progress = |done: u64, total: u64| {
                bar.set_length(total);
                bar.set_position(done);
            };
            let report = sync::run(&conn, &registry, concurrency, &progress)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            bar.finish_and_clear();
            for (stream, outcome) in &report.extracts {
                println!("extract {stream}: {outcome:?}");
            }
            println!(
                "people {}: fetched {}, unchanged {}, rejected {}, failed {}",
                report.people, report.fetched, report.unchanged, report.rejected, report.failed
            );
            Ok(if report.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        Command::Migrate => {
            let settings = Settings::load(cli.config.as_deref())?;
            let conn = db::connect(&settings.database).await?;
            db::migrate(&conn).await?;
            println!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            command: AuditCommand::Anchor,
        } => {
            let settings = Settings::load(cli.config.as_deref())?;
            let conn = db::connect(&settings.database).await?;
            let (Some(dir), Some(key)) = (&settings.audit.anchor_dir, settings.anchor_key()?)
            else {
                anyhow::bail!(
                    "configuration error: audit.anchor_dir and audit.anchor_key_env must be set to anchor"
                );
            };
            let anchor = audit::anchor(&conn, dir, &key).await?;
            println!(
                "anchored event {} ({}) in {}",
                anchor.seq,
                anchor.hash,
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            command: AuditCommand::Verify,
        } => {
            let settings = Settings::load(cli.config.as_deref())?;
            let conn = db::connect(&settings.database).await?;
            let status = match (&settings.audit.anchor_dir, settings.anchor_key()?) {
                (Some(dir), Some(key)) => audit::verify_with_anchors(&conn, dir, &key).await?,
                _ => audit::verify(&conn).await?,
            };
            match status {
                ChainStatus::Holds { events, head_hash } => {
                    println!("audit chain holds: {events} events, head {head_hash}");
                    Ok(ExitCode::SUCCESS)
                }
                ChainStatus::Broken { seq, reason } => {
                    println!("audit chain BROKEN at event {seq}: {reason}");
                    Ok(ExitCode::from(2))
                }
            }
        }
    }
}
