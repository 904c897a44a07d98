//! The combined view for one person: which window, which streams the caller may see, gathered
//! from the snapshot store and assembled by the pure budget arithmetic.

use chrono::{NaiveDate, Utc};
use connectors::Registry;
use sea_orm::DatabaseConnection;

use crate::auth::Principal;
use crate::budget::assemble::{BudgetView, Commitment, assemble};
use crate::budget::period::{Window, to_pounds};
use crate::error::{ApiError, ApiResult};
use crate::services::access;
use crate::services::persons::PersonRecord;
use crate::services::sources::{DirectStore, StoreReader};
use crate::services::{plan, sources};

/// The longest window a view may cover.
pub const MAX_WINDOW_DAYS: i64 = 3660;

/// The window asked for: a financial year, or from and to, or the current financial year.
pub fn resolve_window(
    financial_year: Option<&str>,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
    today: NaiveDate,
) -> ApiResult<Window> {
    let window = match (financial_year, from, to) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return Err(ApiError::BadInput(
                "give either financialYear or from and to, not both".into(),
            ));
        }
        (Some(fy), None, None) => Window::parse_financial_year(fy).ok_or_else(|| {
            ApiError::BadInput(
                "financialYear must look like \"2026-27\": the starting year, a dash, and the next year's last two digits".into(),
            )
        })?,
        (None, Some(from), Some(to)) => Window::new(from, to)
            .ok_or_else(|| ApiError::BadInput("to must not be before from".into()))?,
        (None, Some(_), None) | (None, None, Some(_)) => {
            return Err(ApiError::BadInput("give both from and to".into()));
        }
        (None, None, None) => Window::financial_year_of(today)
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no financial year for today")))?,
    };
    if window.days() > MAX_WINDOW_DAYS {
        return Err(ApiError::BadInput(format!(
            "a window may cover at most {MAX_WINDOW_DAYS} days"
        )));
    }
    Ok(window)
}

/// The person's combined budget in `window`, as far as `principal` may see it, and whether
/// `record` recorded the read while partners were asked or their answers kept (see
/// `sources::gather`; otherwise the caller records it).
pub async fn super_budget(
    db: &DatabaseConnection,
    store: &dyn StoreReader,
    registry: &Registry,
    principal: &Principal,
    person: &PersonRecord,
    window: Window,
    record: Option<sources::RecordRead<'_>>,
) -> ApiResult<(BudgetView, bool)> {
    let scope = access::budget_scope(db, principal, &person.id).await?;
    let identifiers = person.identifier_pairs();
    let asked: Vec<_> = sources::asked(registry, &identifiers, scope.as_deref()).collect();
    let (streams, recorded) = sources::gather(db, store, &person.id, &asked, record).await?;
    // Every item counts against the streams it draws on; `commitments` keeps only the shares
    // on streams the caller may see, so a mixed item still commits its visible share.
    let items = store.plan_items(&person.id).await?;
    let commitments = commitments(&items, &window, scope.as_deref());
    let view = assemble(window, Utc::now().date_naive(), streams, &commitments);
    Ok((view, recorded))
}

/// Each item's shares in the window, for the streams in scope.
pub fn commitments(
    items: &[plan::Item],
    window: &Window,
    scope: Option<&[String]>,
) -> Vec<Commitment> {
    items
        .iter()
        .flat_map(|item| {
            item.in_window(window)
                .into_iter()
                .map(|(share, pence)| Commitment {
                    stream_id: share.stream_id.clone(),
                    item_id: item.id.clone(),
                    award_id: share.award_id.clone(),
                    pence,
                })
        })
        .filter(|c| scope.is_none_or(|ids| ids.contains(&c.stream_id)))
        .collect()
}

