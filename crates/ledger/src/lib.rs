//! # os-credits-ledger: the durable truth of what was billed
//!
//! It owns the store (SQLite or PostgreSQL), the SQL of both, their
//! migrations and every role's reads and writes. It must not know billing,
//! the policy runtime or the service: what it stores comes in as the
//! shared values of `os-credits-core`, and the stages above it reach it
//! through its role traits.
//!
//!
//! It holds every key's state (the last billed sample and what the key
//! was charged), every charge with the policy that priced it, exact
//! per-project totals, and an outbox of projects whose published values are
//! out of date. The ledger has five clients, each with its role trait:
//! the billing engine writes it in batches ([`EngineStore`], one
//! transaction each), the APIs read it ([`Reads`]), the Perun sync works
//! the Perun role with its outbox ([`PerunStore`]), the mails record what they sent
//! ([`Notifications`]) and the price schedule keeps its entries and
//! modules ([`Schedules`]; entries are appended with a billing batch).
//!
//! One [`Store`] implements every role once, over SQLite (a file in the
//! data directory, the default) or PostgreSQL (replicas), through the small
//! SQL layer in [`sql`]; [`schema`] holds the migrations. What only
//! replicas have (the inbox, the leader's lock and lease) is a role of its
//! own: [`replication::Replication`]. The ledger names nothing above it: its
//! values come from the leaves [`os_credits_core::account`] and [`os_credits_core::schedule`].

mod alerts;
pub mod copy;
mod corrections;
mod engine;
mod notifications;
mod outbox;
mod reads;
pub mod replication;
mod schedule;
pub mod schema;
pub mod sql;
mod store;

pub use store::{Durability, FILE_NAME, Store};

use rust_decimal::Decimal;

use os_credits_core::account::{Account, Key};
use os_credits_core::schedule::Entry;

/// A ledger failure.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The database said no.
    #[error("ledger database error: {0}")]
    Database(#[from] rusqlite::Error),
    /// PostgreSQL said no (or its connection is gone).
    #[error("ledger database error (PostgreSQL): {0}")]
    Postgres(#[from] ::postgres::Error),
    /// The database holds something this binary cannot read.
    #[error("ledger data is corrupt: {0}")]
    Corrupt(String),
    /// This replica is no longer the leader: another took over (its lease
    /// carries a newer epoch than this one).
    #[error("fenced: the leader's lease is no longer epoch {0} (another replica leads)")]
    Fenced(i64),
    /// The database was written by a newer version of os-credits.
    #[error(
        "ledger schema version {found} is newer than this binary's {supported}: upgrade os-credits"
    )]
    TooNew {
        /// The database's schema version.
        found: i64,
        /// The newest this binary knows.
        supported: i64,
    },
    /// There is no ledger where one was expected.
    #[error(
        "no ledger at {0}: give the service's data directory (--data-dir, OS_CREDITS_DATA_DIR)"
    )]
    Missing(std::path::PathBuf),
    /// The data directory could not be prepared.
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl LedgerError {
    /// Whether the database could not be reached at all (the connection
    /// failed: refused, a name not resolved yet, a timeout; or a server
    /// still starting up), as opposed to one that answered with a refusal
    /// (a wrong password, a missing database) or a URL that does not parse:
    /// worth waiting for when a service starts beside its database.
    pub fn is_unreachable(&self) -> bool {
        let LedgerError::Postgres(error) = self else {
            return false;
        };
        if let Some(db) = error.as_db_error() {
            return *db.code() == ::postgres::error::SqlState::CANNOT_CONNECT_NOW;
        }
        // A failed connection carries the socket's error as its cause.
        std::error::Error::source(error).is_some_and(|cause| cause.is::<std::io::Error>())
    }
}

/// Which policy priced a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyStamp {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Hex SHA-256 of the module.
    pub sha256: String,
}

