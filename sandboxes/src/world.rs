//! A seeded world: people, their identifiers, and every partner's records about them.

use std::collections::HashSet;

use chrono::NaiveDate;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;
use serde::Serialize;

/// The seed `tributary demo` uses.
pub const DEMO_SEED: u64 = 20_260_401;

const GIVEN: [&str; 24] = [
    "Ada", "Ben", "Chloe", "Dev", "Esme", "Farah", "George", "Hana", "Idris", "Jade", "Kofi",
    "Lena", "Marek", "Nia", "Owen", "Priya", "Quinn", "Rosa", "Sami", "Tess", "Uma", "Vik", "Wren",
    "Yusuf",
];
const FAMILY: [&str; 24] = [
    "Okafor", "O'Neill", "Patel", "Nowak", "Evans", "Khan", "Smith", "Jones", "Williams", "Brown",
    "Taylor", "Davies", "Wilson", "Hughes", "Ahmed", "Roberts", "Walker", "Wright", "Thompson",
    "White", "Green", "Hall", "Clarke", "Lewis",
];
const NINO_FIRST: &[u8] = b"ABCEGHJKLMNOPRSTWXYZ";
const NINO_SECOND: &[u8] = b"ABCEGHJKLMNPRSTWXYZ";

/// Why a person is in the world: the awkward cases the demo and tests must cover.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Case {
    /// Funded by all four streams, matching the upstream pages' own examples.
    AllFourStreams,
    /// A council budget that starts part-way through the year.
    PartYearAward,
    /// An ILF award that is suspended.
    SuspendedAward,
    /// A council contribution larger than the budget.
    ContributionAboveGross,
    /// One wheelchair used at home and at work, argued over by two funds.
    SharedWheelchair,
    /// Known to one stream only.
    OneStreamOnly,
    /// The council holds two client records for the same person.
    DuplicateCouncilRecord,
    /// Anyone else.
    Ordinary,
}

/// A council client record (la-social-care.md).
#[derive(Clone, Debug, Serialize)]
pub struct CouncilClient {
    /// The council's id.
    pub client_id: String,
    /// NHS number.
    pub nhs_number: String,
    /// Family name.
    pub family_name: String,
    /// Given name.
    pub given_name: String,
    /// Date of birth, ISO.
    pub date_of_birth: NaiveDate,
    /// The council's code.
    pub council_code: String,
    /// The client's personal budgets.
    #[serde(skip)]
    pub personal_budgets: Vec<CouncilBudget>,
}

/// The RAS block.
#[derive(Clone, Debug, Serialize)]
pub struct Ras {
    /// Self-assessment points.
    pub points: u32,
    /// Price per point.
    pub price_per_point: Decimal,
    /// Indicative yearly figure.
    pub indicative_annual: Decimal,
}

/// A council personal budget.
#[derive(Clone, Debug, Serialize)]
pub struct CouncilBudget {
    /// Budget id.
    pub budget_id: String,
    /// indicative | agreed | suspended | ended.
    pub status: String,
    /// The RAS, if any.
    pub ras: Option<Ras>,
    /// Start.
    pub start_date: NaiveDate,
    /// End, if any.
    pub end_date: Option<NaiveDate>,
    /// Review.
    pub review_date: Option<NaiveDate>,
    /// weekly | four_weekly.
    pub frequency: String,
    /// Per period.
    pub gross_amount: Decimal,
    /// Per period.
    pub client_contribution: Decimal,
    /// Lines summing to gross.
    pub lines: Vec<CouncilLine>,
    /// Change marker.
    pub version: u32,
    /// Change marker.
    pub updated_at: String,
}

/// A council budget line.
#[derive(Clone, Debug, Serialize)]
pub struct CouncilLine {
    /// Line id.
    pub line_id: String,
    /// What it is for.
    pub support_type: String,
    /// Per period.
    pub amount: Decimal,
    /// How it is delivered.
    pub delivery: String,
}

