//! The checkers the simulator runs after every step, one file each. They only read peers'
//! observable state; they never change it.

mod agreement;
mod liveness;
mod order;
mod validity;

pub(crate) use agreement::Agreement;
pub(crate) use liveness::Liveness;
pub(crate) use order::Order;
pub(crate) use validity::Validity;