/// One priced step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRecord {
    /// Project, site and metric.
    pub key: Key,
    /// The last billed measurement before this step: timestamp (ns), value text.
    pub previous: (i64, String),
    /// The measurement billed: timestamp (ns), value text.
    pub current: (i64, String),
    /// The exact charge.
    pub credits: Decimal,
    /// The project's exact charged total after this charge.
    pub charged_after: Decimal,
    /// The policy that priced it.
    pub policy: PolicyStamp,
    /// Taken back when the service we replace turned out to have billed
    /// the same step (see [`EngineStore::rebase`]); no longer counted.
    pub reversed: bool,
    /// The schedule entry that priced it (`None` before the ledger had a
    /// schedule).
    pub schedule_entry: Option<i64>,
}

impl ChargeRecord {
    /// The usage the step billed: current value minus previous value, or
    /// why a value is no decimal (a corrupt ledger).
    pub fn usage(&self) -> Result<Decimal, LedgerError> {
        let value = |text: &str| {
            pricing_sdk::parse_decimal(text).map_err(|e| {
                LedgerError::Corrupt(format!("a measurement of {}: {e}", self.key.project))
            })
        };
        Ok(value(&self.current.1)? - value(&self.previous.1)?)
    }
}

/// The service we replace billed a key up to `timestamp` (ns): points not
/// newer are its, the first newer one is our baseline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Floor {
    /// The site.
    pub location_id: String,
    /// The metric.
    pub metric: String,
    /// Unix time in ns of the last measurement the old service billed.
    pub timestamp: i64,
}

/// Changes to write in one transaction.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Key states to upsert (a later entry for the same key wins).
    pub states: Vec<(Key, Account)>,
    /// Charges to append, in billing order.
    pub charges: Vec<ChargeRecord>,
    /// Schedule entries to append (their modules' bytes stored before,
    /// with [`Schedules::put_module`]).
    pub schedule: Vec<Entry>,
}

impl Batch {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty() && self.charges.is_empty() && self.schedule.is_empty()
    }
}

/// A project's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectRecord {
    /// The project.
    pub project: String,
    /// Exact sum of the charges billed here.
    pub charged: Decimal,
    /// Credits used adopted from elsewhere (the Python service, Perun edits).
    pub adopted: Decimal,
    /// Credits granted, when known.
    pub granted: Option<Decimal>,
    /// The maintainers' mail addresses (Perun's `toEmail`), when known.
    pub emails: Vec<String>,
    /// When the project ends (ns), when Perun says.
    pub ends_at: Option<i64>,
}

impl ProjectRecord {
    /// Exact credits used: adopted plus charged.
    pub fn used(&self) -> Decimal {
        self.adopted + self.charged
    }
}

/// A project whose thresholds can be checked: granted credits known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notifiable {
    /// Its figures.
    pub project: ProjectRecord,
    /// The thresholds (percent) mailed, with the granted credits at the
    /// time (0: re-armed since).
    pub mailed: Vec<(u32, Decimal)>,
    /// Per threshold, how often it was re-armed (names the next mail).
    pub rearmed: Vec<(u32, u32)>,
}

/// One entry of a project's credit history: a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow {
    /// Timestamp (ns) of the measurement billed.
    pub timestamp: i64,
    /// The metric billed.
    pub metric: String,
    /// The project's exact charged total after the charge.
    pub charged_after: Decimal,
    /// When it was recorded (ns).
    pub recorded_at: i64,
}

/// A correction of a project, for its history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryCorrection {
    /// When it was booked (ns).
    pub recorded_at: i64,
    /// By how much credits used changed.
    pub amount: Decimal,
    /// The correction's id.
    pub correction: String,
    /// Why.
    pub reason: String,
}

/// A project waiting to be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The project.
    pub project: String,
    /// Bumped by every commit that charges the project.
    pub version: i64,
    /// Failed attempts since the last success.
    pub attempts: i64,
}

/// What is published for a project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publishable {
    /// Exact credits used.
    pub used: Decimal,
    /// Per site, per metric: timestamp (ns) of the key's state.
    pub sites: std::collections::BTreeMap<String, std::collections::BTreeMap<String, i64>>,
}

