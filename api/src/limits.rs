//! Limits against abuse that are checked before a request reaches the schema: body size (refused
//! before it is read whole), content type (no CSRF-able form posts), batch size, alias count,
//! and a per-token rate limit. Depth, complexity and directives per field are the schema's own.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextValidation};
use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, Field, Selection, SelectionSet,
};
use async_graphql::{Pos, Positioned, ServerError, ValidationResult};
use futures::StreamExt;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::LimitSettings;

/// Why a request was refused before it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The body is larger than the limit.
    TooLarge(usize),
    /// The body is not JSON.
    NotJson,
    /// The body cannot be read as a GraphQL request.
    Malformed(String),
    /// Too many operations in a batch.
    BatchTooLarge { given: usize, limit: usize },
    /// Too many aliases.
    TooManyAliases { given: usize, limit: usize },
    /// The token is over its rate.
    RateLimited,
}

impl Refusal {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Self::TooLarge(_) => 413,
            Self::NotJson => 415,
            Self::RateLimited => 429,
            _ => 400,
        }
    }

    /// The `extensions.code`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::RateLimited => "RATE_LIMITED",
            _ => "BAD_USER_INPUT",
        }
    }

    /// What to tell the caller.
    pub fn message(&self) -> String {
        match self {
            Self::TooLarge(limit) => format!("the request body is larger than {limit} bytes"),
            Self::NotJson => "send GraphQL as JSON with Content-Type: application/json".into(),
            Self::Malformed(why) => format!("the request is not a GraphQL request: {why}"),
            Self::BatchTooLarge { given, limit } => {
                format!("a batch may hold at most {limit} operations; this one has {given}")
            }
            Self::TooManyAliases { given, limit } => {
                format!("a query may use at most {limit} aliases; this one uses {given}")
            }
            Self::RateLimited => "too many requests for this token; slow down and retry".into(),
        }
    }
}

