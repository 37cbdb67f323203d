//! What an API process remembers of the owners' answers because it cannot
//! change: customers that exist (customers are never deleted). Bounded: at
//! its capacity the set starts again empty, and the owner is asked again.

use std::collections::HashSet;
use std::sync::Mutex;

use crate::domain::CustomerId;

/// Customers an owner has confirmed, so that an order does not ask again.
pub struct KnownCustomers {
    seen: Mutex<HashSet<CustomerId>>,
    capacity: usize,
}

impl KnownCustomers {
    /// Remembers up to `capacity` customers (8 bytes each, plus the set's
    /// own overhead).
    pub fn new(capacity: usize) -> Self {
        KnownCustomers {
            seen: Mutex::new(HashSet::new()),
            capacity,
        }
    }

    pub fn contains(&self, customer: CustomerId) -> bool {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&customer)
    }

    /// Remembers a customer its owner has confirmed.
    pub fn confirmed(&self, customer: CustomerId) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= self.capacity {
            seen.clear();
        }
        seen.insert(customer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_confirmed_customers_up_to_its_capacity() {
        let id = |n| CustomerId::new(n).expect("positive");
        let known = KnownCustomers::new(2);
        assert!(!known.contains(id(1)));
        known.confirmed(id(1));
        known.confirmed(id(2));
        assert!(known.contains(id(1)) && known.contains(id(2)));
        known.confirmed(id(3));
        assert!(known.contains(id(3)));
        assert!(!known.contains(id(1)), "starts again once full");
    }
}
