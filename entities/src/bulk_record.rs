//! One normalised record of a bulk extract.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Deserialize)]
#[sea_orm(table_name = "bulk_records")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub extract_id: String,
    pub connector: String,
    pub subject_key: String,
    pub upstream_id: String,
    pub record: String,
    pub content_hash: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
