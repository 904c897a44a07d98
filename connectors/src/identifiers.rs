//! The identifiers each fund knows a person by, validated and normalised exactly as
//! `shared/upstreams/README.md` says.
//!
//! Error messages never echo the value they reject: an identifier is personal data.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The schemes a person can be known by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum IdentifierScheme {
    /// NHS number: 10 digits with a Modulus 11 check digit.
    NhsNumber,
    /// National Insurance number.
    Nino,
    /// A council's own client id in its case-management system.
    CouncilClientId,
    /// The Independent Living Fund's award reference.
    IlfReference,
}

impl IdentifierScheme {
    /// Every scheme, in a fixed order.
    pub const ALL: [Self; 4] = [
        Self::NhsNumber,
        Self::Nino,
        Self::CouncilClientId,
        Self::IlfReference,
    ];

    /// The stored and wire name, e.g. `NHS_NUMBER`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NhsNumber => "NHS_NUMBER",
            Self::Nino => "NINO",
            Self::CouncilClientId => "COUNCIL_CLIENT_ID",
            Self::IlfReference => "ILF_REFERENCE",
        }
    }

    /// Whether a person holds at most one identifier of this scheme.
    pub fn one_per_person(self) -> bool {
        matches!(self, Self::NhsNumber | Self::Nino)
    }

    /// A human name for messages.
    pub fn label(self) -> &'static str {
        match self {
            Self::NhsNumber => "NHS number",
            Self::Nino => "National Insurance number",
            Self::CouncilClientId => "council client id",
            Self::IlfReference => "ILF reference",
        }
    }

    /// Validates `raw` under this scheme and returns its normalised form.
    pub fn normalise(self, raw: &str) -> Result<String, IdentifierError> {
        match self {
            Self::NhsNumber => normalise_nhs_number(raw),
            Self::Nino => normalise_nino(raw),
            Self::CouncilClientId => normalise_council_client_id(raw),
            Self::IlfReference => normalise_ilf_reference(raw),
        }
    }
}

impl fmt::Display for IdentifierScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for IdentifierScheme {
    type Err = IdentifierError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|scheme| scheme.as_str() == s)
            .ok_or(IdentifierError::UnknownScheme)
    }
}

/// Why an identifier was refused. The messages say what a valid one looks like and never
/// repeat the value given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentifierError {
    /// An NHS number must be 10 digits (spaces allowed).
    #[error("an NHS number must be 10 digits (spaces are allowed, e.g. 943 476 5919)")]
    NhsNumberShape,
    /// The Modulus 11 check digit does not match.
    #[error("this NHS number fails its Modulus 11 check digit; check it was copied correctly")]
    NhsNumberCheckDigit,
    /// A NINO's shape is two letters, six digits, a letter A-D.
    #[error(
        "a National Insurance number is two letters, six digits and a final letter A, B, C or D (e.g. AB 12 34 56 C)"
    )]
    NinoShape,
    /// The prefix letters are never issued.
    #[error(
        "this National Insurance number's two-letter prefix is never issued (first letter not D, F, I, Q, U or V; second not D, F, I, O, Q, U or V; not BG, GB, KN, NK, NT, TN or ZZ)"
    )]
    NinoPrefix,
    /// Client ids are short and plain.
    #[error("a council client id must be 1 to 64 characters of letters, digits, '-', '_' or '/'")]
    CouncilClientId,
    /// ILF references look like `ILF-000317`.
    #[error("an ILF reference is 'ILF-' followed by digits (e.g. ILF-000317)")]
    IlfReference,
    /// The scheme name is not one the hub knows.
    #[error(
        "unknown identifier scheme; use one of NHS_NUMBER, NINO, COUNCIL_CLIENT_ID, ILF_REFERENCE"
    )]
    UnknownScheme,
}

/// Validates an NHS number (10 digits, Modulus 11) and drops the spaces.
pub fn normalise_nhs_number(raw: &str) -> Result<String, IdentifierError> {
    let digits: String = raw.chars().filter(|c| *c != ' ').collect();
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(IdentifierError::NhsNumberShape);
    }
    let mut first_nine = [0u8; 9];
    for (slot, byte) in first_nine.iter_mut().zip(digits.bytes()) {
        *slot = byte - b'0';
    }
    let last = digits.bytes().last().map(|b| b - b'0');
    match nhs_check_digit(first_nine) {
        Some(check) if Some(check) == last => {}
        _ => return Err(IdentifierError::NhsNumberCheckDigit),
    }
    Ok(digits)
}

/// The Modulus 11 check digit for nine leading digits, or `None` when no valid number has them.
pub fn nhs_check_digit(first_nine: [u8; 9]) -> Option<u8> {
    let sum: u32 = first_nine
        .iter()
        .zip((2..=10u32).rev())
        .map(|(digit, weight)| u32::from(*digit) * weight)
        .sum();
    match 11 - (sum % 11) {
        11 => Some(0),
        10 => None,
        // `sum % 11` is at most 10, so this is 1..=9.
        other => u8::try_from(other).ok(),
    }
}

