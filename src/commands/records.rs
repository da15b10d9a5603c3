//! `emrflow records import|get|history|amend|erase` and `emrflow access
//! grant|revoke|break-glass|report|grants`: flags → `records` (the store and the ledger's
//! decisions) → lines or JSON. A refusal by the ledger exits 3.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use ledger::contracts::{Categories, Purpose, Role};
use ledger::crypto::{KeyPair, PublicKey};
use ledger::ids::Time;
use merkle::Digest;
use pipeline::Job;
use records::{GrantScope, MasterKey, PatientView, ReadRequest, Records, Store};

use super::args::LedgerArgs;
use super::run::BarProgress;
use super::{ExitStatus, print_json, print_lines, progress};

/// Where the store is and what opens it.
#[derive(Debug, Clone, Args)]
pub(crate) struct StoreArgs {
    /// The record store's directory [default: $EMRFLOW_HOME/records]
    #[arg(long, env = "EMRFLOW_RECORDS", value_name = "DIR")]
    store: Option<PathBuf>,
    /// File holding the store's master key (64 hex digits) [default: $EMRFLOW_MASTER_KEY]
    #[arg(long, value_name = "FILE")]
    master_key_file: Option<PathBuf>,
    #[command(flatten)]
    ledger: LedgerArgs,
    /// Print JSON on stdout
    #[arg(long)]
    json: bool,
}

impl StoreArgs {
    fn dir(&self) -> PathBuf {
        self.store
            .clone()
            .unwrap_or_else(|| provenance::emrflow_home().join("records"))
    }

    fn master(&self) -> records::Result<MasterKey> {
        MasterKey::load(self.master_key_file.as_deref())
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum RecordsCommand {
    /// Load a job's patients and visits into the record store as one anchored batch
    Import(ImportArgs),
    /// Read a patient's record: the ledger decides which categories you get and records it
    Get(GetArgs),
    /// Every version of a patient's records (a read, decided and recorded the same way)
    History(GetArgs),
    /// Write a new version of one record, anchored and linked to the version it supersedes
    Amend(AmendArgs),
    /// Erase a patient: destroy its key and records, keep a tombstone on the ledger
    Erase(EraseArgs),
    /// Print a new random master key (64 hex digits) for EMRFLOW_MASTER_KEY or a key file
    NewMasterKey,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AccessCommand {
    /// Grant an identity categories of some patients' records for a purpose, until a time
    Grant(GrantArgs),
    /// Revoke a record grant by its id
    Revoke(RevokeArgs),
    /// Open an emergency access to one patient's whole record, with a reason, for minutes
    BreakGlass(BreakGlassArgs),
    /// Every access to one patient's record (or every break-glass access), with proofs
    Report(ReportArgs),
    /// List record grants (yours, one identity's, or all)
    Grants(GrantsArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// The job file: its inputs, joins and [records] section
    job: PathBuf,
    /// Replace an input's location: NAME=PATH (repeatable)
    #[arg(long = "input", value_name = "NAME=LOCATION", value_parser = super::run::parse_pair)]
    inputs: Vec<(String, String)>,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Args)]
pub(crate) struct GetArgs {
    /// The patient id, as the hospital's export names it
    #[arg(long)]
    patient: String,
    /// Categories wanted: all, or a list of demographics, identifiers, vitals, cardiology,
    /// neurology, metabolic, diagnoses, notes
    #[arg(long, default_value = "all")]
    categories: String,
    /// Why: treatment, research, operations or audit
    #[arg(long, default_value = "treatment")]
    purpose: String,
    /// The facility you read as (needed when your grant covers a facility's patients)
    #[arg(long)]
    facility: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Args)]
pub(crate) struct AmendArgs {
    /// The patient id
    #[arg(long)]
    patient: String,
    /// The visit to amend [default: the patient's own record]
    #[arg(long)]
    visit: Option<String>,
    /// A new value: COLUMN=VALUE (COLUMN= for null); repeat for several
    #[arg(long = "set", value_name = "COLUMN=VALUE", required = true)]
    set: Vec<String>,
    /// Why (recorded on the ledger; no patient data)
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Args)]
pub(crate) struct EraseArgs {
    /// The patient id
    #[arg(long)]
    patient: String,
    /// The erasure request's reference (recorded on the ledger; no patient data)
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Args)]
pub(crate) struct GrantArgs {
    /// The grantee: a key file or its public key (hex)
    #[arg(long, value_name = "KEY|HEX")]
    to: String,
    /// Whose records: patient:ID, facility:NAME or all
    #[arg(long)]
    scope: String,
    /// Categories: all, or a comma-separated list
    #[arg(long)]
    categories: String,
    /// Purpose: treatment, research, operations or audit
    #[arg(long)]
    purpose: String,
    /// Days until the grant expires
    #[arg(long, default_value_t = 365)]
    days: u64,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Args)]
