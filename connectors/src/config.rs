//! How a connector is configured: the `[[connector]]` tables of the hub's config file.
//!
//! Configuration is plain, validated data kept apart from a connector's runtime state (its HTTP
//! client, breaker). Secrets are never in the file: it names the environment variable holding them.

use std::fmt;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::identifiers::IdentifierScheme;

/// A funding stream's id as the API shows it, e.g. `la-social-care`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StreamId(pub String);

impl StreamId {
    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which partner interface a connector speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectorKind {
    /// The council's adult social care personal budgets API.
    LaSocialCare,
    /// The Independent Living Fund's nightly CSV extract.
    Ilf,
    /// The Access to Work grants API.
    AccessToWork,
    /// The health board's personal health budgets API.
    Phb,
    /// Any other stream, described by configuration alone.
    GenericRest,
}

impl ConnectorKind {
    /// The kind's config name, e.g. `la_social_care`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LaSocialCare => "la_social_care",
            Self::Ilf => "ilf",
            Self::AccessToWork => "access_to_work",
            Self::Phb => "phb",
            Self::GenericRest => "generic_rest",
        }
    }

    /// The stream's name when the configuration gives none.
    pub fn default_name(self) -> &'static str {
        match self {
            Self::LaSocialCare => "Adult social care personal budget",
            Self::Ilf => "Independent Living Fund",
            Self::AccessToWork => "Access to Work",
            Self::Phb => "NHS personal health budget",
            Self::GenericRest => "Other funding stream",
        }
    }

    /// The identifier schemes the partner can find a person by, in order of preference.
    pub fn lookup_schemes(self) -> &'static [IdentifierScheme] {
        match self {
            Self::LaSocialCare => &[
                IdentifierScheme::CouncilClientId,
                IdentifierScheme::NhsNumber,
            ],
            Self::Ilf | Self::AccessToWork => &[IdentifierScheme::Nino],
            Self::Phb => &[IdentifierScheme::NhsNumber],
            Self::GenericRest => &[],
        }
    }
}

/// One `[[connector]]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorSettings {
    /// The stream id seen in the API.
    pub id: StreamId,
    /// Which partner interface it speaks.
    pub kind: ConnectorKind,
    /// A display name; defaults to the kind's.
    #[serde(default)]
    pub name: Option<String>,
    /// The partner's base URL; tests point it at a sandbox.
    pub base_url: String,
    /// The environment variable holding a bearer token, for partners that use one.
    #[serde(default)]
    pub token_env: Option<String>,
    /// The environment variable holding an API key, for partners that use one.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Live sources: a snapshot younger than this is served without asking the partner.
    #[serde(default = "default_cache_ttl_secs")]
    pub cache_ttl_secs: u64,
    /// Bulk sources: how often the extract is polled.
    #[serde(default = "default_refresh_secs")]
    pub refresh_secs: u64,
    /// A stream's own yearly cap (Access to Work's), in pounds.
    #[serde(default)]
    pub yearly_cap: Option<Decimal>,
    /// How long one request to the partner may take.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How long one fetch may spend in all, retries and their waits included.
    #[serde(default = "default_retry_budget_ms")]
    pub retry_budget_ms: u64,
    /// The most attempts one fetch makes.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: usize,
    /// The most requests in flight to this partner at once.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// Consecutive failures that open the circuit breaker.
    #[serde(default = "default_breaker_threshold")]
    pub breaker_threshold: u32,
    /// How long an open breaker refuses calls before one probe.
    #[serde(default = "default_breaker_cool_down_ms")]
    pub breaker_cool_down_ms: u64,
    /// How old a stored snapshot may be before it is reported SOURCE_STALE when served.
    #[serde(default = "default_freshness_secs")]
    pub freshness_secs: u64,
    /// generic_rest: the path after base_url, with `{value}` where the identifier goes.
    #[serde(default)]
    pub path: Option<String>,
    /// generic_rest: which identifier the partner knows the person by.
    #[serde(default)]
    pub identifier_scheme: Option<IdentifierScheme>,
    /// generic_rest: the header carrying the key from `api_key_env` (default `Authorization:
    /// Bearer` with `token_env`).
    #[serde(default)]
    pub auth_header: Option<String>,
    /// generic_rest: where each field is in the partner's JSON.
    #[serde(default)]
    pub mapping: Option<crate::generic::Mapping>,
}

fn default_cache_ttl_secs() -> u64 {
    60
}

fn default_refresh_secs() -> u64 {
    3600
}

fn default_timeout_ms() -> u64 {
    5000
}

fn default_retry_budget_ms() -> u64 {
    8000
}

fn default_max_attempts() -> usize {
    3
}

/// A partner that cannot take more says so (429, with `Retry-After`, which is honoured), and the
/// breaker stops a failing one being hammered; this limit only stops a burst of views running
/// away. Measured by the benchmark (32 concurrent first views, partners 50 ms away): at 16,
/// half the views waited a whole partner round for a permit (p50 104 ms, against 53 ms at 64),
/// and the wait cost CPU, since a permit let go on one worker thread woke a view waiting on the
/// other (4.8 context switches a view, against 2.7).
fn default_max_concurrency() -> usize {
    64
}

fn default_breaker_threshold() -> u32 {
    5
}

fn default_breaker_cool_down_ms() -> u64 {
    10_000
}

fn default_freshness_secs() -> u64 {
    24 * 3600
}

