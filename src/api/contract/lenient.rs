//! The seed's leniency, in one place: httpie sends `key=value` fields as
//! JSON strings (`"qty": "10"`), so a number field takes a JSON number or a
//! string of its canonical decimal digits. Each field type states its range
//! once; its OpenAPI schema (`oneOf` an integer with that range, a string
//! with a pattern matching exactly the same numbers) and its parsing are
//! derived from that, and a test checks that the two agree.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

/// Parses a schema written as JSON (the readable way to state a `oneOf`).
pub(crate) fn schema_from_json(v: serde_json::Value) -> RefOr<Schema> {
    // The literals in this module are valid schemas: the document test
    // (`api::docs::tests`) builds every one of them.
    serde_json::from_value(v).unwrap_or_else(|e| panic!("invalid schema literal: {e}"))
}

/// Parses canonical decimal digits (no sign, no leading zero, no spaces).
fn canonical(s: &str) -> Option<i64> {
    let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = s.len() > 1 && s.starts_with('0');
    if !digits || leading_zero || s.len() > 18 {
        return None;
    }
    s.parse().ok()
}

/// Declares a whole-number field taking a number or a numeric string, in
/// `MIN..=MAX`, with the pattern that matches exactly those strings.
macro_rules! lenient_int {
    ($(#[$doc:meta])* $name:ident, $min:expr, $max:expr, $pattern:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name(pub i64);

        impl $name {
            pub const MIN: i64 = $min;
            pub const MAX: i64 = $max;
            pub const PATTERN: &'static str = $pattern;

            fn checked(v: i64) -> Result<Self, String> {
                if (Self::MIN..=Self::MAX).contains(&v) {
                    Ok(Self(v))
                } else {
                    Err(format!("{v} is not between {} and {}", Self::MIN, Self::MAX))
                }
            }

            /// The value of a string as httpie sends it.
            pub fn parse_text(s: &str) -> Result<Self, String> {
                canonical(s)
                    .ok_or_else(|| format!("`{s}` is not a whole number written in digits"))
                    .and_then(Self::checked)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(f, "a whole number from {} to {}, as a number or a string of digits", $name::MIN, $name::MAX)
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$name, E> {
                        $name::checked(v).map_err(E::custom)
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$name, E> {
                        i64::try_from(v)
                            .map_err(|_| E::custom(format!("{v} is too large")))
                            .and_then(|v| $name::checked(v).map_err(E::custom))
                    }
                    fn visit_f64<E: de::Error>(self, v: f64) -> Result<$name, E> {
                        // `10.0` is the integer 10 in JSON Schema too.
                        // Every whole double in i64's range is exact.
                        if v.fract() == 0.0 && v.abs() <= 9.2e18 {
                            $name::checked(v as i64).map_err(E::custom)
                        } else {
                            Err(E::custom(format!("{v} is not a whole number")))
                        }
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$name, E> {
                        $name::parse_text(v).map_err(E::custom)
                    }
                }
                d.deserialize_any(V)
            }
        }

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                schema_from_json(serde_json::json!({
                    "oneOf": [
                        { "type": "integer", "format": "int64", "minimum": $name::MIN, "maximum": $name::MAX },
                        { "type": "string", "pattern": $name::PATTERN }
                    ]
                }))
            }
        }

        impl ToSchema for $name {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($name))
            }
        }
    };
}

lenient_int!(
    /// An id (customer, food): positive, at most 18 digits.
    IdField,
    1,
    999_999_999_999_999_999,
    "^[1-9][0-9]{0,17}$"
);
lenient_int!(
    /// A quantity: 1 to 1,000,000.
    QtyField,
    1,
    1_000_000,
    "^([1-9][0-9]{0,5}|1000000)$"
);
lenient_int!(
    /// A stock level: 0 to 1,000,000,000.
    StockField,
    0,
    1_000_000_000,
    "^(0|[1-9][0-9]{0,8}|1000000000)$"
);
lenient_int!(
    /// An age: 0 to 150.
    AgeField,
    0,
    150,
    "^([0-9]|[1-9][0-9]|1[0-4][0-9]|150)$"
);
lenient_int!(
    /// A rating: 1 to 5.
    RatingField,
    1,
    5,
    "^[1-5]$"
);

/// A price from 0 to 1,000,000,000: a whole number (`4`, `4.0`), or text
/// with at most two decimals (`"4.05"`, what httpie sends), read digit by
/// digit. A JSON number with decimals is refused: a binary float cannot say
/// "two decimals" exactly, and JSON Schema's `multipleOf: 0.01` means
/// different things to different validators, so money with cents travels
/// as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriceField(pub crate::domain::Money);

impl PriceField {
    pub const PATTERN: &'static str = "^((0|[1-9][0-9]{0,8})(\\.[0-9]{1,2})?|1000000000(\\.00?)?)$";
    const MAX_UNITS: f64 = 1_000_000_000.0;

