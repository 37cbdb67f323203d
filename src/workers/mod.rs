//! Workers: pay, kitchen, delivery and coupon. Each is an actix actor that
//! owns its SQLite database and consumes its own command queue.
//!
//! Handling one command, and where a crash leaves it:
//! 1. receive (unacked) — crash: the broker redelivers;
//! 2. one transaction: the effect, the inbox row (message id → replies), the
//!    replies in the outbox — crash before commit: nothing happened, redelivered;
//! 3. ack — crash before it: redelivered, the inbox answers with the stored
//!    replies and no second effect;
//! 4. the outbox relay publishes the replies — crash before the confirm: the
//!    relay publishes them again at start-up.

mod actor;
mod consume;
pub mod coupon;
pub mod delivery;
pub mod kitchen;
pub mod pay;
pub(crate) mod records;
pub mod requests;

use std::sync::Arc;

use rusqlite::Connection;

use crate::config::{Config, FailureCount, Latency, Mode};
use crate::domain::{Millis, Money, OrderId, WorkerKind};
use crate::messages::{Direction, OrderDetails, Progress, ReplyOutcome, WorkerCommand};
use crate::storage::inbox;
pub use actor::{Apply, NoteDeadLetter, WorkerActor};
pub use consume::consume;

/// What applying a command came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A definitive answer: recorded in the inbox with the command's id.
    Final(Vec<ReplyOutcome>),
    /// A passing failure (a compensation that could not be applied now): it
    /// is answered but not recorded, so the next attempt runs again.
    Transient(ReplyOutcome),
    /// Progress that does not fit the record's state; nothing is answered.
    Ignored(String),
    /// A compensation found no record of the order here (its forward action
    /// has not come): a tombstone is left, and it counts as compensated.
    NoRecord,
}

/// What applying a command in a transaction gives.
pub type Effect = rusqlite::Result<Applied>;

/// The business rules of one worker kind, applied inside the transaction
/// of a command this worker has not seen before (see [`apply`]).
pub trait WorkerLogic: Send + Sync + 'static {
    /// What an order had not reached when its compensation came before its
    /// forward action: "the order was cancelled before {reached}".
    fn reached(&self) -> &'static str;

    /// A step's forward action, for an order not cancelled before it.
    fn forward(&self, tx: &Connection, order: &OrderDetails, now: Millis) -> Effect;

    /// A step's compensation ([`Applied::NoRecord`] when this worker has
    /// no record of the order).
    fn compensate(&self, tx: &Connection, order: &OrderDetails, now: Millis) -> Effect;

    /// Progress a person reports (manual mode); most workers take none.
    fn progress(
        &self,
        _tx: &Connection,
        order: OrderId,
        progress: Progress,
        _now: Millis,
    ) -> Effect {
        Ok(Applied::Ignored(format!(
            "this worker takes no progress (`{}` for order {order})",
            progress.as_str()
        )))
    }
}

/// Applies a command this worker has not seen before. A compensation that
/// finds no record leaves a tombstone, so the forward action, if it comes
/// late, is refused: only what may have happened is compensated.
pub fn apply(logic: &dyn WorkerLogic, tx: &Connection, cmd: &WorkerCommand, now: Millis) -> Effect {
    match cmd {
        WorkerCommand::Step {
            direction: Direction::Do,
            order,
            ..
        } => {
            if inbox::is_buried(tx, order.order_id)? {
                let reason = format!("the order was cancelled before {}", logic.reached());
                return Ok(Applied::Final(vec![ReplyOutcome::Failed { reason }]));
            }
            logic.forward(tx, order, now)
        }
        WorkerCommand::Step {
            direction: Direction::Undo,
            order,
            ..
        } => match logic.compensate(tx, order, now)? {
            Applied::NoRecord => {
                inbox::bury(tx, order.order_id)?;
                Ok(Applied::Final(vec![ReplyOutcome::Compensated]))
            }
            applied => Ok(applied),
        },
        WorkerCommand::Progress {
            order_id, progress, ..
        } => logic.progress(tx, *order_id, *progress, now),
    }
}

/// The simulation knobs of PRODUCT.md.
#[derive(Debug, Clone, Copy)]
pub struct Knobs {
    pub kitchen_mode: Mode,
    pub delivery_mode: Mode,
    pub pay_decline_above: Money,
}

impl Knobs {
    pub fn from_config(c: &Config) -> Self {
        Knobs {
            kitchen_mode: c.kitchen_mode,
            delivery_mode: c.delivery_mode,
            pay_decline_above: c.pay_decline_above,
        }
    }
}

/// The logic of a worker kind.
pub fn logic_for(kind: WorkerKind, knobs: Knobs) -> Arc<dyn WorkerLogic> {
    match kind {
        WorkerKind::Pay => Arc::new(pay::PayWorker {
            decline_above: knobs.pay_decline_above,
        }),
        WorkerKind::Kitchen => Arc::new(kitchen::KitchenWorker {
            mode: knobs.kitchen_mode,
        }),
        WorkerKind::Delivery => Arc::new(delivery::DeliveryWorker {
            mode: knobs.delivery_mode,
        }),
        WorkerKind::Coupon => Arc::new(coupon::CouponWorker),
    }
}

/// The schema of a worker's database (its tables, its inbox).
pub fn schema_of(kind: WorkerKind) -> String {
    let tables = match kind {
        WorkerKind::Pay => pay::SCHEMA.to_owned(),
        WorkerKind::Kitchen => kitchen::SCHEMA.concat(),
        WorkerKind::Delivery => delivery::SCHEMA.to_owned(),
        WorkerKind::Coupon => coupon::SCHEMA.to_owned(),
    };
    format!("{tables}\n{}", inbox::SCHEMA)
}

/// How a worker misbehaves on purpose (simulation knobs).
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Artificial latency before each command.
    pub latency: Option<Latency>,
    /// Each compensation fails this many times before it succeeds.
    pub compensation_failures: Option<FailureCount>,
    /// Publish every reply twice (same message id), as a broker may.
    pub duplicate_replies: bool,
}
