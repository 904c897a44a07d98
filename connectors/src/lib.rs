//! Connectors: how the hub reaches partner systems it does not own.
//!
//! This crate holds the common record model that leaves a connector (identifiers, stream
//! configuration) and, one module per partner, the code that speaks each partner's published
//! interface. Upstream formats never leak past this crate, and nothing here knows about
//! GraphQL or the hub's database.

pub mod config;
pub mod identifiers;

pub use config::{ConnectorKind, ConnectorSettings, StreamId};
pub use identifiers::{IdentifierError, IdentifierScheme};
