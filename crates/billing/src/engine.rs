//! The billing engine: one thread that owns the book and the ledger's
//! writer, so every point is applied in arrival order (per project and
//! globally) and nothing else writes billing state.
//!
//! Writes queue here as whole bodies. The thread takes every write waiting,
//! decodes each ([`os_credits_ingest`]) and bills it in order through
//! [`Intake::feed`] (the same code path as `policy run`), commits all their
//! changes in **one** transaction and only then answers them: a write
//! answered as done is durable, and many writes share one fsync. If the
//! commit fails, the book is rebuilt from the ledger and those writes are
//! answered as failed.
//!
//! The one request that does not come from ingest is a [`Rebaser::rebase`]:
//! floors adopted from Perun on first contact with a project (the service
//! we replace billed up to them). It queues behind the writes before it, so
//! it applies to exactly the state they left. The Perun sync reaches it
//! through its own port, wired up by the service.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::book::{Book, Outcome};
use super::intake::{FeedReport, Intake};
use super::prices::LiveSchedule;
use super::scope::Scope;
use os_credits_ingest::remote_write::{self, Labels};
use os_credits_ingest::{Precision, Sample};
use os_credits_ledger::{Batch, ChargeRecord, EngineStore, Floor, LedgerError, PolicyStamp};
use os_credits_policy::ModuleInfo;
use os_credits_policy::schedule::{Plan, Schedule, Wanted};
use os_credits_policy::set::DEFAULT_SITE;

use os_credits_core::sync::Locked;

/// Writes applied in one transaction at most.
const MAX_GROUP: usize = 512;

/// A write as it arrived, from either ingest path: what the request
/// handler hands to the billing thread (directly, or through a follower's
/// inbox).
#[derive(Debug, Clone)]
pub enum Write {
    /// InfluxDB line protocol as received (decoded on the billing thread).
    Lines {
        /// The body.
        text: Bytes,
        /// The unit of its timestamps.
        precision: Precision,
        /// When it was received (ns), for points without a timestamp.
        received: i64,
        /// The sites its writer may bill (`None`: every site).
        scope: Option<Arc<Scope>>,
    },
    /// A Prometheus remote-write request, decompressed and decoded once by
    /// whoever received it (off the billing thread).
    RemoteWrite {
        /// The snappy body as received (what a follower stores).
        raw: Bytes,
        /// The request it decodes to.
        request: Box<remote_write::WriteRequest>,
        /// The labels naming project and site.
        labels: Arc<Labels>,
        /// When it was received (ns).
        received: i64,
        /// The sites its writer may bill (`None`: every site).
        scope: Option<Arc<Scope>>,
    },
}

impl Write {
    /// The sites its writer may bill (`None`: every site).
    pub fn scope(&self) -> Option<&Arc<Scope>> {
        match self {
            Write::Lines { scope, .. } | Write::RemoteWrite { scope, .. } => scope.as_ref(),
        }
    }
}

/// Entries wanted in the price schedule (a policy folder changed, an
/// upload): planned against the book as the writes before it left it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ScheduleChange {
    /// What is wanted.
    pub wanted: Vec<Wanted>,
    /// Whether `wanted` is a whole folder (sites it does not name go back
    /// to the default; upcoming changes it no longer names are withdrawn).
    pub complete: bool,
}

/// Why the engine applied nothing of a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The service stops and takes no new jobs.
    #[error("the service is shutting down")]
    ShuttingDown,
    /// The billing thread ended before it answered.
    #[error("the billing engine stopped")]
    Stopped,
    /// The ledger refused the transaction (nothing of it was stored).
    #[error("ledger write failed: {0}")]
    Ledger(String),
}

/// How a write ended: what each line did, once committed.
pub type Written = Result<FeedReport, EngineError>;

/// How a schedule change ended: the entries added and why any wanted
/// entry was refused, once committed.
pub type Planned = Result<Plan, EngineError>;