/// Validates a National Insurance number, folding case and dropping spaces.
pub fn normalise_nino(raw: &str) -> Result<String, IdentifierError> {
    let folded: String = raw
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let bytes = folded.as_bytes();
    let shape_ok = bytes.len() == 9
        && bytes[..2].iter().all(u8::is_ascii_uppercase)
        && bytes[2..8].iter().all(u8::is_ascii_digit)
        && matches!(bytes[8], b'A'..=b'D');
    if !shape_ok {
        return Err(IdentifierError::NinoShape);
    }
    let (first, second) = (bytes[0], bytes[1]);
    if b"DFIQUV".contains(&first)
        || b"DFIOQUV".contains(&second)
        || ["BG", "GB", "KN", "NK", "NT", "TN", "ZZ"].contains(&&folded[..2])
    {
        return Err(IdentifierError::NinoPrefix);
    }
    Ok(folded)
}

fn normalise_council_client_id(raw: &str) -> Result<String, IdentifierError> {
    let trimmed = raw.trim();
    let ok = (1..=64).contains(&trimmed.len())
        && trimmed
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '/'));
    // Case is kept: a council's ids may be case-sensitive, and the hub must ask for exactly
    // the id the council issued.
    if ok {
        Ok(trimmed.to_owned())
    } else {
        Err(IdentifierError::CouncilClientId)
    }
}

fn normalise_ilf_reference(raw: &str) -> Result<String, IdentifierError> {
    let folded = raw.trim().to_ascii_uppercase();
    match folded.strip_prefix("ILF-") {
        Some(digits)
            if (1..=20).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) =>
        {
            Ok(folded)
        }
        _ => Err(IdentifierError::IlfReference),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_nhs_number_passes_with_or_without_spaces() {
        assert_eq!(normalise_nhs_number("943 476 5919").unwrap(), "9434765919");
        assert_eq!(normalise_nhs_number("9434765919").unwrap(), "9434765919");
    }

    #[test]
    fn a_wrong_nhs_check_digit_is_refused() {
        assert_eq!(
            normalise_nhs_number("9434765918"),
            Err(IdentifierError::NhsNumberCheckDigit)
        );
    }

    #[test]
    fn an_nhs_number_whose_check_would_be_ten_is_invalid() {
        // 100000001x: sum = 1*10 + 1*2 = 12, 12 mod 11 = 1, 11 - 1 = 10 -> invalid whatever
        // the last digit is.
        for last in 0..=9 {
            assert_eq!(
                normalise_nhs_number(&format!("100000001{last}")),
                Err(IdentifierError::NhsNumberCheckDigit)
            );
        }
        assert_eq!(nhs_check_digit([1, 0, 0, 0, 0, 0, 0, 0, 1]), None);
    }

    #[test]
    fn an_nhs_check_of_eleven_means_zero() {
        // sum = 0 -> 11 - 0 = 11 -> check digit 0.
        assert_eq!(normalise_nhs_number("0000000000").unwrap(), "0000000000");
        assert_eq!(nhs_check_digit([0; 9]), Some(0));
    }

    #[test]
    fn nhs_numbers_of_the_wrong_shape_are_refused() {
        for bad in ["", "943476591", "94347659190", "94347659a9", "943-476-5919"] {
            assert_eq!(
                normalise_nhs_number(bad),
                Err(IdentifierError::NhsNumberShape),
                "{bad}"
            );
        }
    }

    #[test]
    fn nino_case_and_spaces_are_folded() {
        assert_eq!(normalise_nino("ab 12 34 56 c").unwrap(), "AB123456C");
        assert_eq!(normalise_nino("CE654321A").unwrap(), "CE654321A");
    }

    #[test]
    fn the_documentation_example_qq_is_not_a_valid_nino() {
        assert_eq!(
            normalise_nino("qq 12 34 56 c"),
            Err(IdentifierError::NinoPrefix)
        );
    }

    #[test]
    fn nino_prefix_rules_are_enforced() {
        for bad in [
            "DA123456A",
            "AD123456A",
            "AO123456A",
            "BG123456A",
            "GB123456A",
            "KN123456A",
            "NK123456A",
            "NT123456A",
            "TN123456A",
            "ZZ123456A",
            "VA123456A",
            "AV123456A",
        ] {
            assert_eq!(
                normalise_nino(bad),
                Err(IdentifierError::NinoPrefix),
                "{bad}"
            );
        }
        // O is allowed as a first letter, only not as the second.
        assert!(normalise_nino("OA123456A").is_ok());
    }

    #[test]
    fn nino_shape_rules_are_enforced() {
        for bad in [
            "AB123456E",
            "AB12345C",
            "AB1234567C",
            "1B123456C",
            "AB12345XC",
            "",
        ] {
            assert_eq!(
                normalise_nino(bad),
                Err(IdentifierError::NinoShape),
                "{bad}"
            );
        }
    }

    #[test]
    fn council_and_ilf_references_are_normalised() {
        assert_eq!(
            IdentifierScheme::CouncilClientId
                .normalise(" CL-104233 ")
                .unwrap(),
            "CL-104233"
        );
        assert_eq!(
            IdentifierScheme::IlfReference
                .normalise("ilf-000317")
                .unwrap(),
            "ILF-000317"
        );
        assert!(IdentifierScheme::IlfReference.normalise("ILF-").is_err());
        assert!(IdentifierScheme::CouncilClientId.normalise("a b").is_err());
    }

    #[test]
    fn scheme_names_round_trip() {
        for scheme in IdentifierScheme::ALL {
            assert_eq!(scheme.as_str().parse::<IdentifierScheme>().unwrap(), scheme);
        }
        assert!("PASSPORT".parse::<IdentifierScheme>().is_err());
    }
}
