//! The funding streams the hub is configured with.

use async_graphql::{Context, ID, Object, SimpleObject};

use super::{app, principal};

/// One funding stream, as configured.
#[derive(Clone, Debug, SimpleObject)]
pub struct FundingStream {
    /// The stream id used throughout the API, e.g. "la-social-care".
    pub id: ID,
    /// Its display name.
    pub name: String,
    /// The connector kind that reaches it, e.g. "la_social_care".
    pub kind: String,
}

/// Stream queries.
#[derive(Default)]
pub struct StreamsQuery;

#[Object]
impl StreamsQuery {
    /// Every funding stream this hub joins, in configuration order.
    async fn funding_streams(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Vec<FundingStream>> {
        principal(ctx)?;
        Ok(app(ctx)?
            .connectors
            .iter()
            .map(|c| FundingStream {
                id: ID(c.id.0.clone()),
                name: c.display_name().to_owned(),
                kind: c.kind.as_str().to_owned(),
            })
            .collect())
    }
}
