//! Domain types shared by every role: identifiers, money, quantities and the
//! status vocabularies that PRODUCT.md fixes as exact strings.
//!
//! Identifiers parse rather than wrap: an `OrderId` is always positive, a
//! `Qty` is always at least one, `Money` is a whole number of cents.
//!
//! - [`ids`]: `OrderId`, `CustomerId`, `FoodId`, `ReviewId`, `IdempotencyKey`;
//! - [`money`]: `Money` (cents) and `Qty`;
//! - [`status`]: the status vocabularies, `WorkerKind`, `ViewKind`;
//! - [`time`]: `Millis`, the one clock format of storage and wire.

mod ids;
mod money;
mod status;
mod time;

pub use ids::*;
pub use money::*;
pub use status::*;
pub use time::*;

/// A validation failure of a domain value, shown to callers as a 4xx detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DomainError(String);

impl DomainError {
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

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