/// Why credits used changed without a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdjustmentKind {
    /// First contact with the group: Perun's value adopted as the start
    /// (migration from the Python service).
    Adopted,
    /// Someone changed the value in Perun by hand.
    ManualEdit,
    /// A correction re-priced past usage (see [`Corrections`]).
    Correction,
}

impl AdjustmentKind {
    /// The kind a stored name stands for (`project`: for the message).
    pub fn parse(name: &str, project: &str) -> Result<Self, LedgerError> {
        match name {
            "adopted" => Ok(AdjustmentKind::Adopted),
            "manual edit" => Ok(AdjustmentKind::ManualEdit),
            "correction" => Ok(AdjustmentKind::Correction),
            other => Err(LedgerError::Corrupt(format!(
                "unknown adjustment kind {other:?} of {project}"
            ))),
        }
    }

    /// The name stored in the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            AdjustmentKind::Adopted => "adopted",
            AdjustmentKind::ManualEdit => "manual edit",
            AdjustmentKind::Correction => "correction",
        }
    }
}

/// A recorded change of credits used that no charge explains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adjustment {
    /// Why.
    pub kind: AdjustmentKind,
    /// By how much credits used changed.
    pub amount: Decimal,
}

/// A recorded adjustment, for the audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdjustmentRecord {
    /// The project.
    pub project: String,
    /// What and how much.
    pub adjustment: Adjustment,
    /// Perun's `valueModifiedAt` of the value, when it said.
    pub perun_modified_at: Option<String>,
    /// When it was recorded (ns).
    pub recorded_at: i64,
    /// The correction it books, for [`AdjustmentKind::Correction`].
    pub correction: Option<String>,
}

/// Where a value of credits used that this service recognises came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueSource {
    /// A write of this service (confirmed or only intended).
    Write,
    /// Adopted from Perun on first contact.
    Adopted,
    /// Found in Perun, changed by hand, and accepted.
    ManualEdit,
}

impl ValueSource {
    /// The source a stored name stands for (`project`: for the message).
    pub fn parse(name: &str, project: &str) -> Result<Self, LedgerError> {
        match name {
            "write" => Ok(ValueSource::Write),
            "adopted" => Ok(ValueSource::Adopted),
            "manual edit" => Ok(ValueSource::ManualEdit),
            other => Err(LedgerError::Corrupt(format!(
                "unknown source {other:?} of a Perun value of {project}"
            ))),
        }
    }

    /// The name stored in the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            ValueSource::Write => "write",
            ValueSource::Adopted => AdjustmentKind::Adopted.as_str(),
            ValueSource::ManualEdit => AdjustmentKind::ManualEdit.as_str(),
        }
    }
}

/// A value of credits used this service recognises as its own in Perun.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownValue {
    /// Its id (increasing with time).
    pub id: i64,
    /// The value.
    pub value: Decimal,
    /// Where it came from.
    pub source: ValueSource,
    /// Whether Perun is known to have held it (`false`: a write intended,
    /// its answer never arrived).
    pub confirmed: bool,
}

/// What this service knows of a project's credits used in Perun.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PerunRecord {
    /// When Perun's value was adopted (ns); `None` before first contact.
    pub adopted_at: Option<i64>,
    /// The values it recognises, oldest first.
    pub known: Vec<KnownValue>,
}

/// Sizes for `/stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Projects with a key.
    pub projects: u64,
    /// Keys (project, site, metric).
    pub keys: u64,
    /// Charges recorded.
    pub charges: u64,
    /// Projects waiting in the outbox.
    pub outbox: u64,
    /// Since when (ns) the longest-waiting project has waited, if any.
    pub oldest_outbox: Option<i64>,
}

/// What the billing engine writes and restores (one writer: the billing
/// thread).
pub trait EngineStore: Send + Sync {
    /// Every key with its account, to rebuild the book.
    fn accounts(&self) -> Result<Vec<(Key, Account)>, LedgerError>;