enum Job {
    Write {
        write: Write,
        reply: oneshot::Sender<Written>,
    },
    Schedule {
        change: ScheduleChange,
        reply: oneshot::Sender<Planned>,
    },
    Rebase(RebaseJob),
}

/// Floors to adopt, applied alone between groups.
struct RebaseJob {
    project: String,
    floors: Vec<Floor>,
    reply: oneshot::Sender<Result<usize, EngineError>>,
}

/// A job of the group applied in one transaction.
enum Grouped {
    Write(Write, oneshot::Sender<Written>),
    Schedule(ScheduleChange, oneshot::Sender<Planned>),
}

impl Job {
    /// The job as a member of a group, or the rebase that is applied
    /// alone.
    fn grouped(self) -> Result<Grouped, RebaseJob> {
        match self {
            Job::Write { write, reply } => Ok(Grouped::Write(write, reply)),
            Job::Schedule { change, reply } => Ok(Grouped::Schedule(change, reply)),
            Job::Rebase(rebase) => Err(rebase),
        }
    }
}

/// What a grouped job did, answered once the transaction commits.
enum Answer {
    Written(oneshot::Sender<Written>, FeedReport),
    Planned(oneshot::Sender<Planned>, Plan),
}

impl Answer {
    /// Answers the job: its outcome once committed, or why nothing of it
    /// was stored.
    fn send(self, committed: Result<(), &EngineError>) {
        // The asker may have gone (a client hung up): nothing to tell.
        let _ = match self {
            Answer::Written(reply, report) => reply
                .send(committed.map(|()| report).map_err(Clone::clone))
                .is_ok(),
            Answer::Planned(reply, plan) => reply
                .send(committed.map(|()| plan).map_err(Clone::clone))
                .is_ok(),
        };
    }
}

type Jobs = Arc<Mutex<Option<Sender<Job>>>>;

/// Sends `job` unless the engine is shutting down.
fn send(jobs: &Jobs, job: Job) -> bool {
    let jobs = jobs.locked();
    jobs.as_ref().is_some_and(|jobs| jobs.send(job).is_ok())
}

/// Queues floors adopted from Perun into the engine (see the module doc).
#[derive(Clone)]
pub struct Rebaser {
    jobs: Jobs,
}

impl Rebaser {
    /// Applies `floors` to `project` in order with the writes queued
    /// before: charges of steps that started at or before a floor are
    /// reversed, keys not newer wait for a newer point as their baseline.
    /// Returns how many charges were reversed.
    pub async fn rebase(&self, project: &str, floors: Vec<Floor>) -> Result<usize, EngineError> {
        let (reply, answer) = oneshot::channel();
        let job = Job::Rebase(RebaseJob {
            project: project.to_owned(),
            floors,
            reply,
        });
        if !send(&self.jobs, job) {
            return Err(EngineError::ShuttingDown);
        }
        answer.await.unwrap_or(Err(EngineError::Stopped))
    }
}

/// What the engine has done since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Everything fed.
    pub seen: FeedReport,
    /// Keys in the book.
    pub keys: usize,
    /// Writes committed.
    pub writes: u64,
    /// Transactions committed.
    pub commits: u64,
    /// Commits that failed.
    pub failed_commits: u64,
    /// Whether the last commit failed (the ledger's disk full, read-only,
    /// failing): writes are answered 500 until one commits again.
    pub ledger_failing: bool,
    /// The last commit error and when it happened (RFC 3339).
    pub last_ledger_error: Option<(String, String)>,
}

/// How the engine bills.
#[derive(Debug, Clone)]
pub struct Options {
    /// Bill only these projects.
    pub whitelist: Option<HashSet<String>>,
    /// Refuse new keys beyond this many.
    pub max_keys: usize,
    /// Refuse samples this far ahead of the clock.
    pub future_tolerance: Option<std::time::Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            whitelist: None,
            max_keys: usize::MAX,
            future_tolerance: None,
        }
    }
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The book could not be restored.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The billing thread could not be spawned.
    #[error("cannot start the billing thread: {0}")]
    Thread(std::io::Error),
}

