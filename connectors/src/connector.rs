//! The connector contract: what every connector declares and returns.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use crate::config::{ConnectorKind, ConnectorSettings, StreamId};
use crate::error::ConnectorError;
use crate::identifiers::IdentifierScheme;
use crate::model::PersonRecords;
use crate::secrets::Secrets;

/// Whom to ask a partner about: one identifier it knows the person by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Subject {
    /// The scheme.
    pub scheme: IdentifierScheme,
    /// The normalised value.
    pub value: String,
}

impl Subject {
    /// `SCHEME:value`, the key snapshots and bulk records are stored under.
    pub fn key(&self) -> String {
        format!("{}:{}", self.scheme.as_str(), self.value)
    }
}

/// How a connector gets its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Asked live about one person at a time.
    Live,
    /// Publishes a whole extract that the hub loads into its store.
    Bulk,
}

/// A downloaded bulk extract.
#[derive(Debug)]
pub enum Extract {
    /// Unchanged since the ETag the hub holds.
    NotModified,
    /// A new extract, downloaded to a temporary file (streamed, never held in memory whole).
    File {
        /// Where it is; removed when the handle drops.
        file: tempfile::TempPath,
        /// The partner's ETag.
        etag: Option<String>,
        /// SHA-256 of the file.
        content_hash: String,
    },
}

impl Extract {
    /// The downloaded file's path, when there is one.
    pub fn path(&self) -> Option<PathBuf> {
        match self {
            Self::File { file, .. } => Some(file.to_path_buf()),
            Self::NotModified => None,
        }
    }
}

/// One partner system behind the one contract.
#[async_trait]
pub trait Connector: Send + Sync + std::fmt::Debug {
    /// Its configuration.
    fn settings(&self) -> &ConnectorSettings;

    /// Live or bulk.
    fn shape(&self) -> Shape {
        Shape::Live
    }

    /// The identifier schemes the partner can find a person by, in order of preference.
    fn schemes(&self) -> Vec<IdentifierScheme> {
        self.settings().kind.lookup_schemes().to_vec()
    }

    /// Picks whom to ask about from a person's identifiers; `None` when the person holds no
    /// identifier this partner knows.
    fn subject(&self, identifiers: &[(IdentifierScheme, String)]) -> Option<Subject> {
        self.schemes().into_iter().find_map(|scheme| {
            identifiers
                .iter()
                .find(|(s, _)| *s == scheme)
                .map(|(_, value)| Subject {
                    scheme,
                    value: value.clone(),
                })
        })
    }

    /// Asks the partner about one person (live sources).
    async fn fetch(&self, subject: &Subject) -> Result<PersonRecords, ConnectorError>;

    /// Downloads the partner's extract if it changed since `etag` (bulk sources).
    async fn download(&self, _etag: Option<&str>) -> Result<Extract, ConnectorError> {
        Err(ConnectorError::Misconfigured(
            "this connector is not a bulk source".into(),
        ))
    }
}

/// The hub's connectors, keyed by stream id, in configuration order.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    order: Vec<StreamId>,
    by_id: HashMap<StreamId, Arc<dyn Connector>>,
}

impl Registry {
    /// Builds every configured connector.
    pub fn build(
        settings: &[ConnectorSettings],
        secrets: &Secrets,
    ) -> Result<Self, ConnectorError> {
        let mut registry = Self::default();
        for s in settings {
            let connector: Arc<dyn Connector> =
                match s.kind {
                    ConnectorKind::LaSocialCare => Arc::new(
                        crate::la_social_care::LaSocialCare::new(s.clone(), secrets)?,
                    ),
                    ConnectorKind::Ilf => Arc::new(crate::ilf::Ilf::new(s.clone())?),
                    ConnectorKind::AccessToWork => Arc::new(
                        crate::access_to_work::AccessToWork::new(s.clone(), secrets)?,
                    ),
                    ConnectorKind::Phb => Arc::new(crate::phb::Phb::new(s.clone(), secrets)?),
                    ConnectorKind::GenericRest => {
                        Arc::new(crate::generic::GenericRest::new(s.clone(), secrets)?)
                    }
                };
            registry.order.push(s.id.clone());
            registry.by_id.insert(s.id.clone(), connector);
        }
        Ok(registry)
    }

    /// Every connector, in configuration order.
    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Connector>> {
        self.order.iter().filter_map(|id| self.by_id.get(id))
    }

    /// One connector by stream id.
    pub fn get(&self, id: &str) -> Option<&Arc<dyn Connector>> {
        self.by_id.get(&StreamId(id.to_owned()))
    }
}

/// Reads the secret a connector needs, naming the variable (never the value) when it is unset.
pub(crate) fn required_secret(
    secrets: &Secrets,
    var: Option<&String>,
    key: &str,
) -> Result<secrecy::SecretString, ConnectorError> {
    let var = var.ok_or_else(|| ConnectorError::Misconfigured(format!("{key} is not set")))?;
    secrets.get(var).ok_or_else(|| {
        ConnectorError::Misconfigured(format!(
            "{key} names {var}, which is not set in the environment"
        ))
    })
}
