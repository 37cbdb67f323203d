//! Property tests of the pure saga state machine: a simulated world of
//! workers (with inboxes and tombstones, as the real ones) and a scheduler
//! that reorders, duplicates and delays every message, fires timeouts early
//! and injects manager cancels at any moment.
//!
//! Checked for every run:
//! - the saga ends terminal (`Completed` or `Compensated`);
//! - a cancel is accepted only while the order can be cancelled, a second
//!   one never, and an accepted cancel ends `Compensated` / `Cancelled`;
//! - only effects that may have happened are compensated, each at most once,
//!   and after compensation no effect is left; after completion all are;
//! - nothing goes forward after a cancel;
//! - a reply applied twice changes nothing the second time;
//! - the history is a legal path of the state machine.

use std::collections::{HashMap, HashSet};

use hearty::domain::{CustomerId, FoodId, Millis, Money, OrderId, OrderStatus, Qty};
use hearty::messages::{Direction, OrderDetails, Progress, ReplyOutcome};
use hearty::saga::definition::SagaDefinition;
use hearty::saga::machine::{
    Admission, Command, Effect, Event, Refusal, Saga, SagaState, StepStatus,
};
use proptest::prelude::*;

const DEF: &str = r#"
name = "order_fulfilment"
version = 1
[[steps]]
name = "pay"
worker = "pay"
action = "authorize"
compensation = "refund"
marks_order = "Paid"
timeout = "1s"
retry = { max_attempts = 6, initial_delay = "10ms", factor = 2.0, max_delay = "1s" }
[[steps]]
name = "kitchen"
worker = "kitchen"
action = "accept"
compensation = "cancel"
marks_order = "Cooked"
timeout = "1s"
retry = { max_attempts = 6, initial_delay = "10ms", factor = 2.0, max_delay = "1s" }
[[steps]]
name = "delivery"
worker = "delivery"
action = "dispatch"
compensation = "cancel"
marks_order = "Dispatched"
timeout = "1s"
retry = { max_attempts = 6, initial_delay = "10ms", factor = 2.0, max_delay = "1s" }
[[steps]]
name = "coupon"
worker = "coupon"
action = "issue"
compensation = "cancel"
timeout = "1s"
compensation_blocks = false
retry = { max_attempts = 6, initial_delay = "10ms", factor = 2.0, max_delay = "1s" }
"#;

/// A message somewhere between the orchestrator and a worker.
#[derive(Debug, Clone)]
enum Msg {
    Command {
        step: usize,
        dir: Direction,
        attempt: u32,
    },
    Reply {
        step: usize,
        attempt: u32,
        outcome: ReplyOutcome,
    },
    Timer {
        step: usize,
        attempt: u32,
        at: Millis,
    },
    /// A person completes a manual step (through the saga).
    Person { step: usize },
    /// A person's progress, accepted by the saga, on its way to the worker.
    Progress { step: usize, progress: Progress },
}

/// One worker's truth.
#[derive(Debug, Default, Clone)]
struct WorkerState {
    applied: bool,
    undone: u32,
    tombstone: bool,
    inbox: HashMap<Direction, Vec<ReplyOutcome>>,
    transient_failures_left: u32,
    /// The delivery was handed to the customer.
    delivered: bool,
}

/// How the simulated workers behave in one run.
#[derive(Debug, Clone)]
struct Behaviour {
    declines: [bool; 4],
    manual: [bool; 4],
    compensation_failures: [u32; 4],
}

struct World {
    def: SagaDefinition,
    saga: Saga,
    now: Millis,
    pending: Vec<Msg>,
    workers: Vec<WorkerState>,
    behaviour: Behaviour,
    /// Early timer fires left per step (bounded so retries never run out).
    timer_budget: [u32; 4],
    do_sent: [bool; 4],
    cancel_accepted: bool,
    cancels_refused: u32,
    delivered_accepted: bool,
}

fn order() -> OrderDetails {
    OrderDetails {
        order_id: OrderId::new(1).expect("valid"),
        customer_id: CustomerId::new(1).expect("valid"),
        food_id: FoodId::new(1).expect("valid"),
        qty: Qty::new(2).expect("valid"),
        amount: Money::from_cents(800),
    }
}

