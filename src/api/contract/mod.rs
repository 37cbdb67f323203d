//! The HTTP contract: every request and response body and query string as a
//! Rust type. Handlers take and give only these; `/openapi.json` is derived
//! from them (`api::docs`), so what the document says is what the code does.
//!
//! - [`lenient`]: the seed's leniency (numbers sent as strings), in one place;
//! - [`requests`]: bodies and query strings, judged whole (400 when one does
//!   not fit its schema);
//! - [`responses`]: what the API answers, built from the domain at the edge.

pub mod lenient;
pub mod requests;
pub mod responses;