/// Handle to the engine thread.
pub struct Engine {
    jobs: Jobs,
    queued: Arc<AtomicUsize>,
    stats: Arc<Mutex<EngineStats>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Engine {
    /// Restores the book from `ledger` and starts the engine thread.
    pub fn start(
        ledger: Arc<dyn EngineStore>,
        prices: Arc<LiveSchedule>,
        options: Options,
    ) -> Result<Self, StartError> {
        prices.refresh()?;
        let book = Book::restore(ledger.accounts()?);
        tracing::info!(keys = book.len(), "book restored from the ledger");
        let intake = Intake::with_book(book)
            .whitelist(options.whitelist)
            .horizon(options.future_tolerance)
            .max_keys(options.max_keys);
        let (sender, receiver) = channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(Mutex::new(EngineStats::default()));
        let worker = Worker {
            ledger,
            prices,
            intake,
            queued: Arc::clone(&queued),
            stats: Arc::clone(&stats),
        };
        let thread = std::thread::Builder::new()
            .name("billing".into())
            .spawn(move || worker.run(receiver))
            .map_err(StartError::Thread)?;
        Ok(Engine {
            jobs: Arc::new(Mutex::new(Some(sender))),
            queued,
            stats,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues a write now (jobs submitted one after the other are applied
    /// in that order); the answer comes when it is committed (or failed).
    pub fn submit(&self, write: Write) -> impl std::future::Future<Output = Written> + use<> {
        let (reply, answer) = oneshot::channel();
        self.queue(Job::Write { write, reply }, answer)
    }

    /// Queues a change of the price schedule, in order with the writes
    /// queued before it; the answer comes when it is committed (or failed).
    pub fn schedule(
        &self,
        change: ScheduleChange,
    ) -> impl std::future::Future<Output = Planned> + use<> {
        let (reply, answer) = oneshot::channel();
        self.queue(Job::Schedule { change, reply }, answer)
    }

    fn queue<T: Send + 'static>(
        &self,
        job: Job,
        answer: oneshot::Receiver<Result<T, EngineError>>,
    ) -> impl std::future::Future<Output = Result<T, EngineError>> + use<T> {
        self.queued.fetch_add(1, Ordering::Relaxed);
        let sent = send(&self.jobs, job);
        if !sent {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
        async move {
            if !sent {
                return Err(EngineError::ShuttingDown);
            }
            answer.await.unwrap_or(Err(EngineError::Stopped))
        }
    }

    /// A handle that queues floors adopted from Perun.
    pub fn rebaser(&self) -> Rebaser {
        Rebaser {
            jobs: Arc::clone(&self.jobs),
        }
    }

    /// Writes waiting to be applied.
    pub fn queue_size(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// What the engine has done so far.
    pub fn stats(&self) -> EngineStats {
        self.stats.locked().clone()
    }

    /// Stops taking writes, applies and commits those queued, and waits
    /// for the thread to end.
    pub fn shutdown(&self) {
        drop(self.jobs.locked().take());
        let thread = self.thread.locked().take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("the billing thread panicked");
        }
    }
}

struct Worker {
    ledger: Arc<dyn EngineStore>,
    prices: Arc<LiveSchedule>,
    intake: Intake,
    queued: Arc<AtomicUsize>,
    stats: Arc<Mutex<EngineStats>>,
}

impl Worker {
    fn run(mut self, jobs: Receiver<Job>) {
        let mut next = jobs.recv().ok();
        while let Some(job) = next.take() {
            match job.grouped() {
                Ok(first) => self.group(first, &jobs, &mut next),
                Err(RebaseJob {
                    project,
                    floors,
                    reply,
                }) => {
                    let _ = reply.send(self.rebase(&project, &floors));
                    next = jobs.recv().ok();
                }
            }
        }
        tracing::info!("billing engine stopped");
    }

    /// Applies `first` with the writes and schedule changes queued after
    /// it (up to [`MAX_GROUP`]) in one transaction; a rebase queued among
    /// them ends the group and comes `next`.
    fn group(&mut self, first: Grouped, jobs: &Receiver<Job>, next: &mut Option<Job>) {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            let Ok(job) = jobs.try_recv() else { break };
            match job.grouped() {
                Ok(job) => group.push(job),
                Err(rebase) => {
                    *next = Some(Job::Rebase(rebase));
                    break;
                }
            }
        }
        self.queued.fetch_sub(group.len(), Ordering::Relaxed);
        self.apply(group);
        if next.is_none() {
            *next = jobs.recv().ok();
        }
    }

    /// Adopts `floors` for `project`: book first, then the ledger in one
    /// transaction; if that fails the book is rebuilt from the ledger.
    fn rebase(&mut self, project: &str, floors: &[Floor]) -> Result<usize, EngineError> {
        let reversible = self
            .ledger
            .reversible(project, floors)
            .map_err(|e| EngineError::Ledger(e.to_string()))?;
        let book = self.intake.book_mut();
        let states: Vec<_> = floors
            .iter()
            .zip(reversible)
            .map(|(floor, reversed)| {
                book.rebase(
                    project,
                    &floor.location_id,
                    &floor.metric,
                    floor.timestamp,
                    reversed,
                )
            })
            .collect();
        let charged = book.project_total(project);
        match self.ledger.rebase(project, floors, &states, charged) {
            Ok(reversed) => Ok(reversed),
            Err(e) => {
                tracing::error!(project, "cannot store the floors adopted from Perun: {e}");
                self.reload();
                Err(EngineError::Ledger(e.to_string()))
            }
        }
    }

    /// Rebuilds the book (and the schedule) from the ledger after a
    /// failed commit.
    fn reload(&mut self) {
        match self.ledger.accounts() {
            Ok(accounts) => self.intake.reset_book(Book::restore(accounts)),
            Err(e) => tracing::error!("cannot reload the book from the ledger: {e}"),
        }
        if let Err(e) = self.prices.refresh() {
            tracing::error!("cannot reload the price schedule from the ledger: {e}");
        }
    }

    /// Plans `wanted` against the schedule and the book as they are.
    fn plan(&self, schedule: &Schedule, wanted: &[Wanted], complete: bool) -> Plan {
        let now = os_credits_core::time::now_ns();
        let book = self.intake.book();
        let billed_until = |site: &str| {
            book.accounts()
                .filter(|(key, _)| match site {
                    DEFAULT_SITE => !schedule.has_own(&key.location_id),
                    site => &*key.location_id == site,
                })
                .map(|(_, account)| account.state.timestamp)
                .max()
        };
        schedule.plan(wanted, complete, now, &billed_until)
    }

    fn apply(&mut self, group: Vec<Grouped>) {
        let installed = self.prices.current();
        let mut schedule = Arc::clone(&installed);
        let mut batch = Batch::default();
        let writes = group.len();
        let mut answers = Vec::with_capacity(writes);
        for job in group {
            let (write, reply) = match job {
                Grouped::Schedule(ScheduleChange { wanted, complete }, reply) => {
                    let plan = self.plan(&schedule, &wanted, complete);
                    if !plan.entries.is_empty() {
                        schedule =
                            Arc::new(self.prices.extended(&schedule, &plan.entries, &wanted));
                        batch.schedule.extend(plan.entries.iter().cloned());
                    }
                    answers.push(Answer::Planned(reply, plan));
                    continue;
                }
                Grouped::Write(write, reply) => (write, reply),
            };
            let policies = schedule.as_ref();
            let record = |sample: &Sample<'_>, outcome: &Outcome, book: &Book| {
                record(&mut batch, sample, outcome, book)
            };
            let report = match &write {
                Write::Lines {
                    text,
                    precision,
                    received,
                    scope,
                } => {
                    let items = os_credits_ingest::lines(text, *precision, *received);
                    self.intake
                        .feed_scoped(policies, items, scope.as_deref(), record)
                }
                Write::RemoteWrite {
                    request,
                    labels,
                    scope,
                    ..
                } => {
                    let items = remote_write::samples(request, labels);
                    self.intake
                        .feed_scoped(policies, items, scope.as_deref(), record)
                }
            };
            answers.push(Answer::Written(reply, report));
        }
        let committed = self.ledger.commit(&batch);
        let mut stats = self.stats.locked();
        match committed {
            Ok(()) => {
                if stats.ledger_failing {
                    tracing::info!("the ledger commits again");
                }
                stats.ledger_failing = false;
                stats.commits += 1;
                stats.writes += writes as u64;
                stats.seen = self.intake.seen().clone();
                stats.keys = self.intake.book().len();
                drop(stats);
                if !Arc::ptr_eq(&schedule, &installed) {
                    for entry in &batch.schedule {
                        tracing::info!(entry = entry.id, site = %entry.site, from = %os_credits_core::schedule::show_time(entry.from), kind = entry.kind.as_str(), file = %entry.file, sha256 = %entry.sha256, origin = %entry.origin, "price schedule: entry added");
                    }
                    self.prices.install(schedule);
                }
                for answer in answers {
                    answer.send(Ok(()));
                }
            }
            Err(e) => {
                stats.failed_commits += 1;
                stats.ledger_failing = true;
                let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                stats.last_ledger_error = Some((e.to_string(), at));
                drop(stats);
                tracing::error!("ledger commit failed, {writes} writes refused: {e}");
                self.reload();
                let failed = EngineError::Ledger(e.to_string());
                for answer in answers {
                    answer.send(Err(&failed));
                }
            }
        }
    }
}

/// Turns an outcome into ledger changes (`book`: as the sample's chunk
/// left it; a later state of the same key wins anyway).
fn record(batch: &mut Batch, sample: &Sample<'_>, outcome: &Outcome, book: &Book) {
    if !outcome.changes_state() {
        return;
    }
    let Some((key, account)) = book.entry(&sample.project, &sample.location_id, &sample.metric)
    else {
        return;
    };
    batch.states.push((key.clone(), account.clone()));
    if let Outcome::Charged(charge) = outcome {
        let stamp = |policy: &Option<Arc<ModuleInfo>>| match policy {
            Some(info) => PolicyStamp {
                name: info.name.clone(),
                version: info.version.clone(),
                sha256: info.sha256.clone(),
            },
            None => PolicyStamp {
                name: "native".into(),
                version: String::new(),
                sha256: String::new(),
            },
        };
        if charge.parts.is_empty() {
            batch.charges.push(ChargeRecord {
                key: key.clone(),
                previous: (charge.previous.timestamp, charge.previous.text.to_string()),
                current: (sample.timestamp, sample.text.to_string()),
                credits: charge.credits,
                charged_after: charge.project_total,
                policy: stamp(&charge.policy),
                reversed: false,
                schedule_entry: charge.entry,
            });
            return;
        }
        // A step split at a price change: one charge per part, each with
        // the entry that priced it; the running total ends at the step's.
        let mut after = charge.project_total - charge.credits;
        for part in &charge.parts {
            after += part.credits;
            batch.charges.push(ChargeRecord {
                key: key.clone(),
                previous: part.start.clone(),
                current: part.end.clone(),
                credits: part.credits,
                charged_after: after,
                policy: stamp(&part.policy),
                reversed: false,
                schedule_entry: part.entry,
            });
        }
    }
}