pub(crate) struct RevokeArgs {
    /// The grant's id (hex), as `access grant` printed it
    #[arg(long)]
    grant: String,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Args)]
pub(crate) struct BreakGlassArgs {
    /// The patient id
    #[arg(long)]
    patient: String,
    /// The emergency (recorded on the ledger; no patient data)
    #[arg(long)]
    reason: String,
    /// How long the access lasts
    #[arg(long, default_value_t = 60)]
    minutes: u32,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["patient", "break_glass"])))]
pub(crate) struct ReportArgs {
    /// Every access to this patient's record
    #[arg(long)]
    patient: Option<String>,
    /// Every break-glass access, for review
    #[arg(long)]
    break_glass: bool,
    /// Ask only this peer (its index in the genesis): check one peer's copy of the trail
    #[arg(long, value_name = "N")]
    peer: Option<usize>,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Args)]
pub(crate) struct GrantsArgs {
    /// Only this grantee's (a key file or public key hex) [default: all, for admin and
    /// compliance; your own otherwise]
    #[arg(long, value_name = "KEY|HEX")]
    to: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
}

/// Opens the store and the ledger, runs `body`, closes the ledger whatever happened, and prints
/// what `body` returned: JSON with `--json`, else `lines` of it. A refusal by the ledger is
/// reported and exits 3, a ledger that could not commit 4; other errors propagate (exit 2).
async fn run_with<T: serde::Serialize>(
    args: &StoreArgs,
    body: impl AsyncFnOnce(&Records<'_>, &provenance::Provenance) -> records::Result<T>,
    lines: impl FnOnce(&T) -> Vec<String>,
) -> anyhow::Result<ExitStatus> {
    let master = args.master()?;
    let store = Store::open(&args.dir(), &master)?;
    let provenance = provenance::Provenance::open(&args.ledger.config()).await?;
    let result = {
        let records = Records::new(&store, &provenance);
        body(&records, &provenance).await
    };
    provenance.close().await?;
    let value = match result {
        Ok(v) => v,
        Err(e) if e.is_denied() => {
            super::report_error(&anyhow::Error::new(e));
            return Ok(ExitStatus::Denied);
        }
        Err(e) if e.is_unavailable() => {
            super::report_error(&anyhow::Error::new(e));
            return Ok(ExitStatus::Unavailable);
        }
        Err(e) => return Err(e.into()),
    };
    if args.json {
        print_json(&value)?;
    } else {
        print_lines(&lines(&value));
    }
    Ok(ExitStatus::Success)
}

async fn key(p: &provenance::Provenance, role: Role) -> records::Result<KeyPair> {
    Ok(p.key_for(role).await?)
}

pub(crate) fn public_key(text: &str) -> anyhow::Result<PublicKey> {
    let path = std::path::Path::new(text);
    if path.exists() {
        return Ok(ledger::config::read_key(path)
            .map_err(|e| anyhow::anyhow!("--to {text}: {e}"))?
            .public());
    }
    PublicKey::from_hex(text)
        .map_err(|e| anyhow::anyhow!("--to: neither a key file nor a public key: {e}"))
}

pub(crate) async fn run_records(cmd: RecordsCommand) -> anyhow::Result<ExitStatus> {
    match cmd {
        RecordsCommand::Import(args) => import(args).await,
        RecordsCommand::Get(args) => get(args, false).await,
        RecordsCommand::History(args) => get(args, true).await,
        RecordsCommand::Amend(args) => amend(args).await,
        RecordsCommand::Erase(args) => erase(args).await,
        RecordsCommand::NewMasterKey => {
            print_lines(&[MasterKey::generate_hex()]);
            Ok(ExitStatus::Success)
        }
    }
}

pub(crate) async fn run_access(cmd: AccessCommand) -> anyhow::Result<ExitStatus> {
    match cmd {
        AccessCommand::Grant(args) => grant(args).await,
        AccessCommand::Revoke(args) => revoke(args).await,
        AccessCommand::BreakGlass(args) => break_glass(args).await,
        AccessCommand::Report(args) => report(args).await,
        AccessCommand::Grants(args) => list_grants(args).await,
    }
}

async fn import(args: ImportArgs) -> anyhow::Result<ExitStatus> {
    let job = Job::from_file(&args.job)?;
    let overrides = args.inputs.into_iter().collect();
    let master = args.store.master()?;
    let dir = args.store.dir();
    let bar = progress("importing");
    let provenance = provenance::Provenance::open(&args.store.ledger.config()).await?;
    let result = records::import_job(
        &job,
        &overrides,
        &dir,
        &master,
        &provenance,
        &BarProgress(bar.clone()),
    )
    .await;
    provenance.close().await?;
    bar.finish_and_clear();
    let imported = result?;
    if args.store.json {
        print_json(&imported)?;
        return Ok(ExitStatus::Success);
    }
    let rate = imported.records as f64 / imported.seconds.max(1e-9);
    let mut lines = vec![format!(
        "imported {} records ({} patients, {} visits read) into {} in {:.1} s ({:.0} records/s)",
        imported.records,
        imported.patients_read,
        imported.visits_read,
        imported.store,
        imported.seconds,
        rate
    )];
    if imported.written.unchanged > 0 {
        lines.push(format!(
            "{} records were held already, unchanged",
            imported.written.unchanged
        ));
    }
    if imported.written.erased > 0 {
        lines.push(format!(
            "{} records of erased patients were not imported",
            imported.written.erased
        ));
    }
    if imported.visits_without_patient > 0 {
        lines.push(format!(
            "{} visits have no row in the patients input",
            imported.visits_without_patient
        ));
    }
    match (imported.batch, &imported.root, imported.ledger_height) {
        (Some(batch), Some(root), Some(h)) => lines.push(format!(
            "batch {batch} root {root} anchored at block {h}, parents {}",
            imported.parents.join(", ")
        )),
        _ => lines.push("nothing new: no batch was anchored".to_string()),
    }
    lines.push(format!(
        "store {} bytes for {} bytes of input",
        imported.store_bytes, imported.input_bytes
    ));
    print_lines(&lines);
    Ok(ExitStatus::Success)
}

fn read_request(args: &GetArgs, history: bool) -> anyhow::Result<ReadRequest> {
    Ok(ReadRequest {
        patient_id: args.patient.clone(),
        categories: args
            .categories
            .parse::<Categories>()
            .map_err(|e| anyhow::anyhow!("--categories: {e}"))?,
        purpose: args
            .purpose
            .parse::<Purpose>()
            .map_err(|e| anyhow::anyhow!("--purpose: {e}"))?,
        facility: args.facility.clone(),
        history,
    })
}

async fn get(args: GetArgs, history: bool) -> anyhow::Result<ExitStatus> {
    let req = read_request(&args, history)?;
    run_with(
        &args.store,
        async |r, p| r.read(&key(p, Role::Clinician).await?, &req).await,
        view_lines,
    )
    .await
}

fn view_lines(view: &PatientView) -> Vec<String> {
    let mut lines = vec![format!(
        "patient {}…: granted {} (asked {}, denied {}){}; read recorded at block {} (tx {}…)",
        &view.patient[..16],
        view.granted,
        view.asked,
        view.denied,
        if view.decision.break_glass {
            ", BREAK-GLASS"
        } else {
            ""
        },
        view.height,
        &view.tx[..16]
    )];
    for r in &view.records {
        let what = match r.kind {
            records::record::Kind::Patient => "patient record".to_string(),
            records::record::Kind::Visit => format!("visit at {}", r.facility),
        };
        lines.push(format!(
            "{what}{} v{}/{}{} — verified: leaf {} of batch {}… anchored at block {}",
            if r.id.is_empty() {
                String::new()
            } else {
                format!(" {}", r.id)
            },
            r.version,
            r.versions,
            r.reason
                .as_deref()
                .map_or_else(String::new, |x| format!(" (amended: {x})")),
            r.proof.index,
            &r.proof.batch_root.to_hex()[..16],
            r.proof.anchor_height
        ));
        for (column, value) in &r.fields {
            lines.push(format!("  {column}: {}", value.as_deref().unwrap_or("")));
        }
        if !r.withheld.is_empty() {
            lines.push(format!("  withheld: {}", r.withheld));
        }
    }
    if view.records_withheld > 0 {
        lines.push(format!(
            "{} records made elsewhere withheld (no grant covers them)",
            view.records_withheld
        ));
    }
    lines
}

fn parse_set(set: &[String]) -> anyhow::Result<Vec<(String, Option<String>)>> {
    set.iter()
        .map(|s| {
            // The value may be patient data: the message names only what is wrong.
            let (column, value) = s
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--set: expected COLUMN=VALUE, one has no '='"))?;
            let value = (!value.is_empty()).then(|| value.to_string());
            Ok((column.to_string(), value))
        })
        .collect()
}

async fn amend(args: AmendArgs) -> anyhow::Result<ExitStatus> {
    let changes = parse_set(&args.set)?;
    let record = args.visit.as_deref();
    run_with(
        &args.store,
        async |r, p| {
            let author = key(p, Role::Clinician).await?;
            r.amend(&author, &args.patient, record, &changes, &args.reason)
                .await
        },
        |done| {
            vec![format!(
                "version {} written ({} changed), root {} anchored at block {}, supersedes {}",
                done.version, done.categories, done.root, done.height, done.supersedes
            )]
        },
    )
    .await
}

async fn erase(args: EraseArgs) -> anyhow::Result<ExitStatus> {
    run_with(
        &args.store,
        async |r, p| {
            let admin = key(p, Role::Admin).await?;
            r.erase(&admin, &args.patient, &args.reason).await
        },
        |done| {
            vec![format!(
                "patient {}… erased: {} record versions destroyed, tombstone at block {}",
                &done.patient[..16],
                done.records_destroyed,
                done.height
            )]
        },
    )
    .await
}

async fn grant(args: GrantArgs) -> anyhow::Result<ExitStatus> {
    let grantee = public_key(&args.to)?;
    let scope = match args.scope.split_once(':') {
        Some(("patient", id)) => GrantScope::Patient(id.to_string()),
        Some(("facility", f)) => GrantScope::Facility(f.to_string()),
        None if args.scope == "all" => GrantScope::All,
        _ => anyhow::bail!("--scope: expected patient:ID, facility:NAME or all"),
    };
    let categories: Categories = args
        .categories
        .parse()
        .map_err(|e| anyhow::anyhow!("--categories: {e}"))?;
    let purpose: Purpose = args
        .purpose
        .parse()
        .map_err(|e| anyhow::anyhow!("--purpose: {e}"))?;
    let expires = Time(now_ms().saturating_add(args.days.saturating_mul(86_400_000)));
    run_with(
        &args.store,
        async |r, p| {
            let admin = key(p, Role::Admin).await?;
            r.grant(&admin, grantee, scope, categories, purpose, expires)
                .await
        },
        |made| {
            vec![format!(
                "grant {} committed at block {}",
                made.grant, made.height
            )]
        },
    )
    .await
}

/// Milliseconds since the epoch on this host's clock: the block times grants expire against
/// come from the peers' clocks in the same unit.
#[allow(clippy::disallowed_methods)] // the binary is the host; only the ledger core may not read it
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What `access revoke --json` prints.
#[derive(Debug, serde::Serialize)]
struct Revoked {
    grant: String,
    height: u64,
}

async fn revoke(args: RevokeArgs) -> anyhow::Result<ExitStatus> {
    let grant = Digest::from_hex(&args.grant).map_err(|e| anyhow::anyhow!("--grant: {e}"))?;
    run_with(
        &args.store,
        async |r, p| {
            let admin = key(p, Role::Admin).await?;
            let height = r.revoke(&admin, grant).await?;
            Ok(Revoked {
                grant: args.grant.clone(),
                height,
            })
        },
        |done| {
            vec![format!(
                "grant {} revoked at block {}",
                done.grant, done.height
            )]
        },
    )
    .await
}

async fn break_glass(args: BreakGlassArgs) -> anyhow::Result<ExitStatus> {
    run_with(
        &args.store,
        async |r, p| {
            let clinician = key(p, Role::Clinician).await?;
            r.break_glass(&clinician, &args.patient, args.minutes, &args.reason)
                .await
        },
        |made| {
            vec![format!(
                "break-glass access open for {} minutes (grant {}, block {}); it is flagged for \
                 compliance review",
                args.minutes, made.grant, made.height
            )]
        },
    )
    .await
}

async fn report(args: ReportArgs) -> anyhow::Result<ExitStatus> {
    let patient = args.patient.clone();
    run_with(
        &args.store,
        async |r, p| {
            let auditor = key(p, Role::Compliance).await?;
            let pseudonym = patient.as_deref().map(|id| r.store().pseudonym(id));
            records::access_report(p, &auditor, pseudonym, args.break_glass, args.peer).await
        },
        |entries| report_lines(entries),
    )
    .await
}

fn report_lines(entries: &[records::access::ReportEntry]) -> Vec<String> {
    if entries.is_empty() {
        return vec!["no record accesses".to_string()];
    }
    entries
        .iter()
        .map(|e| {
            let r = e.event.record.as_ref();
            let outcome = match &e.event.outcome {
                ledger::contracts::Outcome::Accepted => "accepted".to_string(),
                ledger::contracts::Outcome::Granted(d) => format!("granted {}", d.categories()),
                ledger::contracts::Outcome::Denied { reason } => {
                    format!("denied: {}", provenance::audit::escape(reason))
                }
            };
            format!(
                "{} block {}.{} {} [{}] {:?} patient {}… asked {} purpose {}{}{} -> {} (proof {})",
                e.event.time.0,
                e.event.position.seq.0,
                e.event.position.index,
                provenance::audit::escape(e.actor_name.as_deref().unwrap_or("unknown")),
                e.actor_role.as_deref().unwrap_or("?"),
                e.event.action,
                r.map_or_else(String::new, |r| r.patient.to_hex()[..16].to_string()),
                r.map_or(Categories::NONE, |r| r.asked),
                r.and_then(|r| r.purpose)
                    .map_or_else(|| "-".to_string(), |p| p.to_string()),
                r.and_then(|r| r.facility.as_deref())
                    .map_or_else(String::new, |f| format!(" at {f}")),
                if r.is_some_and(|r| r.break_glass) {
                    " BREAK-GLASS"
                } else {
                    ""
                },
                outcome,
                if e.verified { "verified" } else { "MISSING" }
            )
        })
        .collect()
}

async fn list_grants(args: GrantsArgs) -> anyhow::Result<ExitStatus> {
    let grantee = args.to.as_deref().map(public_key).transpose()?;
    let now = Time(now_ms());
    run_with(
        &args.store,
        async |_, p| {
            let asker = key(p, Role::Compliance).await?;
            records::access::grants(p, &asker, grantee).await
        },
        |grants| {
            grants
                .iter()
                .map(|g| {
                    format!(
                        "{} to {}… {} of {} for {} until {}{}{}",
                        g.id,
                        &g.spec.grantee.to_hex()[..16],
                        g.spec.categories,
                        g.spec.scope,
                        g.spec.purpose,
                        g.spec.expires.0,
                        if g.break_glass.is_some() {
                            " BREAK-GLASS"
                        } else {
                            ""
                        },
                        if g.is_live(now) {
                            ""
                        } else {
                            " (not in force)"
                        }
                    )
                })
                .collect()
        },
    )
    .await
}