impl World {
    fn new(behaviour: Behaviour) -> Self {
        Self::with_definition(DEF, behaviour)
    }

    fn with_definition(text: &str, behaviour: Behaviour) -> Self {
        let def = SagaDefinition::parse(text).expect("test saga is valid");
        let now = Millis(1_000_000);
        let saga = Saga::new(&def, order(), now);
        let workers = (0..4)
            .map(|i| WorkerState {
                transient_failures_left: behaviour.compensation_failures[i],
                ..WorkerState::default()
            })
            .collect();
        World {
            def,
            saga,
            now,
            pending: Vec::new(),
            workers,
            behaviour,
            timer_budget: [2; 4],
            do_sent: [false; 4],
            cancel_accepted: false,
            cancels_refused: 0,
            delivered_accepted: false,
        }
    }

    /// Applies an event, checks the per-transition properties and queues
    /// the resulting commands.
    fn apply(&mut self, event: Event) -> Result<(), Refusal> {
        let before = self.saga.clone();
        let transition = self.saga.apply(&self.def, &event, self.now)?;
        // History is a legal path.
        let mut state = before.state;
        for h in &transition.history {
            if let Some(from) = h.from {
                assert_eq!(from, state, "history `from` must be the previous state");
                assert!(
                    from.can_become(h.to),
                    "illegal transition {from:?} -> {:?}",
                    h.to
                );
                state = h.to;
            }
        }
        assert_eq!(state, self.saga.state);
        for c in &transition.commands {
            match *c {
                Command::Send {
                    step,
                    direction,
                    attempt,
                    ..
                } => {
                    match direction {
                        Direction::Do => {
                            assert!(!self.cancel_accepted, "forward command after a cancel");
                            self.do_sent[step] = true;
                        }
                        Direction::Undo => {
                            assert!(self.do_sent[step], "compensating a step never started");
                            let (status, effect) =
                                (before.steps[step].status, before.steps[step].effect);
                            assert_ne!(
                                effect,
                                Effect::None,
                                "compensating a step known to have had no effect"
                            );
                            // An unknown outcome becomes known (a reply) or is
                            // given up on (a timeout) only by an event of the step.
                            let about_this_step = match &event {
                                Event::Reply { step: name, .. } => {
                                    *name == self.def.steps[step].name
                                }
                                Event::Timeout { step: s, .. } => *s == step,
                                _ => false,
                            };
                            assert!(
                                about_this_step
                                    || !(status == StepStatus::Running
                                        && effect == Effect::Unknown),
                                "compensating step {step} while its outcome is still unknown"
                            );
                        }
                    }
                    self.pending.push(Msg::Command {
                        step,
                        dir: direction,
                        attempt,
                    });
                }
                Command::ArmTimer { step, attempt, at } => {
                    self.pending.push(Msg::Timer { step, attempt, at })
                }
                Command::Progress { step, progress } => {
                    self.pending.push(Msg::Progress { step, progress })
                }
                // Only `pending_timers` arms it, for sagas placed with a deadline.
                Command::ArmAdmission { .. } => {}
            }
        }
        // A reply applied twice changes nothing the second time.
        if let Event::Reply { .. } = event {
            let mut again = self.saga.clone();
            let t = again
                .apply(&self.def, &event, self.now)
                .expect("replies are never refused");
            assert!(
                !t.changed(),
                "a duplicated reply changed the saga: {event:?}"
            );
        }
        Ok(())
    }

