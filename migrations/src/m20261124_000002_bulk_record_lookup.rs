//! An index for the read the combined view makes on every query with a bulk stream: a
//! person's rows in the current extract, by extract id and subject key. Without it that read
//! scans every loaded row (found by the benchmark: the whole ILF extract per query). The old
//! index by connector and subject key served no read, and slowed every extract load, so it
//! goes; replacing an extract now deletes the old one's rows by extract id.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("ix_bulk_records_subject")
                    .table(BulkRecords::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_bulk_records_extract_subject")
                    .table(BulkRecords::Table)
                    .col(BulkRecords::ExtractId)
                    .col(BulkRecords::SubjectKey)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("ix_bulk_records_extract_subject")
                    .table(BulkRecords::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_bulk_records_subject")
                    .table(BulkRecords::Table)
                    .col(BulkRecords::Connector)
                    .col(BulkRecords::SubjectKey)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum BulkRecords {
    Table,
    Connector,
    ExtractId,
    SubjectKey,
}
