//! Rate limits (`governor`): placing orders and writing reviews per
//! customer and per client address, signing up per client address. Each API replica keeps its own
//! counts (a replica behind a balancer sees its share of a client's
//! requests); a refused request is a 429 with `Retry-After`.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use super::access::Limit;
use crate::auth::Caller;
use crate::config::{Config, Rate};
use crate::domain::CustomerId;

/// The limiters of one process.
pub struct Limits {
    orders_per_customer: Option<DefaultKeyedRateLimiter<CustomerId>>,
    reviews_per_customer: Option<DefaultKeyedRateLimiter<CustomerId>>,
    per_address: Option<DefaultKeyedRateLimiter<IpAddr>>,
    signups_per_address: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

fn limiter<K: std::hash::Hash + Eq + Clone>(rate: Rate) -> Option<DefaultKeyedRateLimiter<K>> {
    let (n, period): (NonZeroU32, Duration) = rate.0?;
    // A burst of `n`, refilled evenly over `period`.
    let quota = Quota::with_period(period / n.get())?.allow_burst(n);
    Some(DefaultKeyedRateLimiter::keyed(quota))
}

/// How long until `limiter` lets `key` through again, if it does not now.
fn refused<K: std::hash::Hash + Eq + Clone>(
    limiter: &Option<DefaultKeyedRateLimiter<K>>,
    key: &K,
) -> Option<Duration> {
    let limiter = limiter.as_ref()?;
    limiter
        .check_key(key)
        .err()
        .map(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
}

impl Limits {
    pub fn new(config: &Config) -> Self {
        Limits {
            orders_per_customer: limiter(config.rate_orders),
            reviews_per_customer: limiter(config.rate_reviews),
            per_address: limiter(config.rate_address),
            signups_per_address: limiter(config.rate_signups),
        }
    }

    /// Counts one request against `limit`; refused: how long to wait.
    pub fn check(&self, limit: Limit, caller: &Caller, client: IpAddr) -> Result<(), Duration> {
        let wait = match limit {
            Limit::Orders => caller
                .customer()
                .and_then(|c| refused(&self.orders_per_customer, &c))
                .or_else(|| refused(&self.per_address, &client)),
            Limit::Reviews => caller
                .customer()
                .and_then(|c| refused(&self.reviews_per_customer, &c))
                .or_else(|| refused(&self.per_address, &client)),
            Limit::SignUps => refused(&self.signups_per_address, &client)
                .or_else(|| refused(&self.per_address, &client)),
        };
        match wait {
            None => Ok(()),
            Some(w) => Err(w),
        }
    }

    /// Forgets keys whose counts have refilled, so the maps do not grow with
    /// every address ever seen.
    pub fn forget_idle(&self) {
        for l in [&self.orders_per_customer, &self.reviews_per_customer]
            .into_iter()
            .flatten()
        {
            l.retain_recent();
        }
        for l in [&self.per_address, &self.signups_per_address]
            .into_iter()
            .flatten()
        {
            l.retain_recent();
        }
    }
}