    pub fn parse_text(s: &str) -> Result<Self, String> {
        if s.trim() != s {
            return Err(format!("`{s}`: a price has no spaces"));
        }
        crate::domain::Money::parse_price(s)
            .map(PriceField)
            .map_err(|e| format!("`{s}`: {e}"))
    }

    fn from_number(v: f64) -> Result<Self, String> {
        if !v.is_finite() || !(0.0..=Self::MAX_UNITS).contains(&v) {
            return Err(format!("{v} is not a price from 0 to 1000000000"));
        }
        if v.fract() != 0.0 {
            return Err(format!(
                "{v}: send a price with decimals as text, e.g. \"4.05\""
            ));
        }
        Ok(PriceField(crate::domain::Money::from_cents(v as i64 * 100)))
    }
}

impl<'de> Deserialize<'de> for PriceField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PriceField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a price with at most two decimals, as a number or a string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PriceField, E> {
                PriceField::from_number(v as f64).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PriceField, E> {
                PriceField::from_number(v as f64).map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<PriceField, E> {
                PriceField::from_number(v).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PriceField, E> {
                PriceField::parse_text(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl PartialSchema for PriceField {
    fn schema() -> RefOr<Schema> {
        schema_from_json(serde_json::json!({
            "oneOf": [
                { "type": "integer", "minimum": 0, "maximum": 1_000_000_000 },
                { "type": "string", "pattern": PriceField::PATTERN }
            ]
        }))
    }
}

impl ToSchema for PriceField {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("PriceField")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pattern a string must match and the parser agree, on the edges
    /// and on every odd spelling a client might send.
    fn agree<T>(pattern: &str, parse: impl Fn(&str) -> Result<T, String>, samples: &[String]) {
        let re = regex::Regex::new(pattern).expect("pattern compiles");
        for s in samples {
            assert_eq!(
                re.is_match(s),
                parse(s).is_ok(),
                "`{s}`: pattern {pattern} and parser disagree"
            );
        }
    }

    fn int_samples(min: i64, max: i64) -> Vec<String> {
        let mut v: Vec<String> = [
            min - 1,
            min,
            min + 1,
            max - 1,
            max,
            max.saturating_add(1),
            (min + max) / 2,
            0,
            1,
            9,
            10,
            99,
            100,
            149,
            151,
            999_999,
            1_000_001,
        ]
        .iter()
        .map(|n| n.to_string())
        .collect();
        v.extend(
            [
                "", " 1", "1 ", "01", "00", "+1", "-0", "1.0", "1e3", "\u{b}2", "x", "١",
            ]
            .map(String::from),
        );
        v.push("9".repeat(19));
        v
    }

    #[test]
    fn integer_patterns_match_the_parsers() {
        agree(
            IdField::PATTERN,
            IdField::parse_text,
            &int_samples(IdField::MIN, IdField::MAX),
        );
        agree(
            QtyField::PATTERN,
            QtyField::parse_text,
            &int_samples(QtyField::MIN, QtyField::MAX),
        );
        agree(
            StockField::PATTERN,
            StockField::parse_text,
            &int_samples(StockField::MIN, StockField::MAX),
        );
        agree(
            AgeField::PATTERN,
            AgeField::parse_text,
            &int_samples(AgeField::MIN, AgeField::MAX),
        );
        agree(
            RatingField::PATTERN,
            RatingField::parse_text,
            &int_samples(RatingField::MIN, RatingField::MAX),
        );
    }

    #[test]
    fn the_price_pattern_matches_the_parser() {
        let samples: Vec<String> = [
            "0",
            "0.0",
            "0.00",
            "4",
            "4.0",
            "4.05",
            "4.005",
            "04",
            "4.",
            ".5",
            "-1",
            "1e3",
            "999999999.99",
            "1000000000",
            "1000000000.0",
            "1000000000.00",
            "1000000000.01",
            "1000000001",
            " 4",
            "4 ",
            "+4",
            "NaN",
        ]
        .map(String::from)
        .to_vec();
        agree(PriceField::PATTERN, PriceField::parse_text, &samples);
    }

    #[test]
    fn numbers_and_strings_parse_alike() {
        let q: QtyField = serde_json::from_str("\"10\"").expect("string");
        assert_eq!(q, QtyField(10));
        assert_eq!(
            serde_json::from_str::<QtyField>("10").ok(),
            Some(QtyField(10))
        );
        assert!(serde_json::from_str::<QtyField>("0").is_err());
        assert!(serde_json::from_str::<QtyField>("\"\\u000b2\"").is_err());
        assert!(serde_json::from_str::<QtyField>("true").is_err());
        let p: PriceField = serde_json::from_str("4.0").expect("number");
        assert_eq!(p.0.cents(), 400);
        assert_eq!(
            serde_json::from_str::<PriceField>("\"0.07\"")
                .map(|p| p.0.cents())
                .ok(),
            Some(7)
        );
        assert!(
            serde_json::from_str::<PriceField>("0.07").is_err(),
            "decimals travel as text"
        );
        assert!(serde_json::from_str::<PriceField>("6.5e-221").is_err());
        assert!(serde_json::from_str::<PriceField>("1e20").is_err());
    }
}
