//! The `tributary` binary: parses the command line and calls into the library.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use tributary::audit::{self, ChainStatus};
use tributary::auth::Authenticator;
use tributary::cli::{AuditCommand, Cli, Command};
use tributary::config::Settings;
use tributary::{Application, db, demo, graphql, telemetry};

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
            let secret = settings
                .hs256_secret()?
                .context("auth.hs256_secret_env must name the variable holding the HS256 secret")?;
            let auth = Authenticator::hs256(&settings.auth, &secret);
            let app = Application::build(settings, auth).await?;
            tracing::info!(port = app.port(), "serving GraphQL at /graphql");
            app.run_until_stopped().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            let settings = Settings::load(cli.config.as_deref())?;
            let conn = db::connect(&settings.database).await?;
            db::migrate(&conn).await?;
            println!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            command: AuditCommand::Verify,
        } => {
            let settings = Settings::load(cli.config.as_deref())?;
            let conn = db::connect(&settings.database).await?;
            match audit::verify(&conn)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?
            {
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
