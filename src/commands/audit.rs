//! `emrflow audit --subject ROOT | --identity NAME`: flags → `provenance::audit` → who did what,
//! and when: anchors, grants, and every recorded read, query, update and export, accepted or
//! denied.

use clap::Args;
use merkle::Digest;
use provenance::audit::AuditFilter;

use super::args::{LedgerArgs, with_ledger};
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

pub(crate) async fn run(args: AuditArgs) -> anyhow::Result<ExitStatus> {
    let filter = match (&args.subject, &args.identity) {
        (Some(s), _) => AuditFilter::Subject(
            Digest::from_hex(s).map_err(|e| anyhow::anyhow!("--subject: {e}"))?,
        ),
        (None, Some(who)) => AuditFilter::Identity(who.clone()),
        (None, None) => anyhow::bail!("pass --subject ROOT or --identity NAME"),
    };
    // `--identity` here names whose events to list; the key this command signs its query
    // with comes from EMRFLOW_IDENTITY (or the ledger directory's per-role identities).
    let ledger = LedgerArgs {
        ledger: args.ledger.clone(),
        identity: std::env::var_os("EMRFLOW_IDENTITY").map(std::path::PathBuf::from),
        ledger_timeout: match std::env::var("EMRFLOW_LEDGER_TIMEOUT") {
            Ok(s) => Some(s.parse().map_err(|e| {
                anyhow::anyhow!("EMRFLOW_LEDGER_TIMEOUT {s:?} is not a number of seconds: {e}")
            })?),
            Err(_) => None,
        },
    };
    let rows = with_ledger(&ledger, async |p| {
        provenance::audit::audit(p, &filter).await
    })
    .await?;
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
                .map_or_else(String::new, |p| format!(" ({p})"));
            format!(
                "{} h{}.{} {} [{}] {}{}{} -> {}",
                r.time,
                r.height,
                r.index,
                r.actor_name,
                r.role,
                r.action,
                subject,
                purpose,
                r.outcome
            )
        })
        .collect();
    print_lines(&lines);
    Ok(ExitStatus::Success)
}