    /// Writes a batch atomically: states, charges, project totals, outbox.
    fn commit(&self, batch: &Batch) -> Result<(), LedgerError>;

    /// Per floor, the exact sum of the charges it would take back: not yet
    /// reversed, their step started before the floor.
    fn reversible(&self, project: &str, floors: &[Floor]) -> Result<Vec<Decimal>, LedgerError>;

    /// Applies floors adopted from Perun in one transaction: reverses the
    /// charges of steps that started before a floor (kept for the audit,
    /// out of totals), stores the keys' `states`, sets the project's
    /// exact `charged` total, recomputes its history's running totals and
    /// queues the project for publishing. Returns how many charges were reversed.
    fn rebase(
        &self,
        project: &str,
        floors: &[Floor],
        states: &[(Key, Account)],
        charged: Decimal,
    ) -> Result<usize, LedgerError>;
}

/// The price schedule: its entries (appended by the billing engine with
/// a [`Batch`]) and its modules' bytes, by SHA-256.
pub trait Schedules: Send + Sync {
    /// Every entry, in the order they were added.
    fn schedule(&self) -> Result<Vec<Entry>, LedgerError>;

    /// The id of the last entry (0: none), to notice a change cheaply.
    fn schedule_head(&self) -> Result<i64, LedgerError>;

    /// Keeps a module's bytes under their SHA-256 (hex), once; any replica
    /// may call it before asking the engine to add an entry using them.
    fn put_module(&self, sha256: &str, bytes: &[u8]) -> Result<(), LedgerError>;

    /// A module's bytes.
    fn module(&self, sha256: &str) -> Result<Option<Vec<u8>>, LedgerError>;
}

/// What the APIs and the audit read.
pub trait Reads: Send + Sync {
    /// A project's figures.
    fn project(&self, project: &str) -> Result<Option<ProjectRecord>, LedgerError>;

    /// A project's charges in billing order, for its history.
    fn history(&self, project: &str) -> Result<Vec<HistoryRow>, LedgerError>;

    /// A project's corrections, oldest first, for its history.
    fn history_corrections(&self, project: &str) -> Result<Vec<HistoryCorrection>, LedgerError>;

    /// A project's charges with the policy that priced each, in billing order.
    fn charges(&self, project: &str) -> Result<Vec<ChargeRecord>, LedgerError>;

    /// Every charge whose measurement lies in `[from, to)` (ns), in billing order.
    fn charges_between(&self, from: i64, to: i64) -> Result<Vec<ChargeRecord>, LedgerError>;

    /// Sizes.
    fn counts(&self) -> Result<Counts, LedgerError>;

    /// Every adjustment recorded, oldest first (for the audit).
    fn adjustments(&self) -> Result<Vec<AdjustmentRecord>, LedgerError>;
}

/// What the Perun sync reads and records.
pub trait PerunStore: Send + Sync {
    /// Outbox entries due at `now` (ns), oldest first.
    fn due(&self, now: i64, limit: usize) -> Result<Vec<OutboxEntry>, LedgerError>;

    /// `entry` was published: its version is done (a later charge keeps
    /// the project waiting), and the project is not published again
    /// before `next_attempt` (the interval holds for the next charge too).
    fn synced(&self, entry: &OutboxEntry, next_attempt: i64) -> Result<(), LedgerError>;

    /// Publishing failed: retry at `next_attempt`.
    fn sync_failed(&self, project: &str, next_attempt: i64, error: &str)
    -> Result<(), LedgerError>;

    /// What to publish for a project.
    fn publishable(&self, project: &str) -> Result<Option<Publishable>, LedgerError>;

    /// Records the project's granted credits, end (ns) and maintainers
    /// (from Perun).
    fn set_contacts(
        &self,
        project: &str,
        granted: Option<Decimal>,
        ends_at: Option<i64>,
        emails: &[String],
    ) -> Result<(), LedgerError>;

