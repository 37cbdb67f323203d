//! Who calls. Every caller is someone: anonymous, a customer (the token
//! answered at sign-up), or a staff member (kitchen, delivery, manager) with
//! a staff token or the manager's static token. Tokens are JWTs the service
//! verifies: its own, signed with the deployment's key ([`keys`]), or an
//! external identity provider's, by its published keys (a JWKS).
//!
//! The API authenticates every request before its body is read (401 for a
//! missing or bad credential where one is needed); the owner of an object
//! authenticates the forwarded credential again and decides what the caller
//! may see of it (another customer's object is "not found").

pub mod keys;
mod tokens;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::Secret;
use crate::domain::CustomerId;
pub use tokens::{Authenticator, Issued};

/// A staff member's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StaffRole {
    /// Marks tickets cooked; reads tickets.
    Kitchen,
    /// Marks deliveries picked up and delivered; reads deliveries.
    Delivery,
    /// Everything: the catalog, cancellation, retry, every read, orders on
    /// a customer's behalf, inspection.
    Manager,
}

impl StaffRole {
    pub fn as_str(self) -> &'static str {
        match self {
            StaffRole::Kitchen => "kitchen",
            StaffRole::Delivery => "delivery",
            StaffRole::Manager => "manager",
        }
    }
}

impl std::str::FromStr for StaffRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kitchen" => Ok(StaffRole::Kitchen),
            "delivery" => Ok(StaffRole::Delivery),
            "manager" => Ok(StaffRole::Manager),
            other => Err(format!(
                "unknown staff role `{other}` (expected kitchen, delivery or manager)"
            )),
        }
    }
}

/// Who a caller proved to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    Anonymous,
    /// A customer, with the name they signed up with.
    Customer {
        id: CustomerId,
        name: String,
    },
    /// A staff member: their role, and who they are (the token's subject).
    Staff {
        role: StaffRole,
        subject: String,
    },
}

/// A caller: who they proved to be, and the credential they proved it with
/// (forwarded to the owners of partitions, which verify it again).
#[derive(Clone, PartialEq, Eq)]
pub struct Caller {
    who: Who,
    credential: Option<Secret>,
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The credential never prints.
        f.debug_tuple("Caller").field(&self.who).finish()
    }
}

impl Caller {
    pub fn anonymous() -> Self {
        Caller {
            who: Who::Anonymous,
            credential: None,
        }
    }

    pub(crate) fn new(who: Who, credential: Option<Secret>) -> Self {
        Caller { who, credential }
    }

    pub fn who(&self) -> &Who {
        &self.who
    }

    /// The credential to forward to an owner.
    pub fn credential(&self) -> Option<&Secret> {
        self.credential.as_ref()
    }

    /// The customer this caller is, if one.
    pub fn customer(&self) -> Option<CustomerId> {
        match &self.who {
            Who::Customer { id, .. } => Some(*id),
            _ => None,
        }
    }

    /// The staff role of this caller, if one.
    pub fn staff(&self) -> Option<StaffRole> {
        match &self.who {
            Who::Staff { role, .. } => Some(*role),
            _ => None,
        }
    }

    pub fn is_manager(&self) -> bool {
        self.staff() == Some(StaffRole::Manager)
    }

    /// Whether this caller may see a customer's objects: the customer
    /// themself or a manager (staff see theirs by role, not by owner).
    pub fn sees_customer(&self, customer: CustomerId) -> bool {
        match &self.who {
            Who::Customer { id, .. } => *id == customer,
            Who::Staff { .. } => true,
            Who::Anonymous => false,
        }
    }

    /// Who did something, as a saga's history records it: `manager:alice`,
    /// `customer:7`.
    pub fn actor(&self) -> String {
        match &self.who {
            Who::Anonymous => "anonymous".to_owned(),
            Who::Customer { id, .. } => format!("customer:{id}"),
            Who::Staff { role, subject } => format!("{}:{subject}", role.as_str()),
        }
    }
}

/// Why a credential was refused: always a 401, never a 5xx.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);
