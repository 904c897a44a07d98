//! A person registered in the hub.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Deserialize)]
#[sea_orm(table_name = "persons")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub given_name: String,
    pub family_name: String,
    pub date_of_birth: Date,
    pub version: i32,
    pub created_by: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::person_identifier::Entity")]
    Identifiers,
}

impl Related<super::person_identifier::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Identifiers.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
