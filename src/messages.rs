//! The wire contract between the orchestrator and the workers: commands,
//! replies, their message ids and types. Serialization happens here only.
//!
//! Message ids are deterministic, so a re-sent command carries the id of the
//! first send and the worker's inbox recognises it:
//! `order-7.pay.do`, `order-7.pay.undo`, `order-7.kitchen.cooked`, and a
//! reply's id is its command's id plus `.reply.<outcome>`.

use serde::{Deserialize, Serialize};

use crate::domain::{CustomerId, FoodId, Money, OrderId, Qty, WorkerKind};

/// The forward action and the compensation of each worker kind.
pub fn actions_of(worker: WorkerKind) -> (&'static str, &'static str) {
    match worker {
        WorkerKind::Pay => ("authorize", "refund"),
        WorkerKind::Kitchen => ("accept", "cancel"),
        WorkerKind::Delivery => ("dispatch", "cancel"),
        WorkerKind::Coupon => ("issue", "cancel"),
    }
}

/// What the saga knows of its order; every command carries it, so a worker
/// needs nothing but the message to act.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderDetails {
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    pub food_id: FoodId,
    pub qty: Qty,
    pub amount: Money,
}

/// The key that places a worker's record of an order in a partition: the
/// food id for the kitchen (one partition owns each food's stock and its
/// tickets), the order id for the others.
pub fn partition_key(worker: WorkerKind, order: &OrderDetails) -> i64 {
    match worker {
        WorkerKind::Kitchen => order.food_id.get(),
        WorkerKind::Pay | WorkerKind::Delivery | WorkerKind::Coupon => order.order_id.get(),
    }
}

/// Which way a command goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The forward action of a step.
    Do,
    /// Its compensation.
    Undo,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Do => "do",
            Direction::Undo => "undo",
        }
    }
}

/// Progress a person reports through the API in manual mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Progress {
    /// The kitchen cooked the ticket.
    Cooked,
    /// The delivery team picked the order up.
    PickedUp,
    /// The delivery team handed the order over.
    Delivered,
}

impl Progress {
    pub fn as_str(self) -> &'static str {
        match self {
            Progress::Cooked => "cooked",
            Progress::PickedUp => "pickedUp",
            Progress::Delivered => "delivered",
        }
    }

    /// The worker that owns the record this progress changes.
    pub fn worker(self) -> WorkerKind {
        match self {
            Progress::Cooked => WorkerKind::Kitchen,
            Progress::PickedUp | Progress::Delivered => WorkerKind::Delivery,
        }
    }
}

/// A message on a worker's command queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum WorkerCommand {
    /// A step's forward action or compensation, sent by the orchestrator.
    #[serde(rename_all = "camelCase")]
    Step {
        step: String,
        direction: Direction,
        /// Which attempt this is; not part of the message id.
        #[serde(default)]
        attempt: u32,
        order: OrderDetails,
    },
    /// Manual-mode progress, sent by the API on behalf of a person.
    #[serde(rename_all = "camelCase")]
    Progress {
        step: String,
        order_id: OrderId,
        progress: Progress,
    },
}

impl WorkerCommand {
    pub fn order_id(&self) -> OrderId {
        match self {
            WorkerCommand::Step { order, .. } => order.order_id,
            WorkerCommand::Progress { order_id, .. } => *order_id,
        }
    }

    /// The key of the partition of `worker` this command is for, when it
    /// says (a kitchen's progress report names no food).
    pub fn partition_key(&self, worker: WorkerKind) -> Option<i64> {
        match (self, worker) {
            (WorkerCommand::Step { order, .. }, _) => Some(partition_key(worker, order)),
            (WorkerCommand::Progress { .. }, WorkerKind::Kitchen) => None,
            (WorkerCommand::Progress { order_id, .. }, _) => Some(order_id.get()),
        }
    }

    pub fn step(&self) -> &str {
        match self {
            WorkerCommand::Step { step, .. } | WorkerCommand::Progress { step, .. } => step,
        }
    }

    /// The deterministic message id of this command.
    pub fn message_id(&self) -> String {
        match self {
            WorkerCommand::Step {
                step,
                direction,
                order,
                ..
            } => format!("order-{}.{step}.{}", order.order_id, direction.as_str()),
            WorkerCommand::Progress {
                step,
                order_id,
                progress,
            } => format!("order-{order_id}.{step}.{}", progress.as_str()),
        }
    }