    /// What this service knows of the project's credits used in Perun:
    /// when it was adopted, and every value it recognises as its
    /// own (written, about to be written, adopted or accepted as a hand edit).
    fn perun_record(&self, project: &str) -> Result<PerunRecord, LedgerError>;

    /// Records an adjustment (adoption or hand edit): credits used change
    /// by its amount, the audit keeps it, and `perun_value` (what Perun
    /// showed) becomes a value this service recognises.
    fn adjust(
        &self,
        project: &str,
        adjustment: Adjustment,
        perun_value: Decimal,
        modified_at: Option<&str>,
    ) -> Result<(), LedgerError>;

    /// Records the intent to write `value` (with the sites' `timestamps`)
    /// to Perun, before the write: read back later, it is recognised as
    /// ours even if the answer never came. Returns
    /// the intent's id for [`PerunStore::confirm_write`].
    fn record_intent(
        &self,
        project: &str,
        value: Decimal,
        timestamps: &str,
    ) -> Result<i64, LedgerError>;

    /// Perun confirmed intent `id`; values recorded before `forget_before`
    /// (ns) and older than the newest confirmed one are forgotten, as no
    /// write of theirs can still be on its way.
    fn confirm_write(&self, project: &str, id: i64, forget_before: i64) -> Result<(), LedgerError>;
}

/// What the threshold mails read and record.
pub trait Notifications: Send + Sync {
    /// Every project with granted credits known, with the thresholds
    /// already mailed: two queries whatever the number of projects.
    fn notifiable(&self) -> Result<Vec<Notifiable>, LedgerError>;

    /// Re-arms `threshold` of `project`: credits used fell below it (a
    /// correction, a hand edit), so the next crossing is mailed again.
    fn rearm(&self, project: &str, threshold: u32) -> Result<(), LedgerError>;

    /// Records that the mail for `threshold` was sent at `granted`.
    fn record_notification(
        &self,
        project: &str,
        threshold: u32,
        granted: Decimal,
    ) -> Result<(), LedgerError>;
}

/// What a correction re-prices: usage in `[from, to)` (ns), of one site
/// or every one, of some projects or every one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrectionScope {
    /// Start of the usage re-priced (ns, inclusive).
    pub from: i64,
    /// End of the usage re-priced (ns, exclusive).
    pub to: i64,
    /// Only this site.
    pub site: Option<String>,
    /// Only these projects (sorted).
    pub projects: Option<Vec<String>>,
}

impl CorrectionScope {
    /// Whether `key` is in scope (its time is checked by the query).
    pub fn covers(&self, key: &Key) -> bool {
        self.site.as_deref().is_none_or(|s| s == &*key.location_id)
            && self
                .projects
                .as_ref()
                .is_none_or(|p| p.binary_search_by(|x| x.as_str().cmp(&key.project)).is_ok())
    }
}

/// A charge with its id in the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BilledCharge {
    /// Its id.
    pub id: i64,
    /// The charge.
    pub charge: ChargeRecord,
}

/// A corrected part of a charge: its usage from `start` to `end` (ns)
/// cost `before`, and costs `after` under the correction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrectionLine {
    /// The correction's id.
    pub correction: String,
    /// The charge corrected.
    pub charge: i64,
    /// Its project, site and metric.
    pub key: Key,
    /// Start of the part (ns).
    pub start: i64,
    /// End of the part (ns).
    pub end: i64,
    /// What the part cost before (the charge's share, with earlier corrections).
    pub before: Decimal,
    /// What it costs now.
    pub after: Decimal,
    /// `after - before`.
    pub difference: Decimal,
}

/// What a correction is computed from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorrectionBasis {
    /// The charges in scope whose usage overlaps the period, in billing order.
    pub charges: Vec<BilledCharge>,
    /// The lines of earlier corrections on those charges.
    pub earlier: Vec<CorrectionLine>,
    /// The newest correction booked (its sequence number; 0: none): a
    /// booking fails when another was booked since.
    pub head: i64,
}

