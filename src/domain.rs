//! Domain types shared by every role: identifiers, money, quantities and the
//! status vocabularies that PRODUCT.md fixes as exact strings.
//!
//! Identifiers parse rather than wrap: an `OrderId` is always positive, a
//! `Qty` is always at least one, `Money` is a whole number of cents.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Declares a positive integer identifier newtype.
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(i64);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $name::new(i64::deserialize(d)?).map_err(serde::de::Error::custom)
            }
        }

        impl $name {
            /// Parses an identifier: it must be a positive integer.
            pub fn new(raw: i64) -> Result<Self, DomainError> {
                if raw > 0 {
                    Ok(Self(raw))
                } else {
                    Err(DomainError::new(concat!($what, " must be a positive integer")))
                }
            }

            /// The raw value, for storage and wire formats.
            pub fn get(self) -> i64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                integer_schema(1)
            }
        }

        impl utoipa::ToSchema for $name {}

        impl FromStr for $name {
            type Err = DomainError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let raw: i64 = s
                    .trim()
                    .parse()
                    .map_err(|_| DomainError::new(concat!($what, " must be a positive integer")))?;
                Self::new(raw)
            }
        }
    };
}

id_type!(
    /// An order, and equally its saga: order 7 is driven by saga 7.
    OrderId,
    "order id"
);
id_type!(
    /// A customer who orders.
    CustomerId,
    "customer id"
);
id_type!(
    /// An item of the food catalog, owned by the kitchen.
    FoodId,
    "food catalog id"
);
id_type!(
    /// A product review.
    ReviewId,
    "review id"
);

/// The OpenAPI schema of an integer of at least `min`.
fn integer_schema(min: i64) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Integer)
        .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
            utoipa::openapi::KnownFormat::Int64,
        )))
        .minimum(Some(min))
        .into()
}

/// The saga of an order has the order's id.
pub type SagaId = OrderId;

/// A validation failure of a domain value, shown to callers as a 4xx detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DomainError(String);

impl DomainError {
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

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

/// Declares a closed status vocabulary whose spelling is part of the API.
macro_rules! status_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The exact string of PRODUCT.md.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => stringify!($variant)),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = DomainError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $(stringify!($variant) => Ok($name::$variant),)+
                    other => Err(DomainError::new(format!(
                        concat!("unknown ", stringify!($name), " `{}`"), other))),
                }
            }
        }
    };
}

status_enum!(
    /// Where an order stands, as a customer sees it.
    OrderStatus { Ordered, Paid, Cooked, Dispatched, Delivered, Rejected, Cancelled }
);
status_enum!(
    /// A payment's status, owned by the pay worker.
    PayStatus { Approved, Declined, Refunded }
);
status_enum!(
    /// A kitchen ticket's status, owned by the kitchen worker.
    KitchenStatus { Accepted, Cooked, Rejected, Cancelled }
);
status_enum!(
    /// A delivery's status, owned by the delivery worker.
    DeliveryStatus { Dispatched, Delivered, Cancelled }
);
status_enum!(
    /// A coupon's status, owned by the coupon worker.
    CouponStatus { Issued, Cancelled }
);

impl OrderStatus {
    /// Whether a manager may still cancel an order in this status.
    pub fn is_cancellable(self) -> bool {
        !matches!(
            self,
            OrderStatus::Delivered | OrderStatus::Rejected | OrderStatus::Cancelled
        )
    }
}

/// The kinds of worker. Each owns its queue and its database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerKind {
    Pay,
    Kitchen,
    Delivery,
    Coupon,
}

impl WorkerKind {
    pub const ALL: [WorkerKind; 4] = [
        WorkerKind::Pay,
        WorkerKind::Kitchen,
        WorkerKind::Delivery,
        WorkerKind::Coupon,
    ];

    /// The lower-case name used in queue names, configuration and the saga file.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerKind::Pay => "pay",
            WorkerKind::Kitchen => "kitchen",
            WorkerKind::Delivery => "delivery",
            WorkerKind::Coupon => "coupon",
        }
    }
}

impl fmt::Display for WorkerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WorkerKind {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WorkerKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                DomainError::new(format!(
                    "unknown worker `{s}` (expected pay, kitchen, delivery or coupon)"
                ))
            })
    }
}

/// The read models, each with its own queue and its own database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ViewKind {
    /// "My orders": per order, the status of every part of it.
    MyOrders,
    /// The food catalog's stock.
    Catalog,
    /// Reviews per product.
    Reviews,
}

impl ViewKind {
    pub const ALL: [ViewKind; 3] = [ViewKind::MyOrders, ViewKind::Catalog, ViewKind::Reviews];

