//! Connectors: how the hub reaches partner systems it does not own.
//!
//! This crate holds the connector contract, the common record model that leaves a connector,
//! and one module per partner speaking its published interface (`shared/upstreams/`), plus a
//! generic connector configured without code. Upstream formats never leak past this crate, and
//! nothing here knows about GraphQL or the hub's database. No identifier value appears in an
//! error message.

pub mod access_to_work;
pub mod breaker;
pub mod config;
pub mod connector;
pub mod error;
pub mod generic;
pub mod http;
pub mod identifiers;
pub mod ilf;
pub mod la_social_care;
pub mod model;
pub mod phb;
pub mod secrets;

pub use config::{ConnectorKind, ConnectorSettings, StreamId};
pub use connector::{Connector, Extract, Registry, Shape, Subject};
pub use error::ConnectorError;
pub use identifiers::{IdentifierError, IdentifierScheme};
pub use model::{Award, AwardLine, Counting, Frequency, Payment, PersonRecords, Rejected};
pub use secrets::Secrets;
