//! `tributary demo`: a working hub with realistic synthetic data, from a clean clone, with no
//! set-up: a fresh SQLite store, the seeded people registered, and a development token per role.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use std::sync::Arc;

use connectors::{ConnectorKind, ConnectorSettings, IdentifierScheme, Secrets};
use sandboxes::Sandboxes;
use sandboxes::world::{DEMO_SEED, World};
use secrecy::SecretString;

use crate::Application;
use crate::auth::{Authenticator, Principal, Role, TokenIssuer};
use crate::config::Settings;
use crate::services::persons::{self, NewPerson};

/// What the demo runs with.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// A config file to start from, instead of the demo's own settings.
    pub config: Option<PathBuf>,
    /// Where to listen.
    pub bind: String,
    /// The folder for the demo's SQLite file.
    pub data_dir: PathBuf,
    /// How many synthetic people to load.
    pub people: usize,
}

/// A started demo: the bound server and a token per role.
#[derive(Debug)]
pub struct Demo {
    /// The server, bound but not yet running.
    pub app: Application,
    /// One development token per role.
    pub tokens: Vec<(Role, String)>,
    /// How many people were registered.
    pub people: usize,
    /// The partner sandboxes it talks to.
    pub sandboxes: Sandboxes,
}

/// The four partner streams, configured against sandboxes at these base URLs (council, ILF,
/// Access to Work, health board).
pub fn demo_connectors(urls: [String; 4]) -> Vec<ConnectorSettings> {
    let [council, ilf, atw, phb] = urls;
    let mut council_s =
        ConnectorSettings::new("la-social-care", ConnectorKind::LaSocialCare, &council);
    council_s.token_env = Some("LA_TOKEN".into());
    let ilf_s = ConnectorSettings::new("ilf", ConnectorKind::Ilf, &ilf);
    let mut atw_s = ConnectorSettings::new("access-to-work", ConnectorKind::AccessToWork, &atw);
    atw_s.api_key_env = Some("ATW_KEY".into());
    atw_s.yearly_cap = Some(rust_decimal::Decimal::new(6_926_000, 2));
    let mut phb_s = ConnectorSettings::new("phb", ConnectorKind::Phb, &phb);
    phb_s.token_env = Some("PHB_TOKEN".into());
    vec![council_s, ilf_s, atw_s, phb_s]
}

/// The credentials the sandboxes accept, under the variable names `demo_connectors` uses.
pub fn sandbox_secrets() -> Secrets {
    Secrets::from_env()
        .with("LA_TOKEN", sandboxes::servers::LA_TOKEN)
        .with("PHB_TOKEN", sandboxes::servers::PHB_TOKEN)
        .with("ATW_KEY", sandboxes::servers::ATW_KEY)
}

/// The sandboxes' base URLs in the order `demo_connectors` takes them.
pub fn sandbox_urls(sandboxes: &Sandboxes) -> [String; 4] {
    sandboxes.all().map(|s| s.url())
}

/// Registers every person of a synthetic world in the hub, with the identifiers the partners
/// know them by (a duplicated council record is left unlinked, as a real caseworker would
/// have to choose). Returns the hub ids in world order.
pub async fn register_world(
    db: &sea_orm::DatabaseConnection,
    world: &World,
) -> anyhow::Result<Vec<String>> {
    let loader = Principal {
        sub: "demo-loader".into(),
        role: Role::Admin,
        acts_for: Vec::new(),
        agency: None,
        purpose: Some("loading synthetic people".into()),
        request_id: uuid::Uuid::new_v4().to_string(),
    };
    let people = world
        .people
        .iter()
        .map(|person| {
            let mut identifiers = vec![
                (IdentifierScheme::NhsNumber, person.nhs_number.clone()),
                (IdentifierScheme::Nino, person.nino.clone()),
            ];
            if let Some(client) = person.council_client_id() {
                identifiers.push((IdentifierScheme::CouncilClientId, client.to_owned()));
            }
            if let Some(reference) = person.ilf_reference() {
                identifiers.push((IdentifierScheme::IlfReference, reference.to_owned()));
            }
            NewPerson {
                given_name: person.given_name.clone(),
                family_name: person.family_name.clone(),
                date_of_birth: person.date_of_birth,
                identifiers,
            }
        })
        .collect();
    let ids = persons::register_many(db, &loader, people)
        .await
        .map_err(|e| anyhow::anyhow!("failed to register the demo people: {e}"))?;
    Ok(ids)
}

