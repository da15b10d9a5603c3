//! Total order and monotonicity: a correct peer's chain only grows, one height at a time
//! (blocks execute in sequence order), its view never decreases, and a restart loses nothing
//! that was executed before the crash.

use crate::ids::{SeqNo, View};

/// What each peer showed last.
#[derive(Debug, Default)]
pub(crate) struct Order {
    last: Vec<(SeqNo, View)>,
}

impl Order {
    /// A checker for `n` peers.
    pub(crate) fn new(n: usize) -> Self {
        Self {
            last: vec![(SeqNo(0), View(0)); n],
        }
    }

    /// The height last seen on `node`.
    pub(crate) fn height(&self, node: usize) -> SeqNo {
        self.last.get(node).map_or(SeqNo(0), |l| l.0)
    }

    /// Checks `node`'s new height and view against what it showed before.
    pub(crate) fn check(&mut self, node: usize, height: SeqNo, view: View) -> Result<(), String> {
        let Some(last) = self.last.get_mut(node) else {
            return Err(format!("no peer{node}"));
        };
        if height < last.0 {
            return Err(format!(
                "order: peer{node} went from height {} back to {}",
                last.0.0, height.0
            ));
        }
        if view < last.1 {
            return Err(format!(
                "order: peer{node} went from {} back to {}",
                last.1, view
            ));
        }
        *last = (height, view);
        Ok(())
    }
}