/// One ILF extract row (ilf.md), amounts and dates already in the extract's own text forms.
#[derive(Clone, Debug, Serialize)]
pub struct IlfRow {
    /// The fund's award id.
    pub ilf_reference: String,
    /// NINO as the fund writes it.
    pub nino: String,
    /// Family name.
    pub family_name: String,
    /// DD/MM/YYYY.
    pub date_of_birth: String,
    /// Pounds, possibly with a thousands comma.
    pub award_amount: String,
    /// Always 4-weekly.
    pub award_period: String,
    /// DD/MM/YYYY.
    pub start_date: String,
    /// DD/MM/YYYY or empty.
    pub end_date: String,
    /// DD/MM/YYYY.
    pub next_review: String,
    /// active | suspended | closed.
    pub status: String,
}

/// An Access to Work award (access-to-work.md).
#[derive(Clone, Debug, Serialize)]
pub struct AtwAward {
    /// Award ref.
    pub award_ref: String,
    /// Employer.
    pub employer: String,
    /// Start.
    pub start_date: NaiveDate,
    /// End.
    pub end_date: Option<NaiveDate>,
    /// active | ended | withdrawn.
    pub status: String,
    /// reimbursement | direct_to_supplier.
    pub payment_route: String,
    /// Elements.
    pub elements: Vec<AtwElement>,
}

/// An Access to Work element: annual or one-off.
#[derive(Clone, Debug, Serialize)]
pub struct AtwElement {
    /// Element kind.
    pub element: String,
    /// Yearly amount.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annual_amount: Option<Decimal>,
    /// Hours a week (support workers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hours_per_week: Option<Decimal>,
    /// Hourly rate (support workers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hourly_rate: Option<Decimal>,
    /// One-off amount.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub one_off_amount: Option<Decimal>,
    /// One-off payment date.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_date: Option<NaiveDate>,
    /// Description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A claim Access to Work has paid.
#[derive(Clone, Debug, Serialize)]
pub struct AtwClaim {
    /// Claim ref.
    pub claim_ref: String,
    /// Award ref.
    pub award_ref: String,
    /// Element.
    pub element: String,
    /// Period start.
    pub period_start: NaiveDate,
    /// Period end.
    pub period_end: NaiveDate,
    /// Amount paid.
    pub amount: Decimal,
    /// Paid on.
    pub paid_on: NaiveDate,
}

/// A personal health budget (phb.md).
#[derive(Clone, Debug, Serialize)]
pub struct PhbBudget {
    /// Budget id.
    pub budget_id: String,
    /// Type.
    #[serde(rename = "type")]
    pub kind: String,
    /// notional | third_party | direct_payment.
    pub management: String,
    /// Yearly amount.
    pub annual_amount: Decimal,
    /// Start.
    pub start_date: NaiveDate,
    /// End.
    pub end_date: Option<NaiveDate>,
    /// Review.
    pub review_date: Option<NaiveDate>,
    /// Care plan lines summing to the amount.
    pub care_plan: Vec<PhbItem>,
}

/// A care-plan line.
#[derive(Clone, Debug, Serialize)]
pub struct PhbItem {
    /// Item id.
    pub item_id: String,
    /// Description.
    pub description: String,
    /// Yearly amount.
    pub annual_amount: Decimal,
}

/// One synthetic person and everything the partners hold about them.
#[derive(Clone, Debug)]
pub struct SyntheticPerson {
    /// Why they are here.
    pub case: Case,
    /// Given name.
    pub given_name: String,
    /// Family name.
    pub family_name: String,
    /// Date of birth.
    pub date_of_birth: NaiveDate,
    /// NHS number (valid Modulus 11).
    pub nhs_number: String,
    /// NINO (valid prefix and suffix).
    pub nino: String,
    /// The council's client records (two for a duplicate).
    pub council: Vec<CouncilClient>,
    /// The ILF's rows about them.
    pub ilf: Vec<IlfRow>,
    /// Access to Work awards.
    pub atw_awards: Vec<AtwAward>,
    /// Access to Work claims paid.
    pub atw_claims: Vec<AtwClaim>,
    /// Personal health budgets.
    pub phb: Vec<PhbBudget>,
}

impl SyntheticPerson {
    /// The council client id the hub should link, unless the council's records are ambiguous.
    pub fn council_client_id(&self) -> Option<&str> {
        match self.council.as_slice() {
            [one] => Some(one.client_id.as_str()),
            _ => None,
        }
    }