/// The trace as CSV: one `award` row per award in the window (stream, award, upstream record,
/// version, fetch time, content hash, entitlement) and one `share` row per plan share (item,
/// stream, pence in the window, the award it draws on and that award's upstream record).
pub async fn trace_csv(
    db: &DatabaseConnection,
    registry: &Registry,
    principal: &Principal,
    person: &PersonRecord,
    window: Window,
) -> ApiResult<String> {
    let (view, _) = super_budget(
        db,
        &DirectStore(db),
        registry,
        principal,
        person,
        window,
        None,
    )
    .await?;
    let scope = access::budget_scope(db, principal, &person.id).await?;
    let items = plan::for_people(db, std::slice::from_ref(&person.id))
        .await?
        .remove(&person.id)
        .unwrap_or_default();
    let pounds = |pence: i128| crate::graphql::scalars::format_pounds(to_pounds(pence));
    let mut out = csv::Writer::from_writer(Vec::new());
    let csv_error = |e: csv::Error| ApiError::internal(e, "writing the trace CSV");
    out.write_record([
        "kind",
        "window_from",
        "window_to",
        "stream",
        "award_id",
        "upstream_id",
        "upstream_version",
        "fetched_at",
        "content_hash",
        "award_entitlement",
        "item_id",
        "item_description",
        "share_percent",
        "share_in_window",
    ])
    .map_err(csv_error)?;
    let (from, to) = (view.window.from.to_string(), view.window.to.to_string());
    let awards: Vec<&crate::budget::assemble::AwardView> =
        view.streams.iter().flat_map(|s| &s.awards).collect();
    for (stream, award) in view
        .streams
        .iter()
        .flat_map(|s| s.awards.iter().map(move |a| (s, a)))
    {
        out.write_record([
            "award",
            &from,
            &to,
            &stream.id,
            &award.id,
            &award.award.upstream_id,
            award
                .award
                .version
                .as_deref()
                .or(award.source.version.as_deref())
                .unwrap_or(""),
            &award.source.fetched_at.to_rfc3339(),
            &award.source.content_hash,
            &pounds(award.entitlement),
            "",
            "",
            "",
            "",
        ])
        .map_err(csv_error)?;
    }
    for item in &items {
        for (share, pence) in item.in_window(&view.window) {
            if scope
                .as_ref()
                .is_some_and(|s| !s.contains(&share.stream_id))
            {
                continue;
            }
            let award = share
                .award_id
                .as_deref()
                .and_then(|id| awards.iter().find(|a| a.id == id));
            let percent = share
                .percent_hundredths
                .map(|h| crate::graphql::scalars::format_pounds(to_pounds(i128::from(h))))
                .unwrap_or_default();
            out.write_record([
                "share",
                &from,
                &to,
                &share.stream_id,
                share.award_id.as_deref().unwrap_or(""),
                award.map_or("", |a| a.award.upstream_id.as_str()),
                award
                    .and_then(|a| a.source.version.as_deref())
                    .unwrap_or(""),
                &award
                    .map(|a| a.source.fetched_at.to_rfc3339())
                    .unwrap_or_default(),
                award.map_or("", |a| a.source.content_hash.as_str()),
                &award.map(|a| pounds(a.entitlement)).unwrap_or_default(),
                &item.id,
                &item.description,
                &percent,
                &pounds(pence),
            ])
            .map_err(csv_error)?;
        }
    }
    let bytes = out
        .into_inner()
        .map_err(|e| ApiError::internal(anyhow::anyhow!("{e}"), "finishing the trace CSV"))?;
    String::from_utf8(bytes).map_err(|e| ApiError::internal(e, "the trace CSV is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn the_window_defaults_to_the_current_financial_year() {
        let w = resolve_window(None, None, None, d("2026-11-24")).unwrap();
        assert_eq!((w.from, w.to), (d("2026-04-01"), d("2027-03-31")));
        let w = resolve_window(None, None, None, d("2027-02-01")).unwrap();
        assert_eq!(w.from, d("2026-04-01"));
    }

    #[test]
    fn bad_windows_are_bad_input() {
        let today = d("2026-11-24");
        for (fy, from, to) in [
            (Some("2026-28"), None, None),
            (Some("2026-27"), Some(d("2026-04-01")), None),
            (None, Some(d("2026-04-02")), Some(d("2026-04-01"))),
            (None, Some(d("2026-04-02")), None),
            (None, Some(d("2000-01-01")), Some(d("2026-01-01"))),
        ] {
            assert!(matches!(
                resolve_window(fy, from, to, today),
                Err(ApiError::BadInput(_))
            ));
        }
    }
}
