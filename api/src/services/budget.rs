//! The combined view for one person: which window, which streams the caller may see, gathered
//! from the snapshot store and assembled by the pure budget arithmetic.

use chrono::{NaiveDate, Utc};
use connectors::Registry;
use sea_orm::DatabaseConnection;

use crate::auth::Principal;
use crate::budget::assemble::{BudgetView, assemble};
use crate::budget::period::Window;
use crate::error::{ApiError, ApiResult};
use crate::services::access;
use crate::services::persons::PersonRecord;
use crate::services::sources;

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

/// The person's combined budget in `window`, as far as `principal` may see it.
pub async fn super_budget(
    db: &DatabaseConnection,
    registry: &Registry,
    principal: &Principal,
    person: &PersonRecord,
    window: Window,
) -> ApiResult<BudgetView> {
    let scope = access::budget_scope(db, principal, &person.id).await?;
    let streams =
        sources::gather(db, registry, &person.identifier_pairs(), scope.as_deref()).await?;
    Ok(assemble(window, Utc::now().date_naive(), streams, &[]))
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