    /// The ILF reference, if the fund knows them.
    pub fn ilf_reference(&self) -> Option<&str> {
        self.ilf.first().map(|r| r.ilf_reference.as_str())
    }
}

/// The whole synthetic population.
#[derive(Clone, Debug)]
pub struct World {
    /// Everyone, the awkward cases first.
    pub people: Vec<SyntheticPerson>,
}

fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap_or(NaiveDate::MIN)
}

fn pounds(pence: i64) -> Decimal {
    Decimal::new(pence, 2)
}

fn uk(d: NaiveDate) -> String {
    d.format("%d/%m/%Y").to_string()
}

/// Formats pounds as the ILF extract does, with a thousands comma when asked.
fn ilf_amount(amount: Decimal, comma: bool) -> String {
    let text = format!("{amount:.2}");
    if !comma || amount < Decimal::from(1000) {
        return text;
    }
    let (whole, frac) = text.split_once('.').unwrap_or((&text, "00"));
    let mut out = String::new();
    for (i, ch) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    format!("{out}.{frac}")
}

struct Generator {
    rng: ChaCha8Rng,
    ninos: HashSet<String>,
    nhs: HashSet<String>,
}

impl Generator {
    fn nhs_number(&mut self) -> String {
        loop {
            let mut digits = [0u8; 9];
            for d in &mut digits {
                *d = self.rng.random_range(0..10);
            }
            digits[0] = self.rng.random_range(4..10);
            let Some(check) = connectors::identifiers::nhs_check_digit(digits) else {
                continue;
            };
            let text: String = digits
                .iter()
                .chain(std::iter::once(&check))
                .map(|d| char::from(b'0' + d))
                .collect();
            if self.nhs.insert(text.clone()) {
                return text;
            }
        }
    }

    fn nino(&mut self) -> String {
        loop {
            let first = NINO_FIRST[self.rng.random_range(0..NINO_FIRST.len())];
            let second = NINO_SECOND[self.rng.random_range(0..NINO_SECOND.len())];
            let prefix = format!("{}{}", char::from(first), char::from(second));
            if ["BG", "GB", "KN", "NK", "NT", "TN", "ZZ"].contains(&prefix.as_str()) {
                continue;
            }
            let number: u32 = self.rng.random_range(0..1_000_000);
            let suffix = char::from(b'A' + self.rng.random_range(0..4u8));
            let text = format!("{prefix}{number:06}{suffix}");
            if self.ninos.insert(text.clone()) {
                return text;
            }
        }
    }

    fn amount(&mut self, low: i64, high: i64, step: i64) -> Decimal {
        let steps = (high - low) / step;
        pounds(low + self.rng.random_range(0..=steps) * step)
    }

    fn review(&mut self) -> NaiveDate {
        date(2026, 4, 1) + chrono::Duration::days(self.rng.random_range(0..420))
    }
}

fn council_budget(
    id: usize,
    status: &str,
    start: NaiveDate,
    end: Option<NaiveDate>,
    review: NaiveDate,
    lines: &[(&str, i64, &str)],
    contribution_pence: i64,
) -> CouncilBudget {
    let gross: i64 = lines.iter().map(|(_, p, _)| p).sum();
    let points = u32::try_from(gross / 500).unwrap_or(0).max(10);
    CouncilBudget {
        budget_id: format!("PB-2026-{id:04}"),
        status: status.into(),
        ras: Some(Ras {
            points,
            price_per_point: pounds(25_000),
            indicative_annual: pounds(i64::from(points) * 25_000),
        }),
        start_date: start,
        end_date: end,
        review_date: Some(review),
        frequency: "weekly".into(),
        gross_amount: pounds(gross),
        client_contribution: pounds(contribution_pence),
        lines: lines
            .iter()
            .enumerate()
            .map(|(i, (kind, pence, delivery))| CouncilLine {
                line_id: format!("L{}", i + 1),
                support_type: (*kind).into(),
                amount: pounds(*pence),
                delivery: (*delivery).into(),
            })
            .collect(),
        version: 1 + u32::try_from(id % 9).unwrap_or(0),
        updated_at: "2026-10-02T09:12:00Z".into(),
    }
}

