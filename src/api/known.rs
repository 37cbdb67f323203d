//! What an API process remembers of the owners' answers, so that an order
//! does not ask them again: customers that exist (customers are never
//! deleted), and for one second the kitchen's answer about a food (its price
//! never changes; its stock is trusted only far above the order, see
//! `placing::STOCK_SLACK`). Both are bounded: at capacity a map starts again
//! empty, and the owners are asked again.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::{CustomerId, FoodId};
use crate::workers::kitchen::Food;

/// How many confirmed customers an API process remembers (a few MB at most).
pub const KNOWN_CUSTOMERS: usize = 200_000;

/// How long the kitchen's answer about a food stands in for asking it: the
/// longest an order can pass on an answer the kitchen would no longer give
/// (it stopped answering, or the food is gone after a restore).
pub const FOOD_ANSWER_TTL: Duration = Duration::from_secs(1);

/// How many foods' answers are kept.
const KNOWN_FOODS: usize = 10_000;

/// Customers an owner has confirmed.
pub struct KnownCustomers {
    seen: Mutex<HashSet<CustomerId>>,
    capacity: usize,
}

impl KnownCustomers {
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

/// The kitchen's latest answers about foods, each for [`FOOD_ANSWER_TTL`].
pub struct KnownFoods {
    answers: Mutex<HashMap<FoodId, (Instant, Food)>>,
    ttl: Duration,
}

impl KnownFoods {
    pub fn new(ttl: Duration) -> Self {
        KnownFoods {
            answers: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    /// The kitchen's answer about `food`, if it is younger than the TTL.
    pub fn get(&self, food: FoodId, now: Instant) -> Option<Food> {
        let answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        answers
            .get(&food)
            .filter(|(at, _)| now.saturating_duration_since(*at) < self.ttl)
            .map(|(_, item)| item.clone())
    }

    /// Counts `qty` of `food` as gone from the remembered answer (an order
    /// this process let through), so that a burst of orders within the
    /// second cannot pass on stock the earlier ones took.
    pub fn took(&self, food: FoodId, qty: i64) {
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, item)) = answers.get_mut(&food) {
            item.stock = item.stock.saturating_sub(qty);
        }
    }

    /// Remembers what the kitchen answered at `at`.
    pub fn answered(&self, item: Food, at: Instant) {
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        if answers.len() >= KNOWN_FOODS && !answers.contains_key(&item.id) {
            answers.clear();
        }
        answers.insert(item.id, (at, item));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Money;

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

    #[test]
    fn a_food_answer_stands_for_its_ttl_only() {
        let food = Food {
            id: FoodId::new(7).expect("positive"),
            name: "cake".into(),
            stock: 5_000,
            price: Money::from_cents(400),
        };
        let known = KnownFoods::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(known.get(food.id, t0), None);
        known.answered(food.clone(), t0);
        assert_eq!(
            known.get(food.id, t0 + Duration::from_millis(999)),
            Some(food.clone())
        );
        assert_eq!(known.get(food.id, t0 + Duration::from_secs(1)), None);
        known.took(food.id, 1_500);
        assert_eq!(known.get(food.id, t0).map(|f| f.stock), Some(3_500));
    }
}
