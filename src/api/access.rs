//! Who may do what: one table, every route × every kind of caller. The
//! guard (`api::guard`) looks a request's route up here before anything
//! else (before its body is read) and answers 401 to an anonymous caller it
//! refuses, 403 to a known one; `Own` lets a customer through to their own
//! objects only, which the owner of the object decides (another
//! customer's is "not found"). A route without a row is refused to all but
//! a manager, so a new route cannot be opened by forgetting it here (and a
//! test checks that every route of the OpenAPI document has its row).
//! README.md shows the same table.

use actix_web::http::Method;

use crate::auth::{Caller, StaffRole, Who};

/// What one kind of caller may do on a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allow {
    No,
    /// A customer's own objects (lists show only theirs).
    Own,
    Yes,
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub anonymous: Allow,
    pub customer: Allow,
    pub kitchen: Allow,
    pub delivery: Allow,
    pub manager: Allow,
}

use Allow::{No, Own, Yes};

const fn access(
    anonymous: Allow,
    customer: Allow,
    kitchen: Allow,
    delivery: Allow,
    manager: Allow,
) -> Access {
    Access {
        anonymous,
        customer,
        kitchen,
        delivery,
        manager,
    }
}

/// Anyone, signed in or not.
pub const PUBLIC: Access = access(Yes, Yes, Yes, Yes, Yes);
/// A customer's own objects, and a manager.
pub const CUSTOMER: Access = access(No, Own, No, No, Yes);
/// The manager only.
pub const MANAGER: Access = access(No, No, No, No, Yes);
/// Any staff member.
pub const STAFF: Access = access(No, No, Yes, Yes, Yes);
/// The kitchen (and the manager).
pub const KITCHEN: Access = access(No, No, Yes, No, Yes);
/// The delivery team (and the manager).
pub const DELIVERY: Access = access(No, No, No, Yes, Yes);
/// Deliveries: their customer, the delivery team, the manager.
pub const DELIVERIES: Access = access(No, Own, No, Yes, Yes);

/// Which rate limit a route counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Placing an order: per customer and per client address.
    Orders,
    /// Signing up: per client address.
    SignUps,
    /// Writing a review: per customer and per client address.
    Reviews,
}

/// One route.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub method: &'static str,
    /// As actix matches it (`/orders/{id}`).
    pub path: &'static str,
    pub access: Access,
    pub limit: Option<Limit>,
}

const fn rule(method: &'static str, path: &'static str, access: Access) -> Rule {
    Rule {
        method,
        path,
        access,
        limit: None,
    }
}

const fn limited(method: &'static str, path: &'static str, access: Access, limit: Limit) -> Rule {
    Rule {
        method,
        path,
        access,
        limit: Some(limit),
    }
}

/// Every route of the service.
pub const RULES: &[Rule] = &[
    limited("POST", "/customers", PUBLIC, Limit::SignUps),
    rule("GET", "/customers", CUSTOMER),
    rule("GET", "/customers/{id}", CUSTOMER),
    rule("POST", "/foodCatalogs", MANAGER),
    rule("GET", "/foodCatalogs", PUBLIC),
    rule("GET", "/foodCatalogs/{id}", PUBLIC),
    rule("GET", "/foodCatalogViews", PUBLIC),
    rule("DELETE", "/foodCatalogViews", PUBLIC),
    limited("POST", "/orders", CUSTOMER, Limit::Orders),
    rule("GET", "/orders", CUSTOMER),
    rule("GET", "/orders/{id}", CUSTOMER),
    rule("GET", "/myOrders", CUSTOMER),
    rule("GET", "/pays", CUSTOMER),
    rule("GET", "/pays/{id}", CUSTOMER),
    rule("GET", "/kitchens", KITCHEN),
    rule("GET", "/kithens", KITCHEN),
    rule("GET", "/kitchens/{id}", KITCHEN),
    rule("DELETE", "/kitchens/{id}", MANAGER),
    rule("POST", "/kitchens/{id}/cooked", KITCHEN),
    rule("GET", "/deliveries", DELIVERIES),
    rule("GET", "/deliveries/{id}", DELIVERIES),
    rule("POST", "/deliveries/{id}/pickedUp", DELIVERY),
    rule("POST", "/deliveries/{id}/delivered", DELIVERY),
    rule("GET", "/coupons", CUSTOMER),
    rule("GET", "/coupons/{id}", CUSTOMER),
    limited("POST", "/reviews", CUSTOMER, Limit::Reviews),
    rule("GET", "/reviews", PUBLIC),
    rule("GET", "/reviewViews", PUBLIC),
    rule("GET", "/reviewView", PUBLIC),
    rule("GET", "/sagas", MANAGER),
    rule("GET", "/sagas/{id}", MANAGER),
    rule("POST", "/sagas/{id}/retry", MANAGER),
    rule("GET", "/ui", MANAGER),
    rule("GET", "/ui/", MANAGER),
    rule("GET", "/ui/config.json", MANAGER),
    rule("GET", "/ui/sagas", MANAGER),
    rule("GET", "/ui/sagas/{id}", MANAGER),
    rule("GET", "/openapi.json", STAFF),
    rule("GET", "/docs/openapi.json", STAFF),
    rule("GET", "/docs", STAFF),
    rule("GET", "/docs/{_:.*}", STAFF),
    rule("GET", "/metrics", STAFF),
    rule("GET", "/health/live", PUBLIC),
    rule("GET", "/health/ready", PUBLIC),
];

