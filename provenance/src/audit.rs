//! The audit trail as people read it: who did what to which root, when, and with what outcome,
//! from the ledger's audit events, with each actor's registered name and role. Every text that
//! came from a transaction is escaped, so a name or a purpose cannot fake lines in a terminal.

use std::collections::BTreeMap;

use ledger::client::Reader;
use ledger::contracts::{AuditEvent, Identity, Outcome, Role};
use ledger::crypto::PublicKey;
use ledger::ids::Time;
use merkle::Digest;
use serde::Serialize;

use crate::connection::{Conn, Provenance};
use crate::error::{Error, Result};

/// Whose events to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditFilter {
    /// Events on one anchored root.
    Subject(Digest),
    /// Events by one identity: its registered name, or its public key in hex.
    Identity(String),
}

/// One audit event, for people and scripts.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRow {
    /// Block time, RFC 3339 in UTC.
    pub time: String,
    /// Block height.
    pub height: u64,
    /// Position in the block.
    pub index: u32,
    /// The actor's public key (hex).
    pub actor: String,
    /// The actor's registered name, escaped.
    pub actor_name: String,
    /// The actor's role.
    pub role: String,
    /// What was done.
    pub action: String,
    /// On which root.
    pub subject: Option<String>,
    /// Why, escaped.
    pub purpose: Option<String>,
    /// `accepted` or `denied: reason`, escaped.
    pub outcome: String,
    /// The transaction id.
    pub tx: String,
}

/// Escapes control characters (`\n`, ESC, …) as `\u{..}` so that text from a transaction stays
/// on its own line and cannot move the cursor or recolour a terminal.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// The audit events `filter` selects, in commit order, asked as the compliance role.
pub async fn audit(provenance: &Provenance, filter: &AuditFilter) -> Result<Vec<AuditRow>> {
    // The audit trail is answered to the compliance role (or a subject's owner) only.
    let reader = provenance.reader_as(Role::Compliance).await?;
    audit_with(&reader, filter, (Time(0), Time(u64::MAX))).await
}

/// The audit events `filter` selects with block times in `[from, to]`, in commit order, asked
/// with `reader`'s rights (a server asks with its caller's).
pub async fn audit_with(
    reader: &Reader<'_, Conn>,
    filter: &AuditFilter,
    (from, to): (Time, Time),
) -> Result<Vec<AuditRow>> {
    let mut names: BTreeMap<PublicKey, Option<Identity>> = BTreeMap::new();
    let events = match filter {
        AuditFilter::Subject(s) => reader.audit(Some(*s), None, from, to).await?,
        AuditFilter::Identity(who) => match PublicKey::from_hex(who) {
            Ok(key) => reader.audit(None, Some(key), from, to).await?,
            Err(_) => {
                // By name: every actor's registered name is looked up once.
                let all = reader.audit(None, None, from, to).await?;
                let mut found = None;
                for e in &all {
                    if let std::collections::btree_map::Entry::Vacant(slot) = names.entry(e.actor) {
                        slot.insert(reader.identity(e.actor).await?);
                    }
                    if names[&e.actor].as_ref().is_some_and(|i| i.name == *who) {
                        found = Some(e.actor);
                    }
                }
                let Some(key) = found else {
                    return Err(Error::invalid(format!(
                        "no identity named {:?} has audit events on this ledger",
                        escape(who)
                    )));
                };
                all.into_iter().filter(|e| e.actor == key).collect()
            }
        },
    };
    let mut rows = Vec::with_capacity(events.len());
    for e in events {
        if let std::collections::btree_map::Entry::Vacant(slot) = names.entry(e.actor) {
            slot.insert(reader.identity(e.actor).await?);
        }
        rows.push(row(&e, names[&e.actor].as_ref()));
    }
    Ok(rows)
}

/// Block time (ms since the epoch) as RFC 3339 in UTC.
pub fn time(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
    )
}

fn row(e: &AuditEvent, who: Option<&Identity>) -> AuditRow {
    AuditRow {
        time: time(e.time.0),
        height: e.position.seq.0,
        index: e.position.index,
        actor: e.actor.to_hex(),
        actor_name: who.map_or_else(|| "(unregistered)".to_string(), |i| escape(&i.name)),
        role: who.map_or_else(|| "-".to_string(), |i| i.role.to_string()),
        action: format!("{:?}", e.action),
        subject: e.subject.map(|s| s.to_hex()),
        purpose: e.purpose.as_deref().map(escape),
        outcome: match &e.outcome {
            Outcome::Accepted => "accepted".to_string(),
            Outcome::Granted(d) => format!("granted {}", d.categories()),
            Outcome::Denied { reason } => format!("denied: {}", escape(reason)),
        },
        tx: e.tx.to_hex(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_fake_lines() {
        assert_eq!(escape("plain name (ok)"), "plain name (ok)");
        let forged = "alice\n2026-01-01 h1.0 admin [admin] Grant -> accepted\x1b[2K";
        let shown = escape(forged);
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert!(shown.contains("\\u{a}") && shown.contains("\\u{1b}"));
    }
}
