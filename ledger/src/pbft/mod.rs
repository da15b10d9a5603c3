//! The PBFT core (Castro & Liskov, OSDI '99 and TOCS 2002): a pure state machine with one entry
//! point, [`Replica::handle`]. It owns ordering, prepared and committed certificates,
//! checkpoints with watermarks and garbage collection, view change and new view, and the
//! decision to fetch state. It must not do IO: no tokio, no sockets, no clock, no filesystem, no
//! global RNG. Time arrives as [`Input::Tick`]; effects leave as [`Output`]s that a host (the
//! [`crate::node`] or the simulator) carries out.
//!
//! Paper references in comments: "§4.2" etc. are sections of the OSDI '99 paper, which the TOCS
//! version keeps with the same numbering for the signature-based protocol.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::panic))]

mod message;
mod replica;
#[cfg(test)]
mod tests;

pub use message::{
    Batch, CONSENSUS_DOMAIN, Checkpoint, CheckpointProof, Commit, Message, NewView, PrePrepare,
    Prepare, PreparedProof, Signable, Signed, ViewChange,
};
pub use replica::{
    Config, Input, MAX_BATCH_BYTES, MAX_CLOCK_SKEW_MS, MAX_MESSAGE_BYTES, MAX_VIEW_AHEAD, Output,
    PersistentState, Replica, Restore, SlotState, Status, Trace,
};