/// A correction as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrectionRecord {
    /// Its id (derived from the request: the same request, the same id).
    pub id: String,
    /// Why.
    pub reason: String,
    /// What it re-priced.
    pub scope: CorrectionScope,
    /// The module that re-priced it.
    pub policy: PolicyStamp,
    /// Its configuration (TOML).
    pub config: String,
    /// The exact sum of its differences.
    pub total: Decimal,
    /// The answer given when it was booked (JSON), repeated for the same request.
    pub answer: String,
    /// When it was booked (ns).
    pub booked_at: i64,
}

/// What booking a correction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Booking {
    /// Booked now.
    Booked,
    /// Booked before: its answer then.
    Already(String),
    /// Another correction was booked since the basis was read: compute again.
    Stale,
}

/// A correction line with its correction's reason and module, for statements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementCorrection {
    /// The line.
    pub line: CorrectionLine,
    /// The correction's reason.
    pub reason: String,
    /// The module that re-priced it.
    pub policy: PolicyStamp,
}

/// A group's usage and credits over whole UTC days, from the roll-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayTotal {
    /// Project, site and metric.
    pub key: Key,
    /// The schedule version that priced it ([`version_of`]).
    pub version: String,
    /// The policy that priced it.
    pub policy: PolicyStamp,
    /// Exact credits.
    pub credits: Decimal,
    /// Exact usage, in the metric's unit.
    pub quantity: Decimal,
}

/// What a statement over `[from, to)` is made of: whole UTC days from the
/// roll-up, and charges read for the rest (the period's partial days, and
/// what was billed since the roll-up's mark), each with the window it
/// counts in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatementBasis {
    /// Summed over the whole days of the period.
    pub rolled: Vec<DayTotal>,
    /// Charges (not reversed), each counted for its usage in its window.
    pub charges: Vec<(ChargeRecord, (i64, i64))>,
    /// Correction lines whose usage overlaps the period.
    pub corrections: Vec<StatementCorrection>,
    /// Adjustments other than corrections recorded in it (adoption, hand edits).
    pub adjustments: Vec<AdjustmentRecord>,
}

/// The schedule version a charge names in statements: its schedule entry,
/// or its module before the ledger had a schedule.
pub fn version_of(charge: &ChargeRecord) -> String {
    charge.schedule_entry.map_or_else(
        || format!("sha256:{}", charge.policy.sha256),
        |id| format!("entry:{id:012}"),
    )
}

/// Corrections: re-priced past usage booked as adjustments beside the
/// charges (never changing one), and what statements read.
pub trait Corrections: Send + Sync {
    /// The charges in `scope`, with the lines of earlier corrections on them.
    fn correction_basis(&self, scope: &CorrectionScope) -> Result<CorrectionBasis, LedgerError>;

    /// Books `record` with its `lines` in one transaction: the lines, one
    /// adjustment per project (credits used change by the project's sum),
    /// the outbox. Nothing when a correction with its id exists
    /// ([`Booking::Already`]) or another was booked after `head`
    /// ([`Booking::Stale`]).
    /// With `webhook`, its event is queued in the same transaction.
    fn book_correction(
        &self,
        record: &CorrectionRecord,
        lines: &[CorrectionLine],
        head: i64,
        webhook: Option<&WebhookEvent>,
    ) -> Result<Booking, LedgerError>;

    /// Every correction booked, oldest first.
    fn corrections(&self) -> Result<Vec<CorrectionRecord>, LedgerError>;

    /// Rolls up to `limit` charges billed since the roll-up's mark into
    /// their UTC days ([`DayTotal`]s), in one transaction; returns how many.
    /// Safe from any replica (one at a time).
    fn roll_up(&self, limit: usize) -> Result<usize, LedgerError>;

    /// How long (ns) since this process's billing engine last committed:
    /// the roll-up waits for a quiet moment rather than take the ledger's
    /// writer from billing.
    fn quiet_for(&self) -> i64;

