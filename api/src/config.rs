//! Configuration: a TOML file, then `TRIBUTARY_<SECTION>__<KEY>` environment overrides.
//!
//! Unknown keys stop start-up with their name, and secrets are never in the file: it names the
//! environment variable that holds each one, and the value is held in a type that never prints.

use std::net::SocketAddr;
use std::path::Path;

use connectors::ConnectorSettings;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The HTTP server.
    #[serde(default)]
    pub server: ServerSettings,
    /// The hub's store.
    #[serde(default)]
    pub database: DatabaseSettings,
    /// Token validation.
    #[serde(default)]
    pub auth: AuthSettings,
    /// Limits against abuse.
    #[serde(default)]
    pub limits: LimitSettings,
    /// The audit log's anchors.
    #[serde(default)]
    pub audit: AuditSettings,
    /// One table per partner system.
    #[serde(default, rename = "connector")]
    pub connectors: Vec<ConnectorSettings>,
}

/// `[limits]`: set on purpose, since async-graphql leaves most of them off.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Deepest selection nesting allowed.
    #[serde(default = "default_max_depth")]
    pub max_depth: usize,
    /// Highest query complexity (one per field, multiplied through lists by async-graphql's rules).
    #[serde(default = "default_max_complexity")]
    pub max_complexity: usize,
    /// Most aliases in one document.
    #[serde(default = "default_max_aliases")]
    pub max_aliases: usize,
    /// Most directives on one field.
    #[serde(default = "default_max_directives")]
    pub max_directives: usize,
    /// Most operations in one batched request.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Largest request body, refused before it is read whole.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Requests a second one token may make, sustained.
    #[serde(default = "default_per_token_per_second")]
    pub per_token_per_second: u32,
    /// Requests one token may make in a burst.
    #[serde(default = "default_per_token_burst")]
    pub per_token_burst: u32,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_depth: default_max_depth(),
            max_complexity: default_max_complexity(),
            max_aliases: default_max_aliases(),
            max_directives: default_max_directives(),
            max_batch: default_max_batch(),
            max_body_bytes: default_max_body_bytes(),
            per_token_per_second: default_per_token_per_second(),
            per_token_burst: default_per_token_burst(),
        }
    }
}

fn default_max_depth() -> usize {
    12
}
fn default_max_complexity() -> usize {
    5000
}
fn default_max_aliases() -> usize {
    30
}
fn default_max_directives() -> usize {
    4
}
fn default_max_batch() -> usize {
    5
}
fn default_max_body_bytes() -> usize {
    64 * 1024
}
fn default_per_token_per_second() -> u32 {
    200
}
fn default_per_token_burst() -> u32 {
    400
}

/// `[audit]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// Where signed anchors of the chain head are written (outside the database).
    #[serde(default)]
    pub anchor_dir: Option<std::path::PathBuf>,
    /// The environment variable holding the anchor signing key (HMAC-SHA256, 32+ characters).
    #[serde(default)]
    pub anchor_key_env: Option<String>,
    /// How often the server anchors the chain head; 0 = only on `tributary audit anchor`.
    #[serde(default)]
    pub anchor_interval_secs: u64,
}

/// `[server]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Where to listen; port 0 picks a free port.
    #[serde(default = "default_bind")]
    pub bind: String,
    /// Development mode: GraphiQL at /graphiql, introspection and field suggestions on.
    #[serde(default)]
    pub dev: bool,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            bind: default_bind(),
            dev: false,
        }
    }
}

fn default_bind() -> String {
    "127.0.0.1:8080".into()
}

/// `[database]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://FILE?mode=rwc` or `postgres://...`.
    #[serde(default = "default_database_url")]
    pub url: String,
    /// The most connections the pool opens.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: default_database_url(),
            max_connections: default_max_connections(),
        }
    }
}

fn default_database_url() -> String {
    "sqlite://tributary.db?mode=rwc".into()
}

fn default_max_connections() -> u32 {
    16
}

/// `[auth]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// The `iss` every token must carry.
    #[serde(default = "default_issuer")]
    pub issuer: String,
    /// The `aud` every token must carry.
    #[serde(default = "default_audience")]
    pub audience: String,
    /// The environment variable holding the HS256 secret.
    #[serde(default)]
    pub hs256_secret_env: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// The one signing algorithm accepted: HS256, RS256 or ES256. Never taken from a token.
    #[serde(default)]
    pub algorithm: JwtAlgorithm,
    /// For RS256/ES256: a JWKS file of public keys, chosen by each token's `kid` (several keys
    /// allow rotation).
    #[serde(default)]
    pub jwks_file: Option<std::path::PathBuf>,
}