    /// The AMQP `type` property: `<worker>.<action>`.
    pub fn message_type(&self, worker: WorkerKind) -> String {
        let (action, compensation) = actions_of(worker);
        match self {
            WorkerCommand::Step {
                direction: Direction::Do,
                ..
            } => format!("{worker}.{action}"),
            WorkerCommand::Step {
                direction: Direction::Undo,
                ..
            } => format!("{worker}.{compensation}"),
            WorkerCommand::Progress { progress, .. } => format!("{worker}.{}", progress.as_str()),
        }
    }
}

/// What a worker tells the orchestrator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "camelCase")]
pub enum ReplyOutcome {
    /// The forward action took effect but the step is not finished yet
    /// (a kitchen ticket accepted, waiting to be cooked).
    Accepted,
    /// The forward action is complete.
    Done,
    /// The forward action was refused for a business reason and had no effect.
    Failed { reason: String },
    /// The compensation is complete (or there was nothing to undo).
    Compensated,
    /// The compensation could not be applied this time; it will be retried.
    CompensationFailed { reason: String },
    /// The order was handed to the customer: it can no longer be cancelled.
    Delivered,
    /// A command of this step could not be processed and went to the
    /// dead-letter queue.
    DeadLettered { reason: String },
}

impl ReplyOutcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            ReplyOutcome::Accepted => "accepted",
            ReplyOutcome::Done => "done",
            ReplyOutcome::Failed { .. } => "failed",
            ReplyOutcome::Compensated => "compensated",
            ReplyOutcome::CompensationFailed { .. } => "compensationFailed",
            ReplyOutcome::Delivered => "delivered",
            ReplyOutcome::DeadLettered { .. } => "deadLettered",
        }
    }
}

/// A message on the orchestrator's replies queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerReply {
    pub order_id: OrderId,
    pub step: String,
    /// The id of the command this answers.
    pub in_reply_to: String,
    /// The attempt of the command this answers.
    #[serde(default)]
    pub attempt: u32,
    #[serde(flatten)]
    pub outcome: ReplyOutcome,
    /// Who answered: the receiver judges the epoch the reply carries
    /// against that owner's (absent from earlier versions' replies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<ReplySender>,
}

/// The worker owner that answered: its kind and the key of its partition
/// (the order id; the food id for the kitchen).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplySender {
    pub worker: WorkerKind,
    pub key: i64,
}

impl WorkerReply {
    pub fn message_id(&self) -> String {
        format!("{}.reply.{}", self.in_reply_to, self.outcome.as_str())
    }

    pub fn message_type(&self) -> String {
        format!("reply.{}.{}", self.step, self.outcome.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> OrderDetails {
        OrderDetails {
            order_id: OrderId::new(7).expect("valid"),
            customer_id: CustomerId::new(1).expect("valid"),
            food_id: FoodId::new(1).expect("valid"),
            qty: Qty::new(10).expect("valid"),
            amount: Money::from_cents(4000),
        }
    }

    #[test]
    fn ids_and_types_read_well() {
        let cmd = WorkerCommand::Step {
            step: "pay".into(),
            direction: Direction::Undo,
            attempt: 1,
            order: order(),
        };
        assert_eq!(cmd.message_id(), "order-7.pay.undo");
        assert_eq!(cmd.message_type(WorkerKind::Pay), "pay.refund");
        let reply = WorkerReply {
            order_id: order().order_id,
            step: "pay".into(),
            in_reply_to: cmd.message_id(),
            attempt: 1,
            outcome: ReplyOutcome::Compensated,
            sender: None,
        };
        assert_eq!(reply.message_id(), "order-7.pay.undo.reply.compensated");
        assert_eq!(reply.message_type(), "reply.pay.compensated");
    }

    #[test]
    fn wire_round_trip() {
        let reply = WorkerReply {
            order_id: order().order_id,
            step: "kitchen".into(),
            in_reply_to: "order-7.kitchen.do".into(),
            attempt: 1,
            outcome: ReplyOutcome::Failed {
                reason: "out of stock".into(),
            },
            sender: Some(ReplySender {
                worker: WorkerKind::Kitchen,
                key: 3,
            }),
        };
        let json = serde_json::to_string(&reply).expect("serializes");
        assert!(json.contains("\"outcome\":\"failed\""), "{json}");
        assert_eq!(
            serde_json::from_str::<WorkerReply>(&json).expect("parses"),
            reply
        );
    }
}