impl World {
    /// The demo's world: `n` people (at least the awkward cases) from `seed`.
    pub fn generate(seed: u64, n: usize) -> Self {
        let mut g = Generator {
            rng: ChaCha8Rng::seed_from_u64(seed),
            ninos: HashSet::new(),
            nhs: HashSet::new(),
        };
        let cases = [
            Case::AllFourStreams,
            Case::PartYearAward,
            Case::SuspendedAward,
            Case::ContributionAboveGross,
            Case::SharedWheelchair,
            Case::OneStreamOnly,
            Case::DuplicateCouncilRecord,
        ];
        let total = n.max(cases.len());
        let mut people = Vec::with_capacity(total);
        // The upstream pages' own examples belong to the first person.
        g.nhs.insert("9434765919".into());
        g.ninos.insert("AB123456C".into());
        for i in 0..total {
            let case = cases.get(i).copied().unwrap_or(Case::Ordinary);
            people.push(Self::person(&mut g, i, case));
        }
        Self { people }
    }

    /// A world grown from `seed` until its ILF extract holds at least `rows` rows: the same
    /// people [`World::generate`] makes, in the same order, as many as it takes (about one
    /// person in three has an ILF award). For measuring the extract at a chosen size.
    pub fn generate_with_ilf_rows(seed: u64, rows: usize) -> Self {
        let mut g = Generator {
            rng: ChaCha8Rng::seed_from_u64(seed),
            ninos: HashSet::new(),
            nhs: HashSet::new(),
        };
        g.nhs.insert("9434765919".into());
        g.ninos.insert("AB123456C".into());
        let mut people = Vec::new();
        let mut found = 0;
        let mut i = 0;
        while found < rows {
            let person = Self::person(&mut g, i, Case::Ordinary);
            found += person.ilf.len();
            people.push(person);
            i += 1;
        }
        Self { people }
    }