/// Reads the body, refusing it as soon as it passes `limit` bytes.
pub async fn read_body(
    mut payload: actix_web::web::Payload,
    declared: Option<usize>,
    limit: usize,
) -> Result<Vec<u8>, Refusal> {
    if declared.is_some_and(|n| n > limit) {
        return Err(Refusal::TooLarge(limit));
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| Refusal::Malformed("the body could not be read".into()))?;
        if body.len() + chunk.len() > limit {
            return Err(Refusal::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Whether a Content-Type is JSON.
pub fn is_json(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

/// What `each` counts over the fields a selection set runs: a fragment counts once for every
/// spread of it, so a fragment cannot multiply what is counted past a limit. Recursion through
/// fragments is bounded.
fn count_fields(
    set: &SelectionSet,
    document: &ExecutableDocument,
    depth: usize,
    each: &dyn Fn(&Field) -> usize,
) -> usize {
    if depth > 32 {
        return usize::MAX / 4;
    }
    set.items
        .iter()
        .map(|selection| match &selection.node {
            Selection::Field(field) => each(&field.node).saturating_add(count_fields(
                &field.node.selection_set.node,
                document,
                depth + 1,
                each,
            )),
            Selection::InlineFragment(fragment) => {
                count_fields(&fragment.node.selection_set.node, document, depth + 1, each)
            }
            Selection::FragmentSpread(spread) => document
                .fragments
                .get(&spread.node.fragment_name.node)
                .map_or(0, |f| {
                    count_fields(&f.node.selection_set.node, document, depth + 1, each)
                }),
        })
        .fold(0, usize::saturating_add)
}

/// What `each` counts over a whole document, fragments expanded where they are spread.
fn count_document(document: &ExecutableDocument, each: &dyn Fn(&Field) -> usize) -> usize {
    match &document.operations {
        DocumentOperations::Single(op) => {
            count_fields(&op.node.selection_set.node, document, 0, each)
        }
        DocumentOperations::Multiple(ops) => ops
            .values()
            .map(|op| count_fields(&op.node.selection_set.node, document, 0, each))
            .fold(0, usize::saturating_add),
    }
}

/// Aliases a whole document runs, fragments expanded where they are spread.
pub fn aliases(document: &ExecutableDocument) -> usize {
    count_document(document, &|field| usize::from(field.alias.is_some()))
}

/// The field whose selection the budget walk answers (see `budget_answer`).
const BUDGET_FIELD: &str = "superBudget";

/// `set` with the selection of every superBudget field in it left out (each one's place in the
/// text kept).
fn leave_out_budgets(set: &mut SelectionSet) {
    for selection in &mut set.items {
        match &mut selection.node {
            Selection::Field(field) if field.node.name.node == BUDGET_FIELD => {
                field.node.selection_set.node.items = Vec::new();
            }
            Selection::Field(field) => leave_out_budgets(&mut field.node.selection_set.node),
            Selection::InlineFragment(fragment) => {
                leave_out_budgets(&mut fragment.node.selection_set.node);
            }
            Selection::FragmentSpread(_) => {}
        }
    }
}

/// `document` with every superBudget field's selection left out, in its operations and its
/// fragments (see [`Parsed::for_request`]).
fn lean(document: &ExecutableDocument) -> ExecutableDocument {
    let mut lean = document.clone();
    match &mut lean.operations {
        DocumentOperations::Single(op) => leave_out_budgets(&mut op.node.selection_set.node),
        DocumentOperations::Multiple(ops) => {
            for op in ops.values_mut() {
                leave_out_budgets(&mut op.node.selection_set.node);
            }
        }
    }
    for fragment in lean.fragments.values_mut() {
        leave_out_budgets(&mut fragment.node.selection_set.node);
    }
    lean
}

/// The selection set below `set` (or `set` itself) that starts at `pos`.
fn selection_set_at(set: &Positioned<SelectionSet>, pos: Pos) -> Option<&Positioned<SelectionSet>> {
    if set.pos == pos {
        return Some(set);
    }
    set.node
        .items
        .iter()
        .find_map(|selection| match &selection.node {
            Selection::Field(field) => selection_set_at(&field.node.selection_set, pos),
            Selection::InlineFragment(fragment) => {
                selection_set_at(&fragment.node.selection_set, pos)
            }
            Selection::FragmentSpread(_) => None,
        })
}

/// Parsed queries by their text. Clients send the same few query texts over and over (a
/// portal's superBudget query with different variables), and parsing is the largest single
/// cost of a request served from snapshots; a parsed copy is cloned instead. Small and bounded:
/// only texts up to [`DocumentCache::MAX_TEXT`] bytes, at most [`DocumentCache::MAX_ENTRIES`],
/// emptied when full.
#[derive(Debug, Default)]
pub struct DocumentCache(std::sync::Mutex<HashMap<String, Arc<Parsed>>>);

/// A parsed query text, and what the schema's validation found when it passed it.
///
/// GraphQL's validation rules are the schema's checks of the document: fields, fragments,
/// variables' declared types and positions, literal arguments. All but one depend on the
/// document alone; the one that also reads the variables' values (arguments of the correct
/// type) is repeated anyway when a resolver reads its arguments, which refuses a bad value with
/// a typed error. The limits' figures (depth, complexity, cache control) depend on the document
/// alone too, as no field of this schema computes its complexity from its arguments (a test
/// holds that). So a query text the validation passed once is not validated again: its result
/// is answered from here ([`ValidatedBefore`]). Only queries without directives take this
/// path: a mutation's arguments are always checked before anything runs, and a directive's
/// variable (`@skip(if: $x)`) is read where no resolver would check it.
#[derive(Debug)]
pub struct Parsed {
    document: ExecutableDocument,
    /// A query operation only, with no directive anywhere (the text has no `@`).
    eligible: bool,
    validated: std::sync::OnceLock<ValidationResult>,
    /// How many superBudget fields it runs, fragments expanded.
    budgets: usize,
    /// How many aliases it runs, fragments expanded (see [`aliases`]).
    aliases: usize,
    /// Whether every request of the text runs the same selections, each found by where it
    /// starts in the text (see [`Parsed::same_in_every_request`]).
    same: bool,
    /// What its budget fields select, planned once for the text (see `budget_answer`).
    plans: crate::graphql::budget_answer::Plans,
    /// The document without its budgets' selections, made for the first request that may run
    /// it (see [`Parsed::for_request`]).
    lean: std::sync::OnceLock<ExecutableDocument>,
}

impl Parsed {
    fn new(text: &str, document: ExecutableDocument) -> Self {
        let queries_only = document
            .operations
            .iter()
            .all(|(_, op)| op.node.ty == async_graphql::parser::types::OperationType::Query);
        let budgets = count_document(&document, &|field| {
            usize::from(field.name.node.as_str() == BUDGET_FIELD)
        });
        let eligible = queries_only && !text.contains('@');
        // The parser ends a line at a lone carriage return without counting a new one, so two
        // selections of such a text could start at the same line and column.
        let lone_cr = text.split("\r\n").any(|line| line.contains('\r'));
        Self {
            same: eligible && !lone_cr,
            lean: Default::default(),
            eligible,
            validated: Default::default(),
            budgets,
            aliases: aliases(&document),
            plans: Default::default(),
            document,
        }
    }

    /// What its budget fields select, planned when the text's first budget is walked.
    pub fn plans(&self) -> &crate::graphql::budget_answer::Plans {
        &self.plans
    }

    /// Whether every request of the text runs the same selections, so that what a budget
    /// selects can be planned once for the text and read from its own document: a query
    /// operation with no directive (a request's variables prune nothing: async-graphql drops
    /// the selections `@skip` and `@include` leave out, and the directives themselves, from
    /// each request's copy), and no line broken by a lone carriage return (each selection set
    /// starts at a line and column of its own, where its plan is kept).
    pub fn same_in_every_request(&self) -> bool {
        self.same
    }

    /// How many aliases the text runs, counted once for the text rather than on every request.
    pub fn aliases(&self) -> usize {
        self.aliases
    }

    /// How many superBudget fields the text runs (a fragment once for every spread of it):
    /// where there is one, no other answer is merged into its answer (see `budget_answer`).
    pub fn budgets(&self) -> usize {
        self.budgets
    }

    /// The document.
    pub fn document(&self) -> &ExecutableDocument {
        &self.document
    }

    /// The copy of the document a request of this text runs. Once the schema has validated the
    /// text (and so will not again, see [`ValidatedBefore`]), it is the lean copy: every
    /// superBudget field's selection left out, as the budget walk answers it from the plan kept
    /// here, made from this text's own whole document (see `budget_answer`). A request then
    /// copies the few nodes around its budgets rather than the whole tree, which was 6% of the
    /// instructions of a budget served from snapshots, and the schema's own passes over the
    /// document (its depth and directive checks) have that much less to walk.
    pub fn for_request(&self) -> ExecutableDocument {
        if self.same && self.budgets > 0 && self.validated().is_some() {
            self.lean.get_or_init(|| lean(&self.document)).clone()
        } else {
            self.document.clone()
        }
    }

    /// The selection set of the whole document that starts at `pos` in the text: a budget's
    /// selection, which a request's lean copy leaves out.
    pub fn selection_set_at(&self, pos: Pos) -> Option<&Positioned<SelectionSet>> {
        self.document
            .operations
            .iter()
            .map(|(_, op)| &op.node.selection_set)
            .chain(
                self.document
                    .fragments
                    .values()
                    .map(|f| &f.node.selection_set),
            )
            .find_map(|set| selection_set_at(set, pos))
    }

    /// What the validation found when it passed this text before, if it did (and the text may
    /// skip it).
    pub fn validated(&self) -> Option<ValidationResult> {
        self.validated.get().copied().filter(|_| self.eligible)
    }

    /// Keeps what the validation found when it passed this text.
    pub fn note_validated(&self, result: ValidationResult) {
        if self.eligible {
            // Another request may have kept the same text's result first: the same figures.
            let _ = self.validated.set(result);
        }
    }
}

/// The schema extension that validates a query text once: a request that carries its
/// [`Parsed`] text (as request data) answers the validation from it when the text passed
/// before, and keeps the result when it passes now. Validation was about a tenth of the
/// hub's instructions for a budget served from snapshots.
#[derive(Default)]
pub struct ValidatedBefore(Arc<ValidatedBeforeExtension>);

#[derive(Default)]
struct ValidatedBeforeExtension;

impl ExtensionFactory for ValidatedBefore {
    fn create(&self) -> Arc<dyn Extension> {
        self.0.clone()
    }
}

#[async_trait::async_trait]
impl Extension for ValidatedBeforeExtension {
    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let parsed = ctx.data_opt::<Arc<Parsed>>();
        if let Some(result) = parsed.and_then(|p| p.validated()) {
            return Ok(result);
        }
        let result = next.run(ctx).await?;
        if let Some(parsed) = parsed {
            parsed.note_validated(result);
        }
        Ok(result)
    }
}

impl DocumentCache {
    /// The longest query text kept.
    pub const MAX_TEXT: usize = 16 * 1024;
    /// The most texts kept.
    pub const MAX_ENTRIES: usize = 256;

    /// The parsed document for `query`, from the cache or parsed now; `None` if it does not
    /// parse (the schema then reports the error precisely).
    pub fn parse(&self, query: &str) -> Option<Arc<Parsed>> {
        let lock = || {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if let Some(doc) = lock().get(query) {
            return Some(doc.clone());
        }
        let doc = Arc::new(Parsed::new(
            query,
            async_graphql::parser::parse_query(query).ok()?,
        ));
        if query.len() <= Self::MAX_TEXT {
            let mut cache = lock();
            if cache.len() >= Self::MAX_ENTRIES {
                cache.clear();
            }
            cache.insert(query.to_owned(), doc.clone());
        }
        Some(doc)
    }

    /// How many texts are kept.
    pub fn len(&self) -> usize {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Checks a batch against the limits, and hands each request its parsed document (so the
/// schema does not parse it again). Returns each request's parsed text, in order (`None` for
/// one that does not parse).
pub fn check_batch(
    batch: &mut async_graphql::BatchRequest,
    limits: &LimitSettings,
    documents: &DocumentCache,
) -> Result<Vec<Option<Arc<Parsed>>>, Refusal> {
    let count = batch.iter().count();
    if count > limits.max_batch {
        return Err(Refusal::BatchTooLarge {
            given: count,
            limit: limits.max_batch,
        });
    }
    let mut parsed = Vec::with_capacity(count);
    for request in batch.iter_mut() {
        // A query that does not parse is left to the schema, which reports it precisely.
        let document = documents.parse(&request.query);
        if let Some(document) = &document {
            let given = document.aliases();
            if given > limits.max_aliases {
                return Err(Refusal::TooManyAliases {
                    given,
                    limit: limits.max_aliases,
                });
            }
            request.set_parsed_query(document.for_request());
        }
        parsed.push(document);
    }
    Ok(parsed)
}

/// A rate limiter keyed by token subject and role.
pub struct TokenRate(DefaultKeyedRateLimiter<String>);

impl std::fmt::Debug for TokenRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenRate")
    }
}

impl TokenRate {
    /// As configured.
    pub fn new(limits: &LimitSettings) -> Self {
        let per_second = NonZeroU32::new(limits.per_token_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.per_token_burst).unwrap_or(NonZeroU32::MIN);
        Self(RateLimiter::keyed(
            Quota::per_second(per_second).allow_burst(burst),
        ))
    }

    /// Whether `key` may make another request now.
    pub fn check(&self, key: &str) -> Result<(), Refusal> {
        self.0
            .check_key(&key.to_owned())
            .map_err(|_| Refusal::RateLimited)
    }
}

/// The field named `name` among `set`'s own selections, if there is one.
#[cfg(test)]
pub(crate) fn field_named<'d>(set: &'d SelectionSet, name: &str) -> Option<&'d Positioned<Field>> {
    set.items.iter().find_map(|s| match &s.node {
        Selection::Field(f) if f.node.name.node == name => Some(f),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_text_is_parsed_once_and_the_cache_stays_bounded() {
        let cache = DocumentCache::default();
        let first = cache.parse("{ a b }").unwrap();
        let again = cache.parse("{ a b }").unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "the second parse was not served from the cache"
        );
        assert!(cache.parse("{ a ").is_none());
        assert_eq!(cache.len(), 1, "a text that does not parse is not kept");
        for i in 0..DocumentCache::MAX_ENTRIES + 10 {
            cache.parse(&format!("{{ f{i} }}")).unwrap();
        }
        assert!(cache.len() <= DocumentCache::MAX_ENTRIES);
        let long = format!("{{ {} }}", "x ".repeat(DocumentCache::MAX_TEXT));
        let before = cache.len();
        cache.parse(&long).unwrap();
        assert!(cache.len() <= before, "an over-long text is not kept");
    }

    fn passed() -> ValidationResult {
        ValidationResult {
            cache_control: Default::default(),
            complexity: 3,
            depth: 2,
        }
    }

    #[test]
    fn only_a_query_text_without_directives_keeps_what_the_validation_found() {
        let cache = DocumentCache::default();
        let query = cache
            .parse("query($id: ID!) { person(id: $id) { id } }")
            .unwrap();
        assert!(query.validated().is_none(), "nothing has run yet");
        query.note_validated(passed());
        assert_eq!(query.validated().map(|r| r.complexity), Some(3));
        assert!(
            cache
                .parse("query($id: ID!) { person(id: $id) { id } }")
                .unwrap()
                .validated()
                .is_some(),
            "the same text, from the cache"
        );
        for text in [
            "mutation($id: ID!) { unlinkIdentifier(id: $id) { id } }",
            "query($x: Boolean!) { fundingStreams @include(if: $x) { id } }",
            "query A { fundingStreams { id } } mutation B { x }",
        ] {
            let other = cache.parse(text).unwrap();
            other.note_validated(passed());
            assert!(other.validated().is_none(), "{text}");
        }
    }

    /// The text of every field in `document`, in order, with the number of selections below
    /// each: what a request's copy of it holds.
    fn outline(document: &ExecutableDocument) -> Vec<(String, usize)> {
        fn walk(set: &SelectionSet, out: &mut Vec<(String, usize)>) {
            for selection in &set.items {
                match &selection.node {
                    Selection::Field(f) => {
                        let below = &f.node.selection_set.node;
                        out.push((f.node.name.node.to_string(), below.items.len()));
                        walk(below, out);
                    }
                    Selection::InlineFragment(f) => walk(&f.node.selection_set.node, out),
                    Selection::FragmentSpread(s) => {
                        out.push((format!("...{}", s.node.fragment_name.node), 0));
                    }
                }
            }
        }
        let mut out = Vec::new();
        let mut fragments: Vec<_> = document.fragments.iter().collect();
        fragments.sort_by_key(|(name, _)| name.to_string());
        for set in document
            .operations
            .iter()
            .map(|(_, op)| &op.node.selection_set)
            .chain(fragments.into_iter().map(|(_, f)| &f.node.selection_set))
        {
            walk(&set.node, &mut out);
        }
        out
    }

    #[test]
    fn a_text_validated_before_runs_without_its_budgets_selections() {
        let cache = DocumentCache::default();
        let text = "query($id: ID!) { person(id: $id) { id ...P superBudget { gross { amount } } } } \
                    fragment P on Person { name superBudget { net { amount } } }";
        let parsed = cache.parse(text).unwrap();
        let whole = outline(parsed.document());
        assert_eq!(outline(&parsed.for_request()), whole, "not validated yet");
        parsed.note_validated(passed());
        let lean = outline(&parsed.for_request());
        let expected: Vec<(String, usize)> = whole
            .iter()
            .filter(|(name, _)| !["gross", "net", "amount"].contains(&name.as_str()))
            .map(|(name, below)| (name.clone(), if name == BUDGET_FIELD { 0 } else { *below }))
            .collect();
        assert_eq!(lean, expected);
        assert_eq!(
            lean.iter().filter(|(name, _)| name == BUDGET_FIELD).count(),
            2,
            "{lean:?}"
        );
        // Each budget's whole selection is found in the text by where it starts.
        let doc = parsed.for_request();
        let (_, operation) = doc.operations.iter().next().unwrap();
        let Selection::Field(person) = &operation.node.selection_set.node.items[0].node else {
            panic!("a field");
        };
        let budget = field_named(&person.node.selection_set.node, BUDGET_FIELD).unwrap();
        let found = parsed
            .selection_set_at(budget.node.selection_set.pos)
            .unwrap();
        assert_eq!(found.node.items.len(), 1);
        assert!(
            parsed
                .selection_set_at(Pos {
                    line: 99,
                    column: 1
                })
                .is_none()
        );
        // A text with directives is validated on every request, so always runs whole.
        let with_directive = cache
            .parse("query($x: Boolean!) { person(id: 1) { superBudget @include(if: $x) { gross { amount } } } }")
            .unwrap();
        with_directive.note_validated(passed());
        assert_eq!(
            outline(&with_directive.for_request()),
            outline(with_directive.document())
        );
    }

    #[test]
    fn only_a_text_whose_requests_all_run_the_same_selections_keeps_its_plans() {
        let cache = DocumentCache::default();
        for (text, same) in [
            (
                "{ person(id: 1) { superBudget { gross { amount } } } }",
                true,
            ),
            (
                "{ person(id: 1) {\r\n superBudget { gross { amount } } } }",
                true,
            ),
            (
                "{ person(id: 1) {\r superBudget { gross { amount } } } }",
                false,
            ),
            (
                "{ person(id: 1) { superBudget { gross { amount } } } }\r",
                false,
            ),
            (
                "query($x: Boolean!) { person(id: 1) { superBudget { gross @include(if: $x) { amount } } } }",
                false,
            ),
            ("mutation { x }", false),
        ] {
            let parsed = cache.parse(text).unwrap();
            assert_eq!(parsed.same_in_every_request(), same, "{text:?}");
            parsed.note_validated(passed());
            assert_eq!(
                outline(&parsed.for_request()) != outline(parsed.document()),
                same && text.contains(BUDGET_FIELD),
                "lean only where the selections are the same: {text:?}"
            );
        }
    }

    /// A request's lean copy leaves out the selection of every field named superBudget, which
    /// only the budget walk may answer: so the schema's one such field is the person's, whose
    /// resolver answers a `BudgetAnswer`. A field of that name added anywhere else fails here.
    #[test]
    fn the_only_field_named_super_budget_is_the_persons() {
        use async_graphql::parser::types::{TypeKind, TypeSystemDefinition};
        let sdl = crate::graphql::sdl();
        let schema = async_graphql::parser::parse_schema(&sdl).unwrap();
        let mut found = Vec::new();
        for definition in &schema.definitions {
            let TypeSystemDefinition::Type(ty) = definition else {
                continue;
            };
            let fields = match &ty.node.kind {
                TypeKind::Object(object) => &object.fields,
                TypeKind::Interface(interface) => &interface.fields,
                _ => continue,
            };
            for field in fields {
                if field.node.name.node == BUDGET_FIELD {
                    found.push(format!("{}.{}", ty.node.name.node, field.node.ty.node));
                }
            }
        }
        assert_eq!(found, ["Person.SuperBudget!"]);
    }

    /// Runs `parsed` on a schema with `ValidatedBefore` whose complexity limit is
    /// `max_complexity`; answers the messages of the errors that are not a field's (the
    /// validation's; the fields fail, as no caller is set).
    async fn run(parsed: &Arc<Parsed>, max_complexity: usize) -> Vec<String> {
        let limits = LimitSettings {
            max_complexity,
            ..LimitSettings::default()
        };
        let schema = crate::graphql::schema_builder(&limits)
            .extension(ValidatedBefore::default())
            .finish();
        let mut request = async_graphql::Request::new("unused");
        request.set_parsed_query(parsed.document().clone());
        let response = schema.execute(request.data(parsed.clone())).await;
        response
            .errors
            .into_iter()
            .filter(|e| e.path.is_empty())
            .map(|e| e.message)
            .collect()
    }

    #[tokio::test]
    async fn a_text_the_validation_passed_is_not_validated_again() {
        let text = "{ a: fundingStreams { id } b: fundingStreams { id } }";
        let cache = DocumentCache::default();
        let first = cache.parse(text).unwrap();
        // Validated now, under a limit it passes: what it found is kept.
        assert_eq!(run(&first, 100).await, Vec::<String>::new());
        let kept = first.validated().expect("the result was kept");
        assert!(kept.complexity > 1, "{}", kept.complexity);
        // The same text again is answered from what was kept: a schema whose limit it would
        // now fail does not validate it again.
        assert_eq!(run(&first, 1).await, Vec::<String>::new());
        // Where it was not passed before, that schema validates it and refuses it.
        let fresh = Arc::new(Parsed::new(
            text,
            async_graphql::parser::parse_query(text).unwrap(),
        ));
        assert_eq!(
            run(&fresh, 1).await,
            vec!["Query is too complex.".to_owned()]
        );
        assert!(fresh.validated().is_none(), "a refusal is not kept");
    }

    #[test]
    fn no_field_computes_its_complexity_from_its_arguments() {
        // What `Parsed` relies on to keep a text's complexity whatever its variables.
        let mut registry = async_graphql::registry::Registry::default();
        <crate::graphql::Query as async_graphql::OutputType>::create_type_info(&mut registry);
        <crate::graphql::Mutation as async_graphql::OutputType>::create_type_info(&mut registry);
        let computed: Vec<String> = registry
            .types
            .values()
            .filter_map(|t| Some((t.name(), t.fields()?)))
            .flat_map(|(ty, fields)| {
                fields
                    .values()
                    .filter(|f| f.compute_complexity.is_some())
                    .map(move |f| format!("{ty}.{}", f.name))
            })
            .collect();
        assert!(registry.types.len() > 10, "{}", registry.types.len());
        assert_eq!(computed, Vec::<String>::new());
    }

    #[test]
    fn budget_fields_are_counted_through_nesting_and_fragments() {
        let cache = DocumentCache::default();
        let budgets = |text: &str| cache.parse(text).unwrap().budgets();
        assert_eq!(
            budgets("query($id: ID!) { person(id: $id) { superBudget { gross { amount } } } }"),
            1
        );
        assert_eq!(budgets("{ fundingStreams { id } }"), 0);
        assert_eq!(
            budgets(
                "query($id: ID!) { person(id: $id) { superBudget { net { amount } } b: superBudget { gross { amount } } } }"
            ),
            2
        );
        assert_eq!(
            budgets(
                "query($id: ID!) { a: person(id: $id) { ...P } b: person(id: $id) { ...P } } fragment P on Person { superBudget { net { amount } } }"
            ),
            2
        );
        assert_eq!(
            budgets(
                "query($id: ID!) { person(id: $id) { ... on Person { superBudget { net { amount } } } } }"
            ),
            1
        );
        // The aliases are kept with the text too, for `check_batch` to read on every request.
        let text = "query($id: ID!) { a: person(id: $id) { ...P } b: person(id: $id) { ...P } } fragment P on Person { x: id }";
        assert_eq!(cache.parse(text).unwrap().aliases(), 4);
    }

    #[test]
    fn aliases_are_counted_through_nesting_and_fragments() {
        let doc = async_graphql::parser::parse_query(
            "query { a: fundingStreams { id } b: fundingStreams { x: id } ...F } fragment F on Query { c: fundingStreams { id } }",
        )
        .unwrap();
        assert_eq!(aliases(&doc), 4);
    }

    #[test]
    fn a_fragment_counts_once_per_spread() {
        let doc = async_graphql::parser::parse_query(
            "query { a: people { ...F } b: people { ...F } c: people { ...F } } fragment F on PersonConnection { x: pageInfo { hasNextPage } y: pageInfo { hasNextPage } }",
        )
        .unwrap();
        assert_eq!(aliases(&doc), 3 + 3 * 2);
    }

    #[test]
    fn json_content_types() {
        assert!(is_json(Some("application/json")));
        assert!(is_json(Some("application/json; charset=utf-8")));
        assert!(!is_json(Some("text/plain")));
        assert!(!is_json(Some("application/x-www-form-urlencoded")));
        assert!(!is_json(None));
    }
}
