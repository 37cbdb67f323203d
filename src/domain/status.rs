//! The status vocabularies whose spelling is part of the API, and the kinds
//! of workers and read models.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::DomainError;

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
