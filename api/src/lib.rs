//! Tributary's hub: the GraphQL API, authentication, the services over the hub's store,
//! configuration and the command line.
//!
//! Data flows one way: partner system -> connector -> snapshot store -> budget assembly ->
//! GraphQL. Resolvers stay thin and call services; services know nothing of GraphQL. Nothing
//! here logs personal data.

pub mod audit;
pub mod auth;
pub mod cli;
pub mod coalesce;
pub mod config;
pub mod db;
pub mod demo;
pub mod error;
pub mod graphql;
pub mod limits;
pub mod pg_bundle;
pub mod pg_reads;
pub mod pg_snapshots;
pub mod reader;
pub mod services;
pub mod sqlite_reads;
pub mod sqlite_writes;
pub mod startup;
pub mod telemetry;

pub use startup::Application;
pub mod budget;
