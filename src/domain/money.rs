//! Money in whole cents and quantities: bounded so that `qty × price`
//! never overflows.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{DomainError, integer_schema};

/// A quantity of food: at least one, at most a sane upper bound so that
/// `qty × price` can never overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Qty(u32);

/// Messages are parsed like requests: a quantity off the wire is validated.
impl<'de> Deserialize<'de> for Qty {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Qty::new(i64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl Qty {
    /// The largest quantity one order may ask for.
    pub const MAX: u32 = 1_000_000;

    pub fn new(raw: i64) -> Result<Self, DomainError> {
        if raw <= 0 {
            return Err(DomainError::new("qty must be at least 1"));
        }
        if raw > i64::from(Self::MAX) {
            return Err(DomainError::new(format!(
                "qty must be at most {}",
                Self::MAX
            )));
        }
        Ok(Self(raw as u32))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// An amount of money in whole cents. Storage, messages and events carry the
/// integer (`4000`); only the REST edge also shows it as a decimal of the
/// currency unit (`40.0`), as the seed does. No amount ever goes through a
/// floating-point number on its way in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money {
    cents: i64,
}

impl Money {
    /// The largest price of one catalog item (one billion currency units).
    pub const MAX_PRICE_CENTS: i64 = 100_000_000_000;
    /// The largest total of one order. Every amount up to it is exact both as
    /// an `i64` and as the `f64` of its decimal display (below 2^53).
    pub const MAX_TOTAL_CENTS: i64 = 10_000_000_000_000;

    pub const fn from_cents(cents: i64) -> Self {
        Self { cents }
    }

    pub fn cents(self) -> i64 {
        self.cents
    }

    /// Parses a catalog price written as a plain decimal (`4`, `4.0`,
    /// `4.05`): non-negative, at most two decimals, at most
    /// [`Money::MAX_PRICE_CENTS`]. The text is read digit by digit, never
    /// through a float.
    pub fn parse_price(raw: &str) -> Result<Self, DomainError> {
        let cents = parse_cents(raw.trim())?;
        if cents > Self::MAX_PRICE_CENTS {
            return Err(DomainError::new(format!(
                "price must be at most {}",
                Money::from_cents(Self::MAX_PRICE_CENTS)
            )));
        }
        Ok(Self::from_cents(cents))
    }

    /// `price × qty`, refused when it exceeds [`Money::MAX_TOTAL_CENTS`].
    pub fn total(self, qty: Qty) -> Result<Money, DomainError> {
        self.cents
            .checked_mul(i64::from(qty.get()))
            .filter(|c| *c <= Self::MAX_TOTAL_CENTS)
            .map(Money::from_cents)
            .ok_or_else(|| {
                DomainError::new(format!(
                    "the order's total would exceed {}",
                    Money::from_cents(Self::MAX_TOTAL_CENTS)
                ))
            })
    }

    /// The decimal of the currency unit, for display only (exact below 2^53
    /// cents, which every amount is).
    pub fn as_decimal(self) -> f64 {
        self.cents as f64 / 100.0
    }

    /// `serialize_with` for REST fields that show the decimal (`price: 4.0`).
    pub fn serialize_decimal<S: serde::Serializer>(m: &Money, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(m.as_decimal())
    }
}

/// `12`, `12.3`, `12.34` → cents; anything else (signs, exponents, a third
/// decimal, more digits than an amount can have) is refused.
fn parse_cents(s: &str) -> Result<i64, DomainError> {
    let bad = || DomainError::new("an amount is a non-negative decimal with at most two decimals");
    let (whole, frac) = match s.split_once('.') {
        Some((_, "")) => return Err(bad()),
        Some(parts) => parts,
        None => (s, ""),
    };
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = whole.len() > 1 && whole.starts_with('0');
    if whole.is_empty()
        || whole.len() > 15
        || leading_zero
        || frac.len() > 2
        || !digits(whole)
        || !digits(frac)
    {
        return Err(bad());
    }
    let whole: i64 = whole.parse().map_err(|_| bad())?;
    let frac: i64 = format!("{frac:0<2}").parse().map_err(|_| bad())?;
    Ok(whole * 100 + frac)
}

/// Whole cents: an integer of at least 0.
impl utoipa::PartialSchema for Money {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        integer_schema(0)
    }
}

impl utoipa::ToSchema for Money {}

/// A quantity: an integer of at least 1.
impl utoipa::PartialSchema for Qty {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        integer_schema(1)
    }
}

impl utoipa::ToSchema for Qty {}

/// Whole cents on every wire: an integer, never a float.
impl Serialize for Money {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(self.cents)
    }
}

/// Parsed like a request: negative or impossible totals are refused.
impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let cents = i64::deserialize(d)?;
        if !(0..=Self::MAX_TOTAL_CENTS).contains(&cents) {
            return Err(serde::de::Error::custom(format!(
                "{cents} cents is not a valid amount"
            )));
        }
        Ok(Self::from_cents(cents))
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.cents / 100, self.cents % 100)
    }
}
