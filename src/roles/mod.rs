//! The commands of the one binary. Wiring only: the work is in the modules they call.

pub mod agent;
pub mod collect;
pub mod consume;
pub mod inspect;
pub mod replay;
pub mod run;