/// Prepares the store, loads the people and binds the server.
pub async fn start(options: DemoOptions) -> anyhow::Result<Demo> {
    let world = Arc::new(World::generate(DEMO_SEED, options.people));
    let sandboxes =
        Sandboxes::start(world.clone()).context("failed to start the partner sandboxes")?;
    let mut settings = match &options.config {
        Some(path) => Settings::load(Some(path))?,
        None => {
            std::fs::create_dir_all(&options.data_dir).with_context(|| {
                format!(
                    "failed to create the demo folder {}",
                    options.data_dir.display()
                )
            })?;
            let file = options.data_dir.join("tributary-demo.db");
            for suffix in ["", "-wal", "-shm"] {
                let path = PathBuf::from(format!("{}{suffix}", file.display()));
                if path.exists() {
                    std::fs::remove_file(&path)
                        .with_context(|| format!("failed to reset {}", path.display()))?;
                }
            }
            let mut s = Settings::default();
            s.database.url = format!("sqlite://{}?mode=rwc", file.display());
            s.connectors = demo_connectors(sandbox_urls(&sandboxes));
            s
        }
    };
    settings.server.bind = options.bind.clone();
    settings.server.dev = true;
    settings.validate()?;

    // A development secret made afresh for each run, unless one is provided.
    let secret = std::env::var("TRIBUTARY_JWT_SECRET")
        .ok()
        .filter(|s| s.len() >= 32)
        .unwrap_or_else(|| {
            format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            )
        });
    let secret = SecretString::from(secret);
    let issuer = TokenIssuer::hs256(&settings.auth, &secret);
    let auth = Authenticator::hs256(&settings.auth, &secret);

    let db = crate::db::connect(&settings.database).await?;
    crate::db::migrate(&db).await?;
    let ids = register_world(&db, &world).await?;

    let first = ids.first().cloned().unwrap_or_default();
    let second = ids.get(1).cloned().unwrap_or_default();
    let ttl = 12 * 3600;
    let mut tokens = Vec::new();
    for role in Role::ALL {
        let token = match role {
            Role::Person | Role::Portal => issuer.issue(&first, role, Vec::new(), None, ttl)?,
            Role::Representative => issuer.issue(
                "demo-representative",
                role,
                vec![first.clone(), second.clone()],
                None,
                ttl,
            )?,
            Role::Agency => issuer.issue(
                "demo-social-worker",
                role,
                Vec::new(),
                Some("council-asc".into()),
                ttl,
            )?,
            Role::Auditor => issuer.issue("demo-auditor", role, Vec::new(), None, ttl)?,
            Role::Admin => issuer.issue("demo-admin", role, Vec::new(), None, ttl)?,
        };
        tokens.push((role, token));
    }
    let people = ids.len();
    let app = Application::with_database(settings, auth, &sandbox_secrets(), db).await?;
    Ok(Demo {
        app,
        tokens,
        people,
        sandboxes,
    })
}

/// Runs the demo until stopped, printing where it is and how to talk to it.
pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    let demo = start(options).await?;
    let port = demo.app.port();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "Tributary demo: {} synthetic people loaded (seed {DEMO_SEED})",
        demo.people
    )?;
    writeln!(out, "GraphQL:  http://127.0.0.1:{port}/graphql")?;
    writeln!(out, "GraphiQL: http://127.0.0.1:{port}/graphiql")?;
    for sandbox in demo.sandboxes.all() {
        writeln!(out, "Sandbox {:?}: {}", sandbox.partner, sandbox.url())?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "Development tokens, valid 12 hours (header  Authorization: Bearer <token>;"
    )?;
    writeln!(
        out,
        "agency and auditor reads also need  Tributary-Purpose: <why>):"
    )?;
    for (role, token) in &demo.tokens {
        writeln!(out, "token {:<15} {token}", role.as_str())?;
    }
    writeln!(out)?;
    writeln!(out, "Try, with the admin token:")?;
    writeln!(
        out,
        "  {{ fundingStreams {{ id name }} personByIdentifier(scheme: NHS_NUMBER, value: \"943 476 5919\") {{ id givenName identifiers {{ scheme value }} }} }}"
    )?;
    writeln!(out, "and with the person token:")?;
    writeln!(
        out,
        "  {{ personByIdentifier(scheme: NHS_NUMBER, value: \"9434765919\") {{ superBudget(financialYear: \"2026-27\") {{ gross {{ amount }} net {{ amount }} streams {{ stream {{ id }} status gross {{ amount }} }} warnings {{ code message }} }} }} }}"
    )?;
    writeln!(out, "Stop with Ctrl-C.")?;
    out.flush()?;
    drop(out);
    demo.app.run_until_stopped().await?;
    Ok(())
}
