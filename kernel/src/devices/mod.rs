//! Device models a guest sees: pure state machines driven by the exit
//! handlers, host-tested.

pub mod console;
pub mod uart;