/// What a route without a row allows: the manager only.
pub const UNLISTED: Access = MANAGER;

/// Whether the route pattern `path` has a row for some method.
pub fn has_rules(path: &str) -> bool {
    RULES.iter().any(|r| r.path == path)
}

/// The rule of `method` on the route pattern `path`, if there is one.
pub fn rule_of(method: &Method, path: &str) -> Option<&'static Rule> {
    RULES
        .iter()
        .find(|r| r.path == path && r.method == method.as_str())
}

/// Why a caller may not call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// Anonymous, where a credential is needed: 401.
    Unauthenticated,
    /// Known, without the right: 403.
    Forbidden,
}

impl Access {
    /// What `caller` may do here.
    pub fn of(&self, caller: &Caller) -> Allow {
        match caller.who() {
            Who::Anonymous => self.anonymous,
            Who::Customer { .. } => self.customer,
            Who::Staff { role, .. } => match role {
                StaffRole::Kitchen => self.kitchen,
                StaffRole::Delivery => self.delivery,
                StaffRole::Manager => self.manager,
            },
        }
    }

    /// Whether `caller` may call the route at all.
    pub fn decide(&self, caller: &Caller) -> Result<Allow, Denied> {
        match (self.of(caller), caller.who()) {
            (No, Who::Anonymous) => Err(Denied::Unauthenticated),
            (No, _) => Err(Denied::Forbidden),
            (allowed, _) => Ok(allowed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_of_the_document_has_a_row() {
        let doc = super::super::docs::document();
        for (path, item) in &doc.paths.paths {
            for (method, op) in [
                ("GET", &item.get),
                ("POST", &item.post),
                ("DELETE", &item.delete),
            ] {
                if op.is_some() {
                    assert!(
                        RULES.iter().any(|r| r.path == path && r.method == method),
                        "{method} {path} has no row in api::access::RULES"
                    );
                }
            }
        }
    }

    #[test]
    fn each_route_has_one_row() {
        for (i, a) in RULES.iter().enumerate() {
            for b in &RULES[i + 1..] {
                assert!(
                    !(a.method == b.method && a.path == b.path),
                    "{} {} has two rows",
                    a.method,
                    a.path
                );
            }
        }
    }

    #[test]
    fn anonymous_is_unauthenticated_and_staff_forbidden() {
        let anonymous = Caller::anonymous();
        assert_eq!(MANAGER.decide(&anonymous), Err(Denied::Unauthenticated));
        assert_eq!(PUBLIC.decide(&anonymous), Ok(Yes));
        let kitchen = Caller::new(
            Who::Staff {
                role: StaffRole::Kitchen,
                subject: "kim".into(),
            },
            None,
        );
        assert_eq!(MANAGER.decide(&kitchen), Err(Denied::Forbidden));
        assert_eq!(KITCHEN.decide(&kitchen), Ok(Yes));
        let customer = Caller::new(
            Who::Customer {
                id: crate::domain::CustomerId::new(1).expect("valid"),
                name: "yang".into(),
            },
            None,
        );
        assert_eq!(CUSTOMER.decide(&customer), Ok(Own));
        assert_eq!(KITCHEN.decide(&customer), Err(Denied::Forbidden));
    }
}