    /// Its name in queue and file names.
    pub fn as_str(self) -> &'static str {
        match self {
            ViewKind::MyOrders => "my-orders",
            ViewKind::Catalog => "catalog",
            ViewKind::Reviews => "reviews",
        }
    }

    /// The event routing keys it listens to (topic patterns).
    pub fn bindings(self) -> &'static [&'static str] {
        match self {
            ViewKind::MyOrders => &[
                "order.#",
                "pay.#",
                "kitchen.#",
                "delivery.#",
                "coupon.#",
                "catalog.#",
            ],
            ViewKind::Catalog => &["catalog.#"],
            ViewKind::Reviews => &["review.#"],
        }
    }
}

/// Milliseconds since the Unix epoch: the one clock format of storage and wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Millis(pub i64);

impl Millis {
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            // The clock is after 1970 on every machine this runs on.
            .unwrap_or_default();
        Millis(d.as_millis() as i64)
    }

    pub fn plus(self, d: std::time::Duration) -> Self {
        Millis(self.0.saturating_add(d.as_millis() as i64))
    }

    /// Time left until `self`, zero when already past.
    pub fn until_from(self, now: Millis) -> std::time::Duration {
        std::time::Duration::from_millis((self.0 - now.0).max(0) as u64)
    }

    /// RFC 3339 in UTC with milliseconds, for humans and JSON.
    pub fn to_rfc3339(self) -> String {
        const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        // Formatting a valid date with this description cannot fail.
        at.format(FORMAT).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_must_be_positive() {
        assert!(OrderId::new(0).is_err());
        assert!(OrderId::new(-3).is_err());
        assert_eq!(OrderId::new(7).map(OrderId::get), Ok(7));
        assert_eq!("12".parse::<CustomerId>().map(CustomerId::get), Ok(12));
        assert!("x".parse::<FoodId>().is_err());
    }

    #[test]
    fn qty_is_validated_off_the_wire_too() {
        assert_eq!(serde_json::from_str::<Qty>("3").map(Qty::get).ok(), Some(3));
        assert!(serde_json::from_str::<Qty>("0").is_err());
        assert!(serde_json::from_str::<Qty>("-2").is_err());
    }

    #[test]
    fn qty_bounds() {
        assert!(Qty::new(0).is_err());
        assert!(Qty::new(-1).is_err());
        assert!(Qty::new(i64::from(Qty::MAX) + 1).is_err());
        assert_eq!(Qty::new(10).map(Qty::get), Ok(10));
    }

    #[test]
    fn money_is_exact_cents() {
        let price = Money::parse_price("4.0").expect("valid");
        assert_eq!(price.cents(), 400);
        let qty = Qty::new(10).expect("valid");
        assert_eq!(price.total(qty).map(Money::cents), Ok(4000));
        assert_eq!(Money::parse_price("0.1").map(Money::cents), Ok(10));
        assert_eq!(Money::parse_price(" 12 ").map(Money::cents), Ok(1200));
        assert_eq!(
            Money::parse_price("999999.99").map(Money::cents),
            Ok(99_999_999)
        );
        for bad in ["-1", "1.234", "NaN", "1e3", "", ".5", "1.", "+1", "1 000"] {
            assert!(Money::parse_price(bad).is_err(), "{bad:?} is not a price");
        }
        assert!(
            Money::parse_price("1000000000.01").is_err(),
            "above the price cap"
        );
        assert_eq!(Money::from_cents(4005).to_string(), "40.05");
    }

    #[test]
    fn large_totals_are_exact_or_refused() {
        // The order that once made every stored saga unreadable.
        let price = Money::parse_price("999999.99").expect("valid");
        let total = price.total(Qty::new(136).expect("valid")).expect("fits");
        assert_eq!(total.cents(), 13_599_999_864);
        let wire = serde_json::to_string(&total).expect("serializes");
        assert_eq!(wire, "13599999864", "cents travel as an integer");
        assert_eq!(serde_json::from_str::<Money>(&wire).ok(), Some(total));
        let max_price = Money::from_cents(Money::MAX_PRICE_CENTS);
        assert!(
            max_price
                .total(Qty::new(i64::from(Qty::MAX)).expect("valid"))
                .is_err()
        );
        assert!(serde_json::from_str::<Money>("-1").is_err());
        assert!(
            serde_json::from_str::<Money>("4.0").is_err(),
            "no floats on the wire"
        );
    }

    #[test]
    fn status_strings_round_trip() {
        for s in OrderStatus::ALL {
            assert_eq!(s.as_str().parse::<OrderStatus>(), Ok(*s));
        }
        assert!("paid".parse::<OrderStatus>().is_err());
        assert!(!OrderStatus::Delivered.is_cancellable());
        assert!(OrderStatus::Dispatched.is_cancellable());
    }

    #[test]
    fn rfc3339_formatting() {
        assert_eq!(Millis(0).to_rfc3339(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Millis(1_795_000_000_123).to_rfc3339(),
            "2026-11-18T11:06:40.123Z"
        );
    }
}