/// The accepted token algorithm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 and a shared secret.
    #[default]
    HS256,
    /// RSA PKCS#1 v1.5 with SHA-256, public keys from `jwks_file`.
    RS256,
    /// ECDSA P-256 with SHA-256, public keys from `jwks_file`.
    ES256,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            issuer: default_issuer(),
            audience: default_audience(),
            hs256_secret_env: Some("TRIBUTARY_JWT_SECRET".into()),
            leeway_secs: default_leeway_secs(),
            algorithm: JwtAlgorithm::HS256,
            jwks_file: None,
        }
    }
}

fn default_issuer() -> String {
    "tributary".into()
}

fn default_audience() -> String {
    "tributary-api".into()
}

fn default_leeway_secs() -> u64 {
    30
}

/// A configuration that cannot be used, with the key and what is wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file or an override could not be read into the settings (figment names the key).
    #[error("configuration error: {0}")]
    Load(#[from] Box<figment::Error>),
    /// A value was read but is not usable.
    #[error("configuration error: {key}: {problem}")]
    Invalid {
        /// The key, e.g. `server.bind`.
        key: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// A connector's table is not usable.
    #[error("configuration error: {0}")]
    Connector(#[from] connectors::config::SettingsError),
}

impl Settings {
    /// Reads the file (if given), then the environment overrides, then validates.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Invalid {
                    key: "--config".into(),
                    problem: format!("the file {} does not exist", path.display()),
                });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        Self::from_figment(figment.merge(env_overrides()))
    }

    /// Reads settings from TOML text (no environment overrides), then validates.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_figment(
            Figment::from(Serialized::defaults(Settings::default())).merge(Toml::string(text)),
        )
    }

    /// Extracts and validates settings from a prepared figment.
    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let settings: Settings = figment.extract().map_err(Box::new)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.server.bind.parse::<SocketAddr>().is_err() {
            return Err(ConfigError::Invalid {
                key: "server.bind".into(),
                problem: "must be an address and port, e.g. 127.0.0.1:8080".into(),
            });
        }
        let url = &self.database.url;
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(ConfigError::Invalid {
                key: "database.url".into(),
                problem: "must start with sqlite: or postgres://".into(),
            });
        }
        let l = &self.limits;
        for (key, value) in [
            ("limits.max_depth", l.max_depth),
            ("limits.max_complexity", l.max_complexity),
            ("limits.max_batch", l.max_batch),
            ("limits.max_body_bytes", l.max_body_bytes),
            (
                "limits.per_token_per_second",
                l.per_token_per_second as usize,
            ),
            ("limits.per_token_burst", l.per_token_burst as usize),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    key: key.into(),
                    problem: "must be at least 1".into(),
                });
            }
        }
        if self.database.max_connections == 0 {
            return Err(ConfigError::Invalid {
                key: "database.max_connections".into(),
                problem: "must be at least 1".into(),
            });
        }
        let mut seen = std::collections::HashSet::new();
        for connector in &self.connectors {
            connector.validate()?;
            if !seen.insert(connector.id.as_str()) {
                return Err(ConfigError::Invalid {
                    key: "connector.id".into(),
                    problem: format!("'{}' is used by more than one connector", connector.id),
                });
            }
        }
        Ok(())
    }

    /// Reads the anchor signing key from the environment variable the config names.
    pub fn anchor_key(&self) -> Result<Option<SecretString>, ConfigError> {
        let Some(var) = &self.audit.anchor_key_env else {
            return Ok(None);
        };
        match std::env::var(var) {
            Ok(value) if value.len() >= 32 => Ok(Some(SecretString::from(value))),
            Ok(_) => Err(ConfigError::Invalid {
                key: "audit.anchor_key_env".into(),
                problem: format!("the key in {var} must be at least 32 characters"),
            }),
            Err(_) => Err(ConfigError::Invalid {
                key: "audit.anchor_key_env".into(),
                problem: format!("names {var}, which is not set in the environment"),
            }),
        }
    }

    /// Reads the HS256 secret from the environment variable the config names.
    pub fn hs256_secret(&self) -> Result<Option<SecretString>, ConfigError> {
        let Some(var) = &self.auth.hs256_secret_env else {
            return Ok(None);
        };
        match std::env::var(var) {
            Ok(value) if value.len() >= 32 => Ok(Some(SecretString::from(value))),
            Ok(_) => Err(ConfigError::Invalid {
                key: "auth.hs256_secret_env".into(),
                problem: format!("the secret in {var} must be at least 32 characters"),
            }),
            Err(_) => Err(ConfigError::Invalid {
                key: "auth.hs256_secret_env".into(),
                problem: format!("names {var}, which is not set in the environment"),
            }),
        }
    }
}

