//! The hub's own tables: persons and their identifiers, consents, plan items and their funding
//! shares, upstream snapshots and extracts, rejected upstream records, and the audit chain.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The hash the first audit event chains from: 64 zeros.
const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Persons::Table)
                    .col(string_len(Persons::Id, 36).primary_key())
                    .col(string(Persons::GivenName))
                    .col(string(Persons::FamilyName))
                    .col(date(Persons::DateOfBirth))
                    .col(integer(Persons::Version))
                    .col(string(Persons::CreatedBy))
                    .col(timestamp_with_time_zone(Persons::CreatedAt))
                    .col(timestamp_with_time_zone(Persons::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_persons_family_name_dob")
                    .table(Persons::Table)
                    .col(Persons::FamilyName)
                    .col(Persons::DateOfBirth)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(PersonIdentifiers::Table)
                    .col(string_len(PersonIdentifiers::Id, 36).primary_key())
                    .col(string_len(PersonIdentifiers::PersonId, 36))
                    .col(string_len(PersonIdentifiers::Scheme, 32))
                    .col(string_len(PersonIdentifiers::Value, 64))
                    .col(string(PersonIdentifiers::LinkedBy))
                    .col(timestamp_with_time_zone(PersonIdentifiers::LinkedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_person_identifiers_person")
                            .from(PersonIdentifiers::Table, PersonIdentifiers::PersonId)
                            .to(Persons::Table, Persons::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // One identifier value belongs to at most one person: the database enforces it, so two
        // concurrent links cannot both succeed.
        manager
            .create_index(
                Index::create()
                    .name("ux_person_identifiers_scheme_value")
                    .table(PersonIdentifiers::Table)
                    .col(PersonIdentifiers::Scheme)
                    .col(PersonIdentifiers::Value)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_person_identifiers_person")
                    .table(PersonIdentifiers::Table)
                    .col(PersonIdentifiers::PersonId)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Consents::Table)
                    .col(string_len(Consents::Id, 36).primary_key())
                    .col(string_len(Consents::PersonId, 36))
                    .col(string(Consents::Agency))
                    // JSON array of stream ids, e.g. ["la-social-care","phb"].
                    .col(text(Consents::Streams))
                    .col(text(Consents::Purpose))
                    .col(date_null(Consents::Until))
                    .col(string(Consents::GrantedBy))
                    .col(timestamp_with_time_zone(Consents::GrantedAt))
                    .col(timestamp_with_time_zone_null(Consents::RevokedAt))
                    .col(string_null(Consents::RevokedBy))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_consents_person")
                            .from(Consents::Table, Consents::PersonId)
                            .to(Persons::Table, Persons::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_consents_person_agency")
                    .table(Consents::Table)
                    .col(Consents::PersonId)
                    .col(Consents::Agency)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(PlanItems::Table)
                    .col(string_len(PlanItems::Id, 36).primary_key())
                    .col(string_len(PlanItems::PersonId, 36))
                    .col(text(PlanItems::Description))
                    .col(string(PlanItems::Purpose))
                    .col(big_integer(PlanItems::CostPence))
                    .col(string_len(PlanItems::Frequency, 16))
                    .col(date(PlanItems::StartDate))
                    .col(date_null(PlanItems::EndDate))
                    .col(integer(PlanItems::Version))
                    .col(string_len_null(PlanItems::IdempotencyKey, 128))
                    .col(string(PlanItems::CreatedBy))
                    .col(timestamp_with_time_zone(PlanItems::CreatedAt))
                    .col(timestamp_with_time_zone(PlanItems::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_plan_items_person")
                            .from(PlanItems::Table, PlanItems::PersonId)
                            .to(Persons::Table, Persons::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_plan_items_idempotency")
                    .table(PlanItems::Table)
                    .col(PlanItems::PersonId)
                    .col(PlanItems::IdempotencyKey)
                    .unique()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(FundingShares::Table)
                    .col(string_len(FundingShares::Id, 36).primary_key())
                    .col(string_len(FundingShares::PlanItemId, 36))
                    .col(integer(FundingShares::Position))
                    .col(string(FundingShares::StreamId))
                    // A percentage in hundredths of a percent (33.34% = 3334), or null.
                    .col(big_integer_null(FundingShares::PercentHundredths))
                    // The share in pence: the fixed amount given, or the percentage's pennies.
                    .col(big_integer(FundingShares::AmountPence))
                    .col(string_null(FundingShares::AwardId))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_funding_shares_item")
                            .from(FundingShares::Table, FundingShares::PlanItemId)
                            .to(PlanItems::Table, PlanItems::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_funding_shares_item")
                    .table(FundingShares::Table)
                    .col(FundingShares::PlanItemId)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(UpstreamSnapshots::Table)
                    .col(string_len(UpstreamSnapshots::Id, 36).primary_key())
                    .col(string(UpstreamSnapshots::Connector))
                    // Whom the snapshot is about, as the partner knows them: "NINO:AB123456C".
                    .col(string(UpstreamSnapshots::SubjectKey))
                    .col(string_null(UpstreamSnapshots::Version))
                    .col(string_len(UpstreamSnapshots::ContentHash, 64))
                    // The normalised records (JSON), never the partner's own format.
                    .col(text(UpstreamSnapshots::Records))
                    .col(timestamp_with_time_zone(UpstreamSnapshots::FetchedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_upstream_snapshots_subject")
                    .table(UpstreamSnapshots::Table)
                    .col(UpstreamSnapshots::Connector)
                    .col(UpstreamSnapshots::SubjectKey)
                    .unique()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(BulkExtracts::Table)
                    .col(string_len(BulkExtracts::Id, 36).primary_key())
                    .col(string(BulkExtracts::Connector))
                    .col(string_null(BulkExtracts::Etag))
                    .col(string_len(BulkExtracts::ContentHash, 64))
                    .col(big_integer(BulkExtracts::RowCount))
                    .col(big_integer(BulkExtracts::RejectedCount))
                    .col(boolean(BulkExtracts::Current))
                    .col(timestamp_with_time_zone(BulkExtracts::LoadedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(BulkRecords::Table)
                    .col(big_pk_auto(BulkRecords::Id))
                    .col(string_len(BulkRecords::ExtractId, 36))
                    .col(string(BulkRecords::Connector))
                    .col(string(BulkRecords::SubjectKey))
                    .col(string(BulkRecords::UpstreamId))
                    .col(text(BulkRecords::Record))
                    .col(string_len(BulkRecords::ContentHash, 64))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_bulk_records_extract")
                            .from(BulkRecords::Table, BulkRecords::ExtractId)
                            .to(BulkExtracts::Table, BulkExtracts::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
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
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(RejectedRecords::Table)
                    .col(string_len(RejectedRecords::Id, 36).primary_key())
                    .col(string(RejectedRecords::Connector))
                    .col(string_null(RejectedRecords::SubjectKey))
                    .col(string_null(RejectedRecords::UpstreamId))
                    .col(big_integer_null(RejectedRecords::LineNumber))
                    .col(text(RejectedRecords::Reason))
                    .col(text(RejectedRecords::Raw))
                    .col(timestamp_with_time_zone(RejectedRecords::FetchedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_rejected_records_subject")
                    .table(RejectedRecords::Table)
                    .col(RejectedRecords::Connector)
                    .col(RejectedRecords::SubjectKey)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(AuditEvents::Table)
                    .col(big_integer(AuditEvents::Seq).primary_key())
                    .col(string_len(AuditEvents::Id, 36))
                    .col(timestamp_with_time_zone(AuditEvents::At))
                    .col(string(AuditEvents::ActorSub))
                    .col(string_len(AuditEvents::ActorRole, 32))
                    .col(string_null(AuditEvents::Agency))
                    .col(string_len_null(AuditEvents::PersonId, 36))
                    .col(string(AuditEvents::Action))
                    .col(text(AuditEvents::Detail))
                    .col(text_null(AuditEvents::Purpose))
                    .col(string_len(AuditEvents::RequestId, 36))
                    .col(string_len(AuditEvents::PrevHash, 64))
                    .col(string_len(AuditEvents::Hash, 64))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_audit_events_person")
                    .table(AuditEvents::Table)
                    .col(AuditEvents::PersonId)
                    .col(AuditEvents::Seq)
                    .to_owned(),
            )
            .await?;

        // The chain head: one row, updated by every append. Taking its row lock first serialises
        // appends across every hub instance sharing the database, so the chain never forks.
        manager
            .create_table(
                Table::create()
                    .table(AuditHead::Table)
                    .col(integer(AuditHead::Id).primary_key())
                    .col(big_integer(AuditHead::Seq))
                    .col(string_len(AuditHead::Hash, 64))
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::insert()
                    .into_table(AuditHead::Table)
                    .columns([AuditHead::Id, AuditHead::Seq, AuditHead::Hash])
                    .values_panic([1.into(), 0i64.into(), GENESIS_HASH.into()])
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            AuditHead::Table.into_iden(),
            AuditEvents::Table.into_iden(),
            RejectedRecords::Table.into_iden(),
            BulkRecords::Table.into_iden(),
            BulkExtracts::Table.into_iden(),
            UpstreamSnapshots::Table.into_iden(),
            FundingShares::Table.into_iden(),
            PlanItems::Table.into_iden(),
            Consents::Table.into_iden(),
            PersonIdentifiers::Table.into_iden(),
            Persons::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Persons {
    Table,
    Id,
    GivenName,
    FamilyName,
    DateOfBirth,
    Version,
    CreatedBy,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum PersonIdentifiers {
    Table,
    Id,
    PersonId,
    Scheme,
    Value,
    LinkedBy,
    LinkedAt,
}

#[derive(DeriveIden)]
enum Consents {
    Table,
    Id,
    PersonId,
    Agency,
    Streams,
    Purpose,
    Until,
    GrantedBy,
    GrantedAt,
    RevokedAt,
    RevokedBy,
}

#[derive(DeriveIden)]
enum PlanItems {
    Table,
    Id,
    PersonId,
    Description,
    Purpose,
    CostPence,
    Frequency,
    StartDate,
    EndDate,
    Version,
    IdempotencyKey,
    CreatedBy,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum FundingShares {
    Table,
    Id,
    PlanItemId,
    Position,
    StreamId,
    PercentHundredths,
    AmountPence,
    AwardId,
}

#[derive(DeriveIden)]
enum UpstreamSnapshots {
    Table,
    Id,
    Connector,
    SubjectKey,
    Version,
    ContentHash,
    Records,
    FetchedAt,
}

#[derive(DeriveIden)]
enum BulkExtracts {
    Table,
    Id,
    Connector,
    Etag,
    ContentHash,
    RowCount,
    RejectedCount,
    Current,
    LoadedAt,
}

#[derive(DeriveIden)]
enum BulkRecords {
    Table,
    Id,
    ExtractId,
    Connector,
    SubjectKey,
    UpstreamId,
    Record,
    ContentHash,
}

#[derive(DeriveIden)]
enum RejectedRecords {
    Table,
    Id,
    Connector,
    SubjectKey,
    UpstreamId,
    LineNumber,
    Reason,
    Raw,
    FetchedAt,
}

#[derive(DeriveIden)]
enum AuditEvents {
    Table,
    Seq,
    Id,
    At,
    ActorSub,
    ActorRole,
    Agency,
    PersonId,
    Action,
    Detail,
    Purpose,
    RequestId,
    PrevHash,
    Hash,
}

#[derive(DeriveIden)]
enum AuditHead {
    Table,
    Id,
    Seq,
    Hash,
}
