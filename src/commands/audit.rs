//! `emrflow audit --subject ROOT | --identity NAME`: who did what, and when, from the ledger's
//! audit trail: anchors, grants, and every recorded read, query, update and export, accepted or
//! denied.

use std::collections::BTreeMap;

use anyhow::bail;
use clap::Args;
use ledger::contracts::{AuditEvent, Identity, Outcome, Role};
use ledger::crypto::{Digest, PublicKey};
use ledger::ids::Time;
use serde::Serialize;

use super::provenance::{LedgerArgs, Provenance};
use super::{ExitStatus, print_json, print_lines};

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("filter").required(true).args(["subject", "identity"])))]
pub(crate) struct AuditArgs {
    /// Events on this anchored root (hex)
    #[arg(long, value_name = "ROOT")]
    subject: Option<String>,
    /// Events by this identity: its registered name, or its public key (hex)
    #[arg(long, value_name = "NAME")]
    identity: Option<String>,
    /// Print JSON (one array of events) on stdout
    #[arg(long)]
    json: bool,
    /// The ledger: a directory holds an embedded four-peer ledger; a genesis.json file names the
    /// peers of a running cluster [default: $EMRFLOW_HOME/ledger]
    #[arg(long, env = "EMRFLOW_LEDGER", value_name = "DIR|GENESIS")]
    ledger: Option<std::path::PathBuf>,
}

#[derive(Debug, Serialize)]
struct Row {
    time: String,
    height: u64,
    index: u32,
    actor: String,
    actor_name: String,
    role: String,
    action: String,
    subject: Option<String>,
    purpose: Option<String>,
    outcome: String,
    tx: String,
}

pub(crate) async fn run(args: AuditArgs) -> anyhow::Result<ExitStatus> {
    // `--identity` here names whose events to list; the key this command signs its query
    // with comes from EMRFLOW_IDENTITY (or the ledger directory's per-role identities).
    let ledger = LedgerArgs {
        ledger: args.ledger.clone(),
        identity: std::env::var_os("EMRFLOW_IDENTITY").map(std::path::PathBuf::from),
    };
    let provenance = Provenance::open(&ledger).await?;
    let rows = collect(&args, &provenance).await;
    provenance.close().await?;
    let rows = rows?;
    if args.json {
        print_json(&rows)?;
        return Ok(ExitStatus::Success);
    }
    if rows.is_empty() {
        print_lines(&["no audit events".to_string()]);
    }
    let lines: Vec<String> = rows
        .iter()
        .map(|r| {
            let subject = r
                .subject
                .as_deref()
                .map_or_else(String::new, |s| format!(" {}…", &s[..16.min(s.len())]));
            let purpose = r
                .purpose
                .as_deref()
                .map_or_else(String::new, |p| format!(" ({})", escape(p)));
            format!(
                "{} h{}.{} {} [{}] {}{}{} -> {}",
                r.time,
                r.height,
                r.index,
                escape(&r.actor_name),
                r.role,
                r.action,
                subject,
                purpose,
                escape(&r.outcome)
            )
        })
        .collect();
    print_lines(&lines);
    Ok(ExitStatus::Success)
}

async fn collect(args: &AuditArgs, provenance: &Provenance) -> anyhow::Result<Vec<Row>> {
    let subject = args
        .subject
        .as_deref()
        .map(|s| {
            Digest::from_hex(s)
                .map_err(|e| anyhow::anyhow!("--subject {s:?} is not a 64-digit hex root: {e}"))
        })
        .transpose()?;
    let mut names: BTreeMap<PublicKey, Option<Identity>> = BTreeMap::new();
    // The audit trail is answered to the compliance role (or a subject's owner) only.
    let reader = provenance.reader_as(Role::Compliance).await?;
    let events = match (&subject, &args.identity) {
        (Some(s), _) => {
            reader
                .audit(Some(*s), None, Time(0), Time(u64::MAX))
                .await?
        }
        (None, Some(who)) => match PublicKey::from_hex(who) {
            Ok(key) => {
                reader
                    .audit(None, Some(key), Time(0), Time(u64::MAX))
                    .await?
            }
            Err(_) => {
                // By name: every actor's registered name is looked up once.
                let all = reader.audit(None, None, Time(0), Time(u64::MAX)).await?;
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
                    bail!("no identity named {who:?} has audit events on this ledger");
                };
                all.into_iter().filter(|e| e.actor == key).collect()
            }
        },
        (None, None) => bail!("pass --subject ROOT or --identity NAME"),
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

/// `s` with every control character written as an escape (`\n`, `\u{1b}`): text from the
/// ledger (names, purposes, denial reasons) is chosen by whoever signed the transaction, and
/// printed raw a newline or a terminal escape sequence could fake or hide audit lines.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn row(e: &AuditEvent, who: Option<&Identity>) -> Row {
    Row {
        time: chrono::DateTime::from_timestamp_millis(e.time.0 as i64).map_or_else(
            || e.time.0.to_string(),
            |t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        ),
        height: e.position.seq.0,
        index: e.position.index,
        actor: e.actor.to_hex(),
        actor_name: who.map_or_else(|| "(unregistered)".to_string(), |i| i.name.clone()),
        role: who.map_or_else(|| "-".to_string(), |i| i.role.to_string()),
        action: format!("{:?}", e.action),
        subject: e.subject.map(|s| s.to_hex()),
        purpose: e.purpose.clone(),
        outcome: match &e.outcome {
            Outcome::Accepted => "accepted".to_string(),
            Outcome::Denied { reason } => format!("denied: {reason}"),
        },
        tx: e.tx.to_hex(),
    }
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn control_characters_are_escaped_and_other_text_is_kept() {
        assert_eq!(
            escape("care\n2026-01-01T00:00:00.000Z h1.0 admin [admin] Grant -> accepted"),
            "care\\n2026-01-01T00:00:00.000Z h1.0 admin [admin] Grant -> accepted"
        );
        assert_eq!(escape("\u{1b}[2K\rfake"), "\\u{1b}[2K\\rfake");
        assert_eq!(escape("Zoë, café"), "Zoë, café");
    }
}