/// `TRIBUTARY_SECTION__KEY=value` overrides `section.key`. Variables without a `__` (such as
/// `TRIBUTARY_JWT_SECRET`) are secrets or other settings, not overrides.
fn env_overrides() -> Env {
    Env::prefixed("TRIBUTARY_")
        .filter(|key| key.as_str().contains("__"))
        .split("__")
}

#[cfg(test)]
#[expect(
    clippy::result_large_err,
    reason = "figment's Jail fixes the closures' error type"
)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn the_contract_example_config_loads() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "t.toml",
                r#"
[server]
bind = "127.0.0.1:8080"
[database]
url = "sqlite://tributary.db?mode=rwc"
[auth]
issuer = "tributary"
audience = "tributary-api"
hs256_secret_env = "TRIBUTARY_JWT_SECRET"
[[connector]]
id = "la-social-care"
kind = "la_social_care"
base_url = "http://127.0.0.1:9101"
token_env = "LA_TOKEN"
cache_ttl_secs = 60
[[connector]]
id = "ilf"
kind = "ilf"
base_url = "http://127.0.0.1:9102"
refresh_secs = 3600
[[connector]]
id = "access-to-work"
kind = "access_to_work"
base_url = "http://127.0.0.1:9103"
api_key_env = "ATW_KEY"
yearly_cap = "69260.00"
[[connector]]
id = "phb"
kind = "phb"
base_url = "http://127.0.0.1:9104"
token_env = "PHB_TOKEN"
"#,
            )?;
            let s = Settings::load(Some(Path::new("t.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(s.connectors.len(), 4);
            assert_eq!(
                s.connectors[2].yearly_cap.map(|d| d.to_string()).as_deref(),
                Some("69260.00")
            );
            Ok(())
        });
    }

    #[test]
    fn environment_overrides_the_file() {
        Jail::expect_with(|jail| {
            jail.create_file("t.toml", "[database]\nurl = \"sqlite://a.db\"\n")?;
            jail.set_env("TRIBUTARY_DATABASE__URL", "postgres://postgres@127.0.0.1/x");
            jail.set_env("TRIBUTARY_JWT_SECRET", "not an override");
            let s = Settings::load(Some(Path::new("t.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(s.database.url, "postgres://postgres@127.0.0.1/x");
            Ok(())
        });
    }

    #[test]
    fn a_misspelt_key_is_named() {
        Jail::expect_with(|jail| {
            jail.create_file("t.toml", "[server]\nbnid = \"127.0.0.1:1\"\n")?;
            let e = Settings::load(Some(Path::new("t.toml")))
                .unwrap_err()
                .to_string();
            assert!(e.contains("bnid"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn a_wrong_type_names_the_key() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "t.toml",
                "[[connector]]\nid = \"ilf\"\nkind = \"ilf\"\nbase_url = \"http://x\"\nrefresh_secs = \"often\"\n",
            )?;
            let e = Settings::load(Some(Path::new("t.toml")))
                .unwrap_err()
                .to_string();
            assert!(e.contains("refresh_secs"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn a_bad_bind_address_is_named() {
        Jail::expect_with(|jail| {
            jail.set_env("TRIBUTARY_SERVER__BIND", "localhost");
            let e = Settings::load(None).unwrap_err().to_string();
            assert!(e.contains("server.bind"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn an_unknown_connector_kind_is_named() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "t.toml",
                "[[connector]]\nid = \"x\"\nkind = \"carrier_pigeon\"\nbase_url = \"http://x\"\n",
            )?;
            let e = Settings::load(Some(Path::new("t.toml")))
                .unwrap_err()
                .to_string();
            assert!(e.contains("carrier_pigeon") && e.contains("kind"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn a_missing_secret_variable_is_named_without_a_value() {
        Jail::expect_with(|jail| {
            jail.set_env("TRIBUTARY_AUTH__HS256_SECRET_ENV", "NO_SUCH_SECRET_VAR");
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            let e = s.hs256_secret().unwrap_err().to_string();
            assert!(e.contains("NO_SUCH_SECRET_VAR"), "{e}");
            Ok(())
        });
    }
}