    /// What a statement of `[from, to)` (ns) needs, of one project or all.
    fn statement_basis(
        &self,
        from: i64,
        to: i64,
        project: Option<&str>,
    ) -> Result<StatementBasis, LedgerError>;
}

/// How fast a project used credits lately: what a forecast is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pace {
    /// The project's figures (used, granted, end).
    pub project: ProjectRecord,
    /// Its latest billed measurement (ns); `None` before its first charge.
    pub latest: Option<i64>,
    /// Where the window's measured part starts (ns): the window's start,
    /// or the project's first measurement when that is later.
    pub measured_from: i64,
    /// Credits charged for usage in `[measured_from, latest)` (a step
    /// spanning its start counted pro rata by time), with corrections of
    /// that usage.
    pub credits: Decimal,
}

/// What forecasts read.
pub trait Forecasts: Send + Sync {
    /// `project`'s pace over the `window` (ns) ending at its latest billed
    /// measurement; `None` for a project the ledger does not know.
    fn pace(&self, project: &str, window: i64) -> Result<Option<Pace>, LedgerError>;

    /// The pace of every project with granted credits known.
    fn paces(&self, window: i64) -> Result<Vec<Pace>, LedgerError>;
}

/// An event for the webhook receiver, as queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEvent {
    /// Its `webhook-id`: derived from what it is about, the same on every resend.
    pub id: String,
    /// Its type (`credits.threshold_crossed` …).
    pub kind: String,
    /// The JSON payload, fixed when queued.
    pub body: String,
}

impl WebhookEvent {
    /// An event of type `kind` that happened at `at` (ns), its payload in
    /// the Standard Webhooks shape: `{"type", "timestamp", "data"}`.
    pub fn new(id: String, kind: &str, at: i64, data: serde_json::Value) -> WebhookEvent {
        let timestamp = os_credits_core::schedule::show_time(at);
        let body = serde_json::json!({"type": kind, "timestamp": timestamp, "data": data});
        WebhookEvent {
            id,
            kind: kind.to_owned(),
            body: body.to_string(),
        }
    }
}

/// A queued event not delivered yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingWebhook {
    /// The event.
    pub event: WebhookEvent,
    /// Failed attempts so far.
    pub attempts: u32,
}

/// The webhooks' durable outbox.
pub trait Webhooks: Send + Sync {
    /// Queues `event` unless an event with its id is known (queued or
    /// delivered); `true` when queued now.
    fn queue_webhook(&self, event: &WebhookEvent) -> Result<bool, LedgerError>;

    /// Up to `limit` events not delivered whose next attempt is due at `now`, oldest first.
    fn webhooks_due(&self, now: i64, limit: usize) -> Result<Vec<PendingWebhook>, LedgerError>;

    /// The receiver took event `id`.
    fn webhook_delivered(&self, id: &str) -> Result<(), LedgerError>;

    /// Delivering `id` failed: try again at `next_attempt` (ns).
    fn webhook_failed(&self, id: &str, next_attempt: i64, error: &str) -> Result<(), LedgerError>;

    /// Events not delivered yet: all of them, and those that failed at least once.
    fn webhook_depth(&self) -> Result<(u64, u64), LedgerError>;
}

/// Whether this process may act as the ledger's leader right now: the Perun
/// sync and the mails ask before every effect outside the ledger. A lone
/// service always may; a replica only while its lease is fresh (see
/// [`replication`]).
pub trait Leadership: Send + Sync {
    /// `true` while this process leads and its lease is fresh.
    fn leading(&self) -> bool;
}

/// Every role at once: what [`Store`] implements, over either database.
/// Each client holds only its role (`Arc<dyn PerunStore>` …), upcast from this.
pub trait Ledger:
    EngineStore + Reads + PerunStore + Notifications + Schedules + Corrections + Forecasts + Webhooks
{
}

impl<
    T: EngineStore
        + Reads
        + PerunStore
        + Notifications
        + Schedules
        + Corrections
        + Forecasts
        + Webhooks,
> Ledger for T
{
}
