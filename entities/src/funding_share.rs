//! One stream's share of a plan item.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Deserialize)]
#[sea_orm(table_name = "funding_shares")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub plan_item_id: String,
    pub position: i32,
    pub stream_id: String,
    /// Hundredths of a percent (33.34% = 3334) when the share was given as a percentage.
    pub percent_hundredths: Option<i64>,
    pub amount_pence: i64,
    pub award_id: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
