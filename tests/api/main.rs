//! End-to-end tests through HTTP, over the in-process transport and over
//! the real RabbitMQ broker (`HEARTY_TEST_AMQP_URL`).

#[path = "../common/mod.rs"]
mod common;
mod helpers;

mod access;
mod bad_input;
mod cancellation;
mod duplicates;
mod fuzz;
mod inspection;
mod invariants;
mod observability;
mod order_saga;
mod races;
mod read_models;
mod topology;
mod ui;
mod upgrade;
