//! The hub's schema as one ordered migration set.
//!
//! Every migration here must run unchanged on SQLite (the embedded default) and PostgreSQL:
//! only portable column types, no backend-specific SQL. Money is never stored as floating
//! point: amounts are integer pence (`BIGINT`).

pub use sea_orm_migration::MigratorTrait;
use sea_orm_migration::prelude::*;

mod m20261124_000001_hub_tables;
mod m20261124_000002_bulk_record_lookup;

/// Runs the hub's migrations in order.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261124_000001_hub_tables::Migration),
            Box::new(m20261124_000002_bulk_record_lookup::Migration),
        ]
    }
}