impl ConnectorSettings {
    /// Settings for `kind` at `base_url` with every optional key at its default.
    pub fn new(id: &str, kind: ConnectorKind, base_url: &str) -> Self {
        Self {
            id: StreamId(id.to_owned()),
            kind,
            name: None,
            base_url: base_url.to_owned(),
            token_env: None,
            api_key_env: None,
            cache_ttl_secs: default_cache_ttl_secs(),
            refresh_secs: default_refresh_secs(),
            yearly_cap: None,
            timeout_ms: default_timeout_ms(),
            retry_budget_ms: default_retry_budget_ms(),
            max_attempts: default_max_attempts(),
            max_concurrency: default_max_concurrency(),
            breaker_threshold: default_breaker_threshold(),
            breaker_cool_down_ms: default_breaker_cool_down_ms(),
            freshness_secs: default_freshness_secs(),
            path: None,
            identifier_scheme: None,
            auth_header: None,
            mapping: None,
        }
    }
}

/// A configuration problem, naming the connector and the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("connector '{id}': {key} {problem}")]
pub struct SettingsError {
    /// The connector's id (or its position when the id itself is bad).
    pub id: String,
    /// The offending key.
    pub key: &'static str,
    /// What is wrong and how to fix it.
    pub problem: String,
}

impl ConnectorSettings {
    /// The display name.
    pub fn display_name(&self) -> &str {
        self.name
            .as_deref()
            .unwrap_or_else(|| self.kind.default_name())
    }

    /// Checks what serde cannot: a usable id and base URL, and the secrets each kind needs.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let err = |key: &'static str, problem: String| SettingsError {
            id: self.id.0.clone(),
            key,
            problem,
        };
        let id_ok = !self.id.0.is_empty()
            && self.id.0.len() <= 64
            && self
                .id
                .0
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !id_ok {
            return Err(err(
                "id",
                "must be 1 to 64 characters of lower-case letters, digits, '-' or '_'".into(),
            ));
        }
        let url_ok = (self.base_url.starts_with("http://")
            || self.base_url.starts_with("https://"))
            && self.base_url.len() > "http://".len();
        if !url_ok {
            return Err(err(
                "base_url",
                "must be an http:// or https:// URL, e.g. http://127.0.0.1:9101".into(),
            ));
        }
        match self.kind {
            ConnectorKind::LaSocialCare | ConnectorKind::Phb if self.token_env.is_none() => {
                return Err(err(
                    "token_env",
                    "is required for this kind: name the environment variable holding the partner's bearer token".into(),
                ));
            }
            ConnectorKind::AccessToWork if self.api_key_env.is_none() => {
                return Err(err(
                    "api_key_env",
                    "is required for access_to_work: name the environment variable holding the API key".into(),
                ));
            }
            _ => {}
        }
        if let Some(cap) = self.yearly_cap
            && cap.is_sign_negative()
        {
            return Err(err("yearly_cap", "must not be negative".into()));
        }
        if self.timeout_ms == 0 {
            return Err(err("timeout_ms", "must be more than 0".into()));
        }
        if self.max_concurrency == 0 {
            return Err(err("max_concurrency", "must be at least 1".into()));
        }
        if self.kind == ConnectorKind::GenericRest {
            match &self.path {
                Some(path) if path.starts_with('/') && path.contains("{value}") => {}
                _ => {
                    return Err(err(
                        "path",
                        "is required for generic_rest: a path starting with '/' holding {value} where the identifier goes, e.g. /api/people/{value}/grants".into(),
                    ));
                }
            }
            if self.identifier_scheme.is_none() {
                return Err(err(
                    "identifier_scheme",
                    "is required for generic_rest: NHS_NUMBER, NINO, COUNCIL_CLIENT_ID or ILF_REFERENCE".into(),
                ));
            }
            let Some(mapping) = &self.mapping else {
                return Err(err(
                    "mapping",
                    "is required for generic_rest: where the awards and each field are in the partner's JSON".into(),
                ));
            };
            mapping
                .validate()
                .map_err(|problem| err("mapping", problem))?;
            if self.auth_header.is_some() && self.api_key_env.is_none() {
                return Err(err(
                    "api_key_env",
                    "is required when auth_header is set: name the variable holding the key".into(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(kind: ConnectorKind) -> ConnectorSettings {
        let mut s = ConnectorSettings::new("la-social-care", kind, "http://127.0.0.1:9101");
        s.token_env = Some("LA_TOKEN".into());
        s
    }

    #[test]
    fn a_council_connector_without_a_token_variable_is_refused_naming_the_key() {
        let mut s = settings(ConnectorKind::LaSocialCare);
        s.token_env = None;
        let e = s.validate().unwrap_err();
        assert_eq!(e.key, "token_env");
        assert!(
            e.to_string()
                .contains("connector 'la-social-care': token_env")
        );
    }

    #[test]
    fn a_base_url_without_a_scheme_is_refused() {
        let mut s = settings(ConnectorKind::Phb);
        s.base_url = "127.0.0.1:9104".into();
        assert_eq!(s.validate().unwrap_err().key, "base_url");
    }

    #[test]
    fn upper_case_stream_ids_are_refused() {
        let mut s = settings(ConnectorKind::Phb);
        s.id = StreamId("PHB".into());
        assert_eq!(s.validate().unwrap_err().key, "id");
    }

    #[test]
    fn a_good_connector_passes() {
        assert!(settings(ConnectorKind::LaSocialCare).validate().is_ok());
        assert_eq!(
            settings(ConnectorKind::Ilf).display_name(),
            "Independent Living Fund"
        );
    }
}
