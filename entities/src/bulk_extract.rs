//! One loaded bulk extract (the ILF file); exactly one per connector is current.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Deserialize)]
#[sea_orm(table_name = "bulk_extracts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub connector: String,
    pub etag: Option<String>,
    pub content_hash: String,
    pub row_count: i64,
    pub rejected_count: i64,
    pub current: bool,
    pub loaded_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
