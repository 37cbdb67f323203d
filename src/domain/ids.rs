//! Identifiers: positive integers that parse rather than wrap, and the
//! client's idempotency key.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{DomainError, integer_schema};

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

/// The saga of an order has the order's id.
pub type SagaId = OrderId;

/// A client's `Idempotency-Key` on `POST /orders`: 1 to 200 visible ASCII
/// characters. It parses on the wire too.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let ok = !raw.is_empty() && raw.len() <= 200 && raw.bytes().all(|b| b.is_ascii_graphic());
        if ok {
            Ok(IdempotencyKey(raw.to_owned()))
        } else {
            Err(DomainError::new(
                "Idempotency-Key must be 1 to 200 visible ASCII characters",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for IdempotencyKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IdempotencyKey::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