    fn worker_handles(&mut self, step: usize, dir: Direction, attempt: u32) {
        let w = &mut self.workers[step];
        let reply = |outcome| Msg::Reply {
            step,
            attempt,
            outcome,
        };
        if let Some(stored) = w.inbox.get(&dir) {
            let replies: Vec<_> = stored.iter().cloned().map(reply).collect();
            self.pending.extend(replies);
            return;
        }
        let outcomes = match dir {
            Direction::Do => {
                if w.tombstone {
                    vec![ReplyOutcome::Failed {
                        reason: "cancelled".into(),
                    }]
                } else if self.behaviour.declines[step] {
                    vec![ReplyOutcome::Failed {
                        reason: "declined".into(),
                    }]
                } else {
                    w.applied = true;
                    if self.behaviour.manual[step] {
                        self.pending.push(Msg::Person { step });
                        vec![ReplyOutcome::Accepted]
                    } else {
                        vec![ReplyOutcome::Accepted, ReplyOutcome::Done]
                    }
                }
            }
            Direction::Undo => {
                assert!(!w.delivered, "compensating a delivered order");
                if w.transient_failures_left > 0 {
                    w.transient_failures_left -= 1;
                    self.pending.push(reply(ReplyOutcome::CompensationFailed {
                        reason: "busy".into(),
                    }));
                    return;
                }
                if w.applied {
                    w.undone += 1;
                } else {
                    w.tombstone = true;
                }
                vec![ReplyOutcome::Compensated]
            }
        };
        w.inbox.insert(dir, outcomes.clone());
        self.pending.extend(outcomes.into_iter().map(reply));
    }

    fn deliver(&mut self, index: usize, duplicate: bool) {
        let msg = if duplicate {
            self.pending[index].clone()
        } else {
            self.pending.remove(index)
        };
        match msg {
            Msg::Command { step, dir, attempt } => self.worker_handles(step, dir, attempt),
            Msg::Reply {
                step,
                attempt,
                outcome,
            } => {
                let name = self.def.steps[step].name.clone();
                self.now = Millis(self.now.0 + 1);
                self.apply(Event::Reply {
                    step: name,
                    attempt,
                    outcome,
                })
                .expect("replies are never refused");
            }
            Msg::Timer { step, attempt, at } => {
                if self.timer_budget[step] > 0 {
                    self.timer_budget[step] -= 1;
                    self.now = self.now.max(at);
                    self.apply(Event::Timeout { step, attempt })
                        .expect("timeouts are never refused");
                }
            }
            Msg::Person { step } => {
                let progress = if step == 1 {
                    Progress::Cooked
                } else {
                    Progress::PickedUp
                };
                let refused = self.apply(Event::Progress { progress }).is_err();
                // The saga may not know yet that the worker accepted: the
                // person tries again later, while the step still runs.
                let s = &self.saga.steps[step];
                if refused
                    && self.saga.state == SagaState::Running
                    && s.status == StepStatus::Running
                    && s.effect == Effect::Unknown
                {
                    self.pending.push(Msg::Person { step });
                }
            }
            Msg::Progress { step, progress } => {
                let w = &mut self.workers[step];
                if progress == Progress::Delivered {
                    assert!(
                        w.applied && w.undone == 0,
                        "delivering a cancelled delivery"
                    );
                    w.delivered = true;
                } else if w.applied && w.undone == 0 {
                    self.pending.push(Msg::Reply {
                        step,
                        attempt: 0,
                        outcome: ReplyOutcome::Done,
                    });
                }
            }
        }
    }

    /// The delivery team reports the order delivered.
    fn deliver_to_customer(&mut self) {
        let open =
            self.saga.order_status.is_cancellable() && self.saga.state == SagaState::Completed;
        match self.apply(Event::Progress {
            progress: Progress::Delivered,
        }) {
            Ok(()) => {
                assert!(open, "delivered accepted for an order that was not out");
                assert!(!self.cancel_accepted, "delivered accepted after a cancel");
                self.delivered_accepted = true;
                assert_eq!(self.saga.order_status, OrderStatus::Delivered);
            }
            Err(_) => assert!(!open, "an order out for delivery refused `delivered`"),
        }
    }

    fn cancel(&mut self) {
        let cancellable = self.saga.order_status.is_cancellable()
            && matches!(self.saga.state, SagaState::Running | SagaState::Completed);
        match self.apply(Event::Cancel) {
            Ok(()) => {
                assert!(cancellable, "cancel accepted for a non-cancellable order");
                assert!(!self.cancel_accepted, "a second cancel was accepted");
                self.cancel_accepted = true;
                assert_eq!(self.saga.order_status, OrderStatus::Cancelled);
            }
            Err(_) => {
                assert!(
                    !cancellable || self.cancel_accepted,
                    "a cancellable order refused a cancel"
                );
                self.cancels_refused += 1;
            }
        }
    }

