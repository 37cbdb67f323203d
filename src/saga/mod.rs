//! The saga: its definition (data, from `sagas/`) and its rules (a pure
//! state machine).

pub mod breaker;
pub mod definition;
pub mod machine;