    fn person(g: &mut Generator, i: usize, case: Case) -> SyntheticPerson {
        let (given_name, family_name, date_of_birth, nhs_number, nino) = if i == 0 {
            (
                "Ada".to_owned(),
                "Okafor".to_owned(),
                date(1979, 3, 14),
                "9434765919".to_owned(),
                "AB123456C".to_owned(),
            )
        } else {
            let given = GIVEN[g.rng.random_range(0..GIVEN.len())].to_owned();
            let family = FAMILY[g.rng.random_range(0..FAMILY.len())].to_owned();
            let dob = date(1950, 1, 1) + chrono::Duration::days(g.rng.random_range(0..20_000));
            (given, family, dob, g.nhs_number(), g.nino())
        };
        let mut person = SyntheticPerson {
            case,
            given_name,
            family_name,
            date_of_birth,
            nhs_number,
            nino,
            council: Vec::new(),
            ilf: Vec::new(),
            atw_awards: Vec::new(),
            atw_claims: Vec::new(),
            phb: Vec::new(),
        };
        let fy_start = date(2026, 4, 1);
        let (council, ilf, atw, phb) = match case {
            Case::AllFourStreams => (true, true, true, true),
            Case::PartYearAward => (true, false, false, true),
            Case::SuspendedAward => (true, true, false, false),
            Case::ContributionAboveGross => (true, false, false, false),
            Case::SharedWheelchair => (false, false, true, true),
            Case::OneStreamOnly => (false, false, true, false),
            Case::DuplicateCouncilRecord => (true, false, false, false),
            Case::Ordinary => loop {
                let pick = (
                    g.rng.random_bool(0.7),
                    g.rng.random_bool(0.3),
                    g.rng.random_bool(0.4),
                    g.rng.random_bool(0.4),
                );
                if pick.0 || pick.1 || pick.2 || pick.3 {
                    break pick;
                }
            },
        };

        if council {
            let budget = match case {
                Case::AllFourStreams => council_budget(
                    42,
                    "agreed",
                    fy_start,
                    None,
                    date(2027, 1, 15),
                    &[
                        ("personal_care", 30_000, "direct_payment"),
                        ("social_inclusion", 11_250, "council_managed"),
                    ],
                    3_520,
                ),
                Case::PartYearAward => council_budget(
                    1000 + i,
                    "agreed",
                    date(2026, 10, 1),
                    None,
                    date(2027, 3, 1),
                    &[("personal_care", 10_000, "direct_payment")],
                    0,
                ),
                Case::ContributionAboveGross => council_budget(
                    1000 + i,
                    "agreed",
                    fy_start,
                    None,
                    date(2027, 2, 1),
                    &[("day_activity", 6_000, "commissioned")],
                    7_500,
                ),
                _ => {
                    let care = g.amount(5_000, 40_000, 250).mantissa();
                    let other = g.amount(0, 15_000, 250).mantissa();
                    let review = g.review();
                    let contribution = g.amount(0, 5_000, 5).mantissa();
                    let mut lines = vec![(
                        "personal_care",
                        i64::try_from(care).unwrap_or(0),
                        "direct_payment",
                    )];
                    if other > 0 {
                        lines.push((
                            "respite",
                            i64::try_from(other).unwrap_or(0),
                            "individual_service_fund",
                        ));
                    }
                    council_budget(
                        1000 + i,
                        "agreed",
                        fy_start,
                        None,
                        review,
                        &lines,
                        i64::try_from(contribution).unwrap_or(0),
                    )
                }
            };
            let client = CouncilClient {
                client_id: if i == 0 {
                    "CL-104233".into()
                } else {
                    format!("CL-{:06}", 200_000 + i)
                },
                nhs_number: person.nhs_number.clone(),
                family_name: person.family_name.clone(),
                given_name: person.given_name.clone(),
                date_of_birth: person.date_of_birth,
                council_code: "E08000026".into(),
                personal_budgets: vec![budget],
            };
            if case == Case::DuplicateCouncilRecord {
                let mut twin = client.clone();
                twin.client_id = format!("CL-{:06}", 900_000 + i);
                twin.personal_budgets.clear();
                person.council.push(client);
                person.council.push(twin);
            } else {
                person.council.push(client);
            }
        }

        if ilf {
            let (amount, status, start, end, comma) = match case {
                Case::AllFourStreams => (pounds(110_000), "active", date(2024, 4, 1), None, false),
                Case::SuspendedAward => (
                    pounds(125_000),
                    "suspended",
                    date(2025, 10, 1),
                    Some(date(2027, 3, 31)),
                    true,
                ),
                _ => (
                    g.amount(30_000, 180_000, 500),
                    "active",
                    date(2023, 6, 1),
                    None,
                    true,
                ),
            };
            let next_review = if case == Case::AllFourStreams {
                date(2026, 6, 5)
            } else {
                g.review()
            };
            person.ilf.push(IlfRow {
                ilf_reference: if i == 0 {
                    "ILF-000317".into()
                } else {
                    format!("ILF-{:06}", 1000 + i)
                },
                nino: if i % 3 == 1 {
                    person.nino.to_lowercase()
                } else {
                    person.nino.clone()
                },
                family_name: person.family_name.clone(),
                date_of_birth: uk(person.date_of_birth),
                award_amount: ilf_amount(amount, comma),
                award_period: "4-weekly".into(),
                start_date: uk(start),
                end_date: end.map(uk).unwrap_or_default(),
                next_review: uk(next_review),
                status: status.into(),
            });
        }

        if atw {
            let award_ref = if i == 0 {
                "ATW-7788-01".to_owned()
            } else {
                format!("ATW-{:04}-01", 8000 + i)
            };
            let mut elements = vec![AtwElement {
                element: "support_worker".into(),
                annual_amount: Some(if i == 0 {
                    pounds(1_420_000)
                } else {
                    g.amount(300_000, 2_000_000, 100)
                }),
                hours_per_week: Some(Decimal::new(125, 1)),
                hourly_rate: Some(pounds(2_185)),
                one_off_amount: None,
                payment_date: None,
                description: None,
            }];
            if matches!(case, Case::AllFourStreams | Case::SharedWheelchair) {
                elements.push(AtwElement {
                    element: "special_aids_and_equipment".into(),
                    annual_amount: None,
                    hours_per_week: None,
                    hourly_rate: None,
                    one_off_amount: Some(pounds(240_000)),
                    payment_date: Some(if i == 0 {
                        date(2025, 10, 10)
                    } else {
                        date(2026, 7, 20)
                    }),
                    description: Some("Powered wheelchair, used at work and at home".into()),
                });
            }
            elements.push(AtwElement {
                element: "travel_to_work".into(),
                annual_amount: Some(if i == 0 {
                    pounds(310_000)
                } else {
                    g.amount(50_000, 500_000, 100)
                }),
                hours_per_week: None,
                hourly_rate: None,
                one_off_amount: None,
                payment_date: None,
                description: None,
            });
            person.atw_claims.push(AtwClaim {
                claim_ref: format!("C-{}", 91 + i),
                award_ref: award_ref.clone(),
                element: "support_worker".into(),
                period_start: date(2026, 4, 1),
                period_end: date(2026, 4, 30),
                amount: if i == 0 {
                    pounds(118_345)
                } else {
                    g.amount(20_000, 150_000, 1)
                },
                paid_on: date(2026, 5, 9),
            });
            person.atw_awards.push(AtwAward {
                award_ref,
                employer: "Acme Ltd".into(),
                start_date: date(2025, 9, 1),
                end_date: Some(date(2028, 8, 31)),
                status: "active".into(),
                payment_route: "reimbursement".into(),
                elements,
            });
        }

        if phb {
            let budget = match case {
                Case::AllFourStreams => PhbBudget {
                    budget_id: "PHB-55".into(),
                    kind: "continuing_healthcare".into(),
                    management: "third_party".into(),
                    annual_amount: pounds(2_600_000),
                    start_date: fy_start,
                    end_date: Some(date(2027, 3, 31)),
                    review_date: Some(date(2026, 10, 1)),
                    care_plan: vec![
                        PhbItem {
                            item_id: "CP-1".into(),
                            description: "Personal assistant for health tasks".into(),
                            annual_amount: pounds(2_000_000),
                        },
                        PhbItem {
                            item_id: "CP-2".into(),
                            description: "Physiotherapy".into(),
                            annual_amount: pounds(600_000),
                        },
                    ],
                },
                Case::SharedWheelchair => PhbBudget {
                    budget_id: format!("PHB-{}", 100 + i),
                    kind: "wheelchair".into(),
                    management: "notional".into(),
                    annual_amount: pounds(180_000),
                    start_date: fy_start,
                    end_date: Some(date(2027, 3, 31)),
                    review_date: Some(date(2027, 3, 1)),
                    care_plan: vec![PhbItem {
                        item_id: "CP-1".into(),
                        description: "Powered wheelchair, health share".into(),
                        annual_amount: pounds(180_000),
                    }],
                },
                _ => {
                    let a = g.amount(100_000, 2_000_000, 100);
                    let b = g.amount(50_000, 600_000, 100);
                    let start = if case == Case::PartYearAward {
                        date(2026, 11, 15)
                    } else {
                        fy_start
                    };
                    let review = g.review();
                    PhbBudget {
                        budget_id: format!("PHB-{}", 100 + i),
                        kind: "mental_health_aftercare".into(),
                        management: "direct_payment".into(),
                        annual_amount: a + b,
                        start_date: start,
                        end_date: None,
                        review_date: Some(review),
                        care_plan: vec![
                            PhbItem {
                                item_id: "CP-1".into(),
                                description: "Support worker".into(),
                                annual_amount: a,
                            },
                            PhbItem {
                                item_id: "CP-2".into(),
                                description: "Therapy".into(),
                                annual_amount: b,
                            },
                        ],
                    }
                }
            };
            person.phb.push(budget);
        }
        person
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_world() {
        let a = World::generate(DEMO_SEED, 60);
        let b = World::generate(DEMO_SEED, 60);
        let key = |w: &World| -> Vec<(String, String, String)> {
            w.people
                .iter()
                .map(|p| (p.nhs_number.clone(), p.nino.clone(), p.family_name.clone()))
                .collect()
        };
        assert_eq!(key(&a), key(&b));
        assert_ne!(key(&a), key(&World::generate(DEMO_SEED + 1, 60)));
    }

    #[test]
    fn every_stream_and_every_awkward_case_is_covered() {
        let w = World::generate(DEMO_SEED, 60);
        assert_eq!(w.people.len(), 60);
        assert!(w.people.iter().any(|p| !p.council.is_empty()));
        assert!(w.people.iter().any(|p| !p.ilf.is_empty()));
        assert!(w.people.iter().any(|p| !p.atw_awards.is_empty()));
        assert!(w.people.iter().any(|p| !p.phb.is_empty()));
        for case in [
            Case::PartYearAward,
            Case::SuspendedAward,
            Case::ContributionAboveGross,
            Case::SharedWheelchair,
            Case::OneStreamOnly,
            Case::DuplicateCouncilRecord,
        ] {
            assert!(w.people.iter().any(|p| p.case == case), "{case:?}");
        }
        let dup = w
            .people
            .iter()
            .find(|p| p.case == Case::DuplicateCouncilRecord)
            .unwrap();
        assert_eq!(dup.council.len(), 2);
        assert_eq!(dup.council_client_id(), None);
        let over = w
            .people
            .iter()
            .find(|p| p.case == Case::ContributionAboveGross)
            .unwrap();
        let b = &over.council[0].personal_budgets[0];
        assert!(b.client_contribution > b.gross_amount);
    }

    #[test]
    fn generated_identifiers_are_unique_and_council_lines_add_up() {
        let w = World::generate(DEMO_SEED, 200);
        let nhs: HashSet<_> = w.people.iter().map(|p| &p.nhs_number).collect();
        let ninos: HashSet<_> = w.people.iter().map(|p| &p.nino).collect();
        assert_eq!(nhs.len(), 200);
        assert_eq!(ninos.len(), 200);
        for p in &w.people {
            for c in &p.council {
                for b in &c.personal_budgets {
                    let sum: Decimal = b.lines.iter().map(|l| l.amount).sum();
                    assert_eq!(sum, b.gross_amount);
                }
            }
            for b in &p.phb {
                let sum: Decimal = b.care_plan.iter().map(|l| l.annual_amount).sum();
                assert_eq!(sum, b.annual_amount);
            }
        }
    }

    #[test]
    fn a_world_can_be_grown_to_an_ilf_extract_size() {
        let w = World::generate_with_ilf_rows(3, 500);
        let rows: usize = w.people.iter().map(|p| p.ilf.len()).sum();
        assert!(rows >= 500, "{rows}");
        assert!(rows < 500 + 5, "{rows}");
        assert!(
            w.people.len() > 1000,
            "about one in three has ILF: {}",
            w.people.len()
        );
    }

    #[test]
    fn ilf_amounts_carry_thousands_commas_when_asked() {
        assert_eq!(ilf_amount(pounds(125_000), true), "1,250.00");
        assert_eq!(ilf_amount(pounds(12_345_678), true), "123,456.78");
        assert_eq!(ilf_amount(pounds(110_000), false), "1100.00");
        assert_eq!(ilf_amount(pounds(99_000), true), "990.00");
    }
}