    /// Delivers everything left in order, dropping timers (nothing is lost,
    /// so nothing needs one).
    fn drain(&mut self) {
        let mut guard = 0;
        while !self.pending.is_empty() {
            guard += 1;
            assert!(guard < 10_000, "the saga does not settle");
            if let Some(i) = self
                .pending
                .iter()
                .position(|m| !matches!(m, Msg::Timer { .. }))
            {
                self.deliver(i, false);
            } else {
                self.pending.clear();
            }
        }
    }

    fn check_end(&self) {
        let state = self.saga.state;
        assert!(
            matches!(state, SagaState::Completed | SagaState::Compensated),
            "saga ended {state:?}: {:#?}",
            self.saga
        );
        for (i, w) in self.workers.iter().enumerate() {
            assert!(w.undone <= 1, "step {i} compensated {} times", w.undone);
            match state {
                SagaState::Completed => {
                    assert!(
                        w.applied && w.undone == 0,
                        "completed saga with step {i} not in effect"
                    );
                }
                _ => {
                    if w.applied {
                        assert_eq!(w.undone, 1, "compensated saga left step {i} in effect");
                    }
                }
            }
        }
        if self.delivered_accepted {
            assert_eq!(state, SagaState::Completed);
            assert_eq!(self.saga.order_status, OrderStatus::Delivered);
        }
        if self.cancel_accepted {
            assert_eq!(state, SagaState::Compensated);
            assert_eq!(self.saga.order_status, OrderStatus::Cancelled);
        }
        if state == SagaState::Compensated && !self.cancel_accepted {
            assert_eq!(self.saga.order_status, OrderStatus::Rejected);
        }
        let declined = self.behaviour.declines.iter().any(|d| *d);
        if !declined && !self.cancel_accepted {
            assert_eq!(
                state,
                SagaState::Completed,
                "nothing failed, nothing cancelled"
            );
        }
    }
}

/// One scheduler decision.
#[derive(Debug, Clone)]
enum Choice {
    Deliver(usize),
    Duplicate(usize),
    Cancel,
    Delivered,
}

fn choice() -> impl Strategy<Value = Choice> {
    prop_oneof![
        6 => any::<usize>().prop_map(Choice::Deliver),
        2 => any::<usize>().prop_map(Choice::Duplicate),
        1 => Just(Choice::Cancel),
        1 => Just(Choice::Delivered),
    ]
}

fn behaviour() -> impl Strategy<Value = Behaviour> {
    (
        prop::array::uniform4(prop::bool::weighted(0.1)),
        prop::array::uniform4(any::<bool>()),
        prop::array::uniform4(0u32..3),
    )
        .prop_map(|(declines, manual, compensation_failures)| Behaviour {
            declines,
            // Only kitchen and delivery have manual modes.
            manual: [false, manual[1], manual[2], false],
            compensation_failures,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_interleaving_settles_correctly(
        behaviour in behaviour(),
        choices in prop::collection::vec(choice(), 0..200),
    ) {
        let mut w = World::new(behaviour);
        w.apply(Event::Start).expect("start");
        for c in choices {
            match c {
                Choice::Cancel => w.cancel(),
                Choice::Delivered => w.deliver_to_customer(),
                _ if w.pending.is_empty() => {}
                Choice::Deliver(i) => { let n = w.pending.len(); w.deliver(i % n, false) }
                Choice::Duplicate(i) => { let n = w.pending.len(); w.deliver(i % n, true) }
            }
        }
        w.drain();
        w.check_end();
        // Once settled, a cancel is refused unless the order is still open.
        let open = w.saga.order_status.is_cancellable();
        let accepted_before = w.cancel_accepted;
        w.cancel();
        if !open || accepted_before {
            prop_assert!(w.cancels_refused > 0);
        }
    }
}

#[test]
fn cancel_while_kitchen_in_flight_waits_for_its_outcome() {
    let behaviour = Behaviour {
        declines: [false; 4],
        manual: [false; 4],
        compensation_failures: [0; 4],
    };
    let mut w = World::new(behaviour);
    w.apply(Event::Start).expect("start");
    // pay command → worker → Done reply → orchestrator.
    w.deliver(0, false); // pay command
    while w.saga.steps[0].status != StepStatus::Done {
        let reply = w
            .pending
            .iter()
            .position(|m| matches!(m, Msg::Reply { .. }))
            .expect("pay reply");
        w.deliver(reply, false);
    }
    // The kitchen command is out; cancel before it is answered.
    w.cancel();
    assert!(w.cancel_accepted);
    assert_eq!(w.saga.state, SagaState::Compensating);
    // No refund yet: the kitchen's outcome is unknown and blocks.
    assert!(
        !w.pending.iter().any(|m| matches!(
            m,
            Msg::Command {
                dir: Direction::Undo,
                ..
            }
        )),
        "compensation sent before the kitchen's outcome was known"
    );
    w.drain();
    w.check_end();
    assert_eq!(
        w.workers[1].undone, 1,
        "the late kitchen success was compensated"
    );
    assert_eq!(w.workers[0].undone, 1, "the payment was refunded");
}

#[test]
fn coupon_compensation_does_not_block_the_refund() {
    let behaviour = Behaviour {
        declines: [false; 4],
        manual: [false; 4],
        compensation_failures: [0; 4],
    };
    let mut w = World::new(behaviour);
    w.apply(Event::Start).expect("start");
    w.drain();
    assert_eq!(w.saga.state, SagaState::Completed);
    w.cancel();
    let undos: HashSet<usize> = w
        .pending
        .iter()
        .filter_map(|m| match m {
            Msg::Command {
                step,
                dir: Direction::Undo,
                ..
            } => Some(*step),
            _ => None,
        })
        .collect();
    // Coupon (3) does not block: delivery (2) goes out with it.
    assert_eq!(undos, HashSet::from([3, 2]));
    w.drain();
    w.check_end();
}

#[test]
fn a_compensation_that_never_succeeds_fails_the_saga_and_retry_resumes_it() {
    let behaviour = Behaviour {
        declines: [false; 4],
        manual: [false; 4],
        compensation_failures: [100, 0, 0, 0],
    };
    let mut w = World::new(behaviour);
    w.apply(Event::Start).expect("start");
    w.drain();
    w.cancel();
    w.drain();
    assert_eq!(w.saga.state, SagaState::Failed);
    assert!(
        w.saga.reason.as_deref().unwrap_or("").contains("pay"),
        "{:?}",
        w.saga.reason
    );
    assert!(matches!(
        w.apply(Event::Cancel),
        Err(Refusal::NotCancellable(_))
    ));
    // The operator fixes the payment system and retries.
    w.workers[0].transient_failures_left = 0;
    w.apply(Event::Retry).expect("retry a failed saga");
    w.drain();
    w.check_end();
    assert!(matches!(
        w.apply(Event::Retry),
        Err(Refusal::NotFailed(SagaState::Compensated))
    ));
}

#[test]
fn a_declined_payment_establishes_nothing() {
    let behaviour = Behaviour {
        declines: [true, false, false, false],
        manual: [false; 4],
        compensation_failures: [0; 4],
    };
    let mut w = World::new(behaviour);
    w.apply(Event::Start).expect("start");
    w.drain();
    assert_eq!(w.saga.state, SagaState::Compensated);
    assert_eq!(w.saga.order_status, OrderStatus::Rejected);
    assert!(
        w.do_sent == [true, false, false, false],
        "nothing after the payment"
    );
    assert!(matches!(w.saga.admission(), Admission::Declined(_)));
}

/// `DEF` where one step's compensation is tried only once.
fn one_compensation_attempt(step: &str) -> String {
    let marker = format!("name = \"{step}\"\n");
    DEF.replace(
        &marker,
        &format!("{marker}compensation_retry = {{ max_attempts = 1, initial_delay = \"10ms\", factor = 2.0, max_delay = \"1s\" }}\n"),
    )
}

fn no_failures() -> Behaviour {
    Behaviour {
        declines: [false; 4],
        manual: [false; 4],
        compensation_failures: [0; 4],
    }
}

/// Issue 10, defect 4: the coupon's compensation does not block, so its
/// failure must not hold back the refund and the stock.
#[test]
fn a_failing_coupon_compensation_holds_back_nothing() {
    let mut w = World::with_definition(
        &one_compensation_attempt("coupon"),
        Behaviour {
            compensation_failures: [0, 0, 0, 100],
            ..no_failures()
        },
    );
    w.apply(Event::Start).expect("start");
    w.drain();
    assert_eq!(w.saga.state, SagaState::Completed);
    w.cancel();
    w.drain();
    assert_eq!(w.saga.state, SagaState::Failed, "the coupon is stuck");
    for (i, name) in ["pay", "kitchen", "delivery"].iter().enumerate() {
        assert_eq!(w.workers[i].undone, 1, "{name} was compensated");
        assert_eq!(w.saga.steps[i].status, StepStatus::Compensated, "{name}");
    }
    assert_eq!(w.saga.steps[3].status, StepStatus::Compensating);
    assert!(
        w.saga.reason.as_deref().unwrap_or("").contains("coupon"),
        "{:?}",
        w.saga.reason
    );
    // The coupon system is fixed; the operator retries.
    w.workers[3].transient_failures_left = 0;
    w.apply(Event::Retry).expect("retry");
    w.drain();
    w.check_end();
    assert_eq!(
        w.saga.reason.as_deref(),
        Some("cancelled by the kitchen manager"),
        "a compensated saga shows why it compensated, not an old failure"
    );
}

/// Issue 10, defect 4: a blocking step's `Compensated` that arrives after
/// its attempts ran out resumes the compensation it held back.
#[test]
fn a_late_compensated_resumes_a_stuck_compensation() {
    let mut w = World::with_definition(&one_compensation_attempt("delivery"), no_failures());
    w.apply(Event::Start).expect("start");
    w.drain();
    w.cancel();
    // The coupon (which does not block) is compensated at once...
    while let Some(i) = w
        .pending
        .iter()
        .position(|m| matches!(m, Msg::Command { step: 3, .. } | Msg::Reply { step: 3, .. }))
    {
        w.deliver(i, false);
    }
    // ...and the delivery's undo times out before its worker answers.
    let timer = w
        .pending
        .iter()
        .position(|m| matches!(m, Msg::Timer { step: 2, .. }))
        .expect("the delivery's undo timer");
    w.deliver(timer, false);
    assert_eq!(w.saga.state, SagaState::Failed);
    assert_eq!(
        w.workers[0].undone, 0,
        "the refund waits behind the delivery"
    );
    // Now the worker answers: the saga resumes and refunds.
    w.drain();
    w.check_end();
    assert_eq!(w.saga.state, SagaState::Compensated);
    assert_eq!(w.workers[0].undone, 1, "the payment was refunded");
    assert_eq!(w.workers[1].undone, 1, "the stock came back");
}

/// Issue 10, defect 3: an `Abandon` (the caller gave up waiting) never
/// touches an order whose payment succeeded.
#[test]
fn abandon_never_touches_a_paid_order() {
    let mut w = World::new(no_failures());
    w.apply(Event::Start).expect("start");
    w.drain();
    assert_eq!(w.saga.state, SagaState::Completed);
    let abandon = Event::Abandon {
        reason: "payment did not answer in time".into(),
    };
    let t = w
        .saga
        .apply(&w.def, &abandon, w.now)
        .expect("never refused");
    assert!(!t.changed(), "a completed, paid order was abandoned");
    // While the payment is still running, it is abandoned.
    let mut fresh = World::new(no_failures());
    fresh.apply(Event::Start).expect("start");
    fresh.apply(abandon).expect("never refused");
    assert_eq!(fresh.saga.state, SagaState::Compensating);
    assert_eq!(fresh.saga.order_status, OrderStatus::Rejected);
    assert!(matches!(fresh.saga.admission(), Admission::Unavailable(_)));
}

/// A paid order that a later step refuses (out of stock at the kitchen) was
/// established: a replay of its key answers 201 for it, not a 503 that
/// would place it again.
#[test]
fn a_paid_order_stays_established_when_a_later_step_refuses() {
    let mut w = World::new(Behaviour {
        declines: [false, true, false, false],
        ..no_failures()
    });
    w.apply(Event::Start).expect("start");
    w.drain();
    w.check_end();
    assert_eq!(w.saga.order_status, OrderStatus::Rejected);
    assert_eq!(w.saga.admission(), Admission::Established);
}

/// Review finding: a person's report lost on its way (the in-process
/// transport dies with its process) is sent again when the step's timeout
/// passes, until the worker confirms it.
#[test]
fn a_lost_progress_report_is_sent_again() {
    let mut w = World::new(Behaviour {
        manual: [false, true, false, false],
        ..no_failures()
    });
    w.apply(Event::Start).expect("start");
    // Run until the kitchen waits for a person (drop the person's own try).
    while w.saga.steps[1].effect != Effect::Applied {
        let i = w
            .pending
            .iter()
            .position(|m| !matches!(m, Msg::Timer { .. } | Msg::Person { .. }))
            .expect("progress");
        w.deliver(i, false);
    }
    w.pending
        .retain(|m| !matches!(m, Msg::Person { .. } | Msg::Timer { .. }));
    w.apply(Event::Progress {
        progress: Progress::Cooked,
    })
    .expect("the kitchen waits for it");
    assert_eq!(w.saga.steps[1].reported, Some(Progress::Cooked));
    // The report is lost.
    w.pending.retain(|m| !matches!(m, Msg::Progress { .. }));
    assert!(!w.saga.pending_timers().is_empty(), "a restart re-arms it");
    let timer = w
        .pending
        .iter()
        .position(|m| matches!(m, Msg::Timer { step: 1, .. }))
        .expect("a timer for the report");
    w.deliver(timer, false);
    assert!(
        w.pending.iter().any(|m| matches!(
            m,
            Msg::Progress {
                step: 1,
                progress: Progress::Cooked
            }
        )),
        "sent again"
    );
    w.drain();
    w.check_end();
    assert_eq!(w.saga.steps[1].reported, None);
}

/// Review finding: the deadline of `POST /orders` is the saga's, stored, so
/// a restart cannot forget to abandon an order nobody was answered for.
#[test]
fn the_admission_deadline_survives_a_restart() {
    let mut w = World::new(no_failures());
    w.saga.admit_by = Some(w.now.plus(std::time::Duration::from_millis(500)));
    w.apply(Event::Start).expect("start");
    // "Restart": only what is stored is left; the deadline's timer comes back.
    let stored: Saga =
        serde_json::from_str(&serde_json::to_string(&w.saga).expect("json")).expect("decodes");
    assert!(
        stored
            .pending_timers()
            .iter()
            .any(|c| matches!(c, Command::ArmAdmission { .. })),
        "{:?}",
        stored.pending_timers()
    );
    // The timer fires before the payment answered: the order is abandoned.
    w.apply(Event::Abandon {
        reason: "payment did not answer in time".into(),
    })
    .expect("never refused");
    assert_eq!(w.saga.order_status, OrderStatus::Rejected);
    assert!(
        !w.saga
            .pending_timers()
            .iter()
            .any(|c| matches!(c, Command::ArmAdmission { .. })),
        "no admission timer once decided"
    );
    w.drain();
    assert_eq!(w.saga.state, SagaState::Compensated);
    let pay = &w.workers[0];
    assert!(
        !pay.applied || pay.undone == 1,
        "a late approval is refunded"
    );
    assert!(w.do_sent[0] && !w.do_sent[1], "nothing after the payment");
}

/// Review finding: the reason of a `Failed` saga names the stuck step that
/// holds the others back, not merely the last one.
#[test]
fn a_failed_saga_names_the_blocking_stuck_step() {
    let text = one_compensation_attempt("coupon").replace(
        "name = \"kitchen\"\n",
        "name = \"kitchen\"\ncompensation_retry = { max_attempts = 1, initial_delay = \"10ms\", factor = 2.0, max_delay = \"1s\" }\n",
    );
    let mut w = World::with_definition(
        &text,
        Behaviour {
            compensation_failures: [0, 100, 0, 100],
            ..no_failures()
        },
    );
    w.apply(Event::Start).expect("start");
    w.drain();
    w.cancel();
    w.drain();
    assert_eq!(w.saga.state, SagaState::Failed);
    let reason = w.saga.reason.clone().unwrap_or_default();
    assert!(reason.contains("kitchen"), "{reason}");
    assert_eq!(
        w.workers[0].undone, 0,
        "the refund waits behind the kitchen"
    );
}
