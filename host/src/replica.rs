//! Replicas: any number of `os-credits serve` on one PostgreSQL ledger,
//! exactly one of them billing.
//!
//! Every replica accepts writes. A follower stores each body in the
//! ledger's inbox and answers 204 once the insert is committed; the leader
//! drains the inbox in arrival order through the one engine and removes
//! each entry once the transaction that billed it committed (an entry
//! billed again, because a leader died in between, charges nothing: its
//! points are no newer than their keys' states). The leader bills what it receives itself without the inbox
//! (no body stored twice), but only after every inbox entry committed
//! before it arrived: a write answered 204 by any replica is billed before
//! every write sent after that answer, whichever replica takes it, so a
//! series spread over replicas is billed in the order it was sent.
//!
//! The leader is whoever holds a PostgreSQL session advisory lock, taken on
//! the connection every billing transaction runs on, and the lease that
//! goes with it ([`crate::ledger::replication`]): every check and every
//! billing transaction renews the lease and fails unless it still carries
//! this leader's epoch (fencing). Followers try to take the lock every
//! check interval; when the lease is older than the lease timeout, the
//! leader stopped answering without dying (a frozen process, a lost
//! machine, a cut network) and the follower ends its sessions first. The
//! new leader restores the book from the database, starts the Perun sync
//! and the mails and drains the inbox. A leader that cannot renew its
//! lease in time, or finds it taken, exits at once, so that it never bills,
//! publishes or mails beside a new one; its supervisor restarts it as a
//! follower. The Perun sync and the mails also ask [`Leadership`] before
//! every effect: a lease not renewed within half its timeout (as after a
//! freeze) stops them before the process even notices.
//!
//! With the SQLite ledger there is one process: it leads from the start.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use crate::billing::engine::{Engine, EngineError, Planned, ScheduleChange, Write, Written};
use crate::billing::intake::FeedReport;
use crate::billing::prices::Plan;
use crate::billing::scope::Scoped;
use crate::ingest::remote_write::{self, Labels};
use crate::ledger::replication::{InboxRow, Lease, Replication};
use crate::ledger::{Leadership, LedgerError};
use crate::sync::Locked;

mod inbox;

use inbox::Stored;

/// Inbox entries drained at a time.
const DRAIN: i64 = 512;
/// How often the leader looks into the inbox.
const DRAIN_EVERY: Duration = Duration::from_millis(100);

/// How a replica keeps and checks the lead.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How often a follower tries to take the lock and the leader renews
    /// its lease.
    pub check: Duration,
    /// A lease older than this (on the database's clock) is stale: its
    /// leader stopped answering and is replaced.
    pub lease: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            check: Duration::from_secs(1),
            lease: Duration::from_secs(8),
        }
    }
}

/// When this process last renewed its lease: the Perun sync and the mails
/// act only while it is fresher than half the lease timeout (a follower
/// waits the whole timeout before it takes over).
struct LeaseClock {
    renewed: Mutex<Option<Instant>>,
    valid_for: Duration,
}

impl LeaseClock {
    fn renewed_at(&self, at: Option<Instant>) {
        *self.renewed.locked() = at;
    }
}

impl Leadership for LeaseClock {
    fn leading(&self) -> bool {
        self.renewed
            .locked()
            .is_some_and(|at| at.elapsed() < self.valid_for)
    }
}

/// A lone service (SQLite) always leads.
struct Alone;

impl Leadership for Alone {
    fn leading(&self) -> bool {
        true
    }
}

/// This replica's part, for `/stats` and `/metrics`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReplicaStatus {
    /// `leader` or `follower`.
    pub role: &'static str,
    /// Writes waiting in the inbox (replicated ledgers only).
    pub inbox_depth: Option<u64>,
    /// Seconds since the lock was last checked (replicated ledgers only).
    pub lock_checked_seconds_ago: Option<f64>,
    /// The lease as the database holds it: epoch, leader, age (replicated
    /// ledgers only).
    pub lease: Option<Lease>,
    /// The lease timeout in seconds (replicated ledgers only).
    pub lease_timeout_seconds: Option<f64>,
}

/// This process as a replica: its engine once it leads.
pub struct Replica {
    name: String,
    engine: ArcSwapOption<Engine>,
    store: Option<Arc<Replication>>,
    last_check: Mutex<Option<Instant>>,
    /// The labels naming project and site in stored remote writes.
    labels: Arc<Labels>,
    /// The most a stored remote-write body may decompress to (as the
    /// handler's limit).
    max_decompressed: usize,
    timing: Timing,
    clock: Arc<LeaseClock>,
    /// The last inbox id handed to the engine: the leader hands over
    /// entries and its own writes one at a time, in order.
    handed: tokio::sync::Mutex<i64>,
    /// Set when a handed entry failed: hand over from the oldest again.
    rehand: Arc<AtomicBool>,
}

impl Replica {
    /// A lone service (SQLite): it leads with `engine` from the start.
    pub fn single(engine: Arc<Engine>) -> Self {
        Replica {
            name: String::new(),
            engine: ArcSwapOption::from(Some(engine)),
            store: None,
            last_check: Mutex::new(None),
            labels: Arc::default(),
            max_decompressed: 0,
            timing: Timing::default(),
            clock: Arc::new(LeaseClock {
                renewed: Mutex::new(None),
                valid_for: Duration::ZERO,
            }),
            handed: tokio::sync::Mutex::new(0),
            rehand: Arc::default(),
        }
    }

    /// A replica on `store`, following until it takes the lock; `labels`
    /// name project and site in remote writes, which decompress to
    /// `max_decompressed` bytes at most.
    pub fn replicated(
        name: &str,
        store: Arc<Replication>,
        labels: Arc<Labels>,
        max_decompressed: usize,
        timing: Timing,
    ) -> Self {
        Replica {
            name: name.to_owned(),
            engine: ArcSwapOption::empty(),
            store: Some(store),
            last_check: Mutex::new(None),
            labels,
            max_decompressed,
            timing,
            clock: Arc::new(LeaseClock {
                renewed: Mutex::new(None),
                valid_for: timing.lease / 2,
            }),
            handed: tokio::sync::Mutex::new(0),
            rehand: Arc::default(),
        }
    }

    /// The engine, while this replica leads.
    pub fn engine(&self) -> Option<Arc<Engine>> {
        self.engine.load_full()
    }

    /// Whether this replica bills.
    pub fn is_leader(&self) -> bool {
        self.engine.load().is_some()
    }

    /// Whether this process may act as the leader now, for the Perun sync
    /// and the mails (see the module doc).
    pub fn leadership(&self) -> Arc<dyn Leadership> {
        if self.store.is_some() {
            self.clock.clone()
        } else {
            Arc::new(Alone)
        }
    }

    /// Bills `write`. The leader (or a lone service) bills it at once and
    /// answers once it is committed; a follower stores it in the inbox and
    /// answers once the insert is committed, with what a scoped writer's
    /// body would have refused (a body with no point it may bill is
    /// answered 403 by a follower as by the leader, and not stored).
    pub async fn write(&self, write: Write) -> Result<FeedReport, AcceptError> {
        let store = match self.route().await? {
            Route::Lead(engine, handed) => {
                let answer = engine.submit(write);
                drop(handed);
                return Ok(answer.await?);
            }
            Route::Follow(store) => store,
        };
        let refused = checked_scope(&write).await?;
        if let Some(report) = &refused
            && report.nothing_allowed()
        {
            return Ok(report.clone());
        }
        self.store(store, inbox::write_row(&write)).await?;
        Ok(refused.unwrap_or_default())
    }

    /// Changes the price schedule: the leader (or a lone service) plans and
    /// commits it in order with the writes before; a follower stores it
    /// for the leader.
    pub async fn schedule(&self, change: ScheduleChange) -> Result<Scheduled, AcceptError> {
        let store = match self.route().await? {
            Route::Lead(engine, handed) => {
                let answer = engine.schedule(change);
                drop(handed);
                return Ok(Scheduled::Planned(answer.await?));
            }
            Route::Follow(store) => store,
        };
        let row = inbox::schedule_row(&change, crate::time::now_ns())?;
        self.store(store, row).await?;
        Ok(Scheduled::Stored)
    }

    /// Where a job goes: to this replica's engine while it leads, after
    /// what followers stored before it arrived; to the inbox otherwise.
    async fn route(&self) -> Result<Route<'_>, AcceptError> {
        if let Some(engine) = self.engine() {
            let mut handed = self.handed.lock().await;
            if let Some(store) = &self.store {
                self.hand_over(store, &engine, &mut handed).await?;
            }
            return Ok(Route::Lead(engine, handed));
        }
        self.store
            .clone()
            .map(Route::Follow)
            .ok_or(AcceptError::NotRunning)
    }

    /// Stores `row` in the inbox for the leader.
    async fn store(&self, store: Arc<Replication>, row: InboxRow) -> Result<(), AcceptError> {
        let name = self.name.clone();
        tokio::task::spawn_blocking(move || store.store_inbox(&row, &name))
            .await
            .map_err(|e| AcceptError::Task(e.to_string()))?
            .map_err(AcceptError::Store)?;
        Ok(())
    }

    /// Hands the inbox entries after `handed` to the engine, in id order
    /// (the caller holds `handed`). A task awaits their answers and removes
    /// the entries billed; if one fails (the ledger could not commit), the
    /// next hand-over starts again from the oldest entry still there. An
    /// entry billed twice (handed again, or the leader died before removing
    /// it) bills nothing twice: its points are no newer than its keys' states.
    async fn hand_over(
        &self,
        store: &Arc<Replication>,
        engine: &Engine,
        handed: &mut i64,
    ) -> Result<(), AcceptError> {
        if self.rehand.swap(false, Ordering::SeqCst) {
            *handed = 0;
        }
        let mut answers = Vec::new();
        loop {
            let (reader, after) = (store.clone(), *handed);
            let entries = tokio::task::spawn_blocking(move || reader.inbox_entries(after, DRAIN))
                .await
                .map_err(|e| AcceptError::Task(e.to_string()))?
                .map_err(AcceptError::Inbox)?;
            let full = entries.len() as i64 == DRAIN;
            for entry in entries {
                *handed = entry.id;
                let id = entry.id;
                let answer = match inbox::decode(entry.row, &self.labels, self.max_decompressed) {
                    Ok(Stored::Write(write)) => Handed::Write(Box::pin(engine.submit(write))),
                    Ok(Stored::Schedule(change)) => {
                        Handed::Schedule(Box::pin(engine.schedule(change)))
                    }
                    Err(e) => {
                        // Stored by a replica that checked it: only by hand.
                        tracing::error!(id, "inbox entry not billed, removed: {e}");
                        Handed::Refused
                    }
                };
                answers.push((id, answer));
            }
            if !full {
                break;
            }
        }
        if !answers.is_empty() {
            let (rehand, store) = (self.rehand.clone(), store.clone());
            tokio::spawn(async move {
                let mut billed = Vec::with_capacity(answers.len());
                for (id, answer) in answers {
                    let failed = match answer {
                        Handed::Write(answer) => answer.await.err(),
                        Handed::Schedule(answer) => match answer.await {
                            Ok(plan) => {
                                for why in &plan.refused {
                                    tracing::error!("price schedule change refused: {why}");
                                }
                                None
                            }
                            Err(e) => Some(e),
                        },
                        Handed::Refused => None,
                    };
                    match failed {
                        None => billed.push(id),
                        Some(e) => {
                            tracing::warn!("inbox entry not billed yet (handed over again): {e}");
                            rehand.store(true, Ordering::SeqCst);
                        }
                    }
                }
                let settled = tokio::task::spawn_blocking(move || store.settle(&billed)).await;
                if let Ok(Err(e)) = settled {
                    // Left in the inbox: billed again later, charging nothing.
                    tracing::warn!("cannot remove billed inbox entries: {e}");
                }
            });
        }
        Ok(())
    }

    /// This replica's part, for `/stats` and `/metrics`.
    pub async fn status(&self) -> ReplicaStatus {
        let (inbox_depth, lease) = match self.store.clone() {
            Some(store) => tokio::task::spawn_blocking(move || {
                (store.inbox_depth().ok(), store.lease().ok().flatten())
            })
            .await
            .unwrap_or_default(),
            None => (None, None),
        };
        let last_check = *self.last_check.locked();
        ReplicaStatus {
            role: if self.is_leader() {
                "leader"
            } else {
                "follower"
            },
            inbox_depth,
            lock_checked_seconds_ago: last_check.map(|at| at.elapsed().as_secs_f64()),
            lease,
            lease_timeout_seconds: self.store.as_ref().map(|_| self.timing.lease.as_secs_f64()),
        }
    }

    fn checked(&self) {
        *self.last_check.locked() = Some(Instant::now());
    }

    /// Runs forever on a replicated ledger: follows until the lock is
    /// taken (deposing a leader whose lease went stale), then calls `lead`
    /// (which starts the engine and the leader's tasks), drains the inbox,
    /// and renews the lease every check; exits the process when it cannot.
    pub async fn campaign(
        self: Arc<Self>,
        lead: impl FnOnce() -> anyhow::Result<Arc<Engine>> + Send + 'static,
    ) {
        let Some(store) = self.store.clone() else {
            return;
        };
        let timing = self.timing;
        let mut tick = tokio::time::interval(timing.check);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let epoch = loop {
            tick.tick().await;
            let (ledger, name) = (store.clone(), self.name.clone());
            let taken = tokio::task::spawn_blocking(move || -> Result<Option<i64>, String> {
                if let Some(epoch) = ledger.try_lead(&name).map_err(|e| e.to_string())? {
                    return Ok(Some(epoch));
                }
                let Some((deposed, sessions)) = ledger
                    .depose_stale(timing.lease)
                    .map_err(|e| e.to_string())?
                else {
                    return Ok(None);
                };
                tracing::warn!(
                    %deposed, sessions,
                    "the leader's lease is older than {:?}: ended its sessions", timing.lease
                );
                // Its lock goes with its session, a moment later.
                for _ in 0..40 {
                    if let Some(epoch) = ledger.try_lead(&name).map_err(|e| e.to_string())? {
                        return Ok(Some(epoch));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(None)
            })
            .await;
            self.checked();
            match taken {
                Ok(Ok(Some(epoch))) => break epoch,
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    tracing::warn!("cannot reach the ledger to check the leader's lock: {e}")
                }
                Err(e) => tracing::error!("{e}"),
            }
        };
        self.clock.renewed_at(Some(Instant::now()));
        tracing::info!(replica = %self.name, epoch, "took the leader's lock: restoring the book and billing");
        let started = Instant::now();
        let engine = match tokio::task::spawn_blocking(lead).await {
            Ok(Ok(engine)) => engine,
            Ok(Err(e)) => return self.lost(&format!("cannot start billing as the leader: {e:#}")),
            Err(e) => return self.lost(&e.to_string()),
        };
        self.engine.store(Some(engine.clone()));
        tracing::info!(took = ?started.elapsed(), epoch, "leading");
        tokio::spawn(drain(self.clone(), store.clone(), engine));
        loop {
            tick.tick().await;
            let asked = Instant::now();
            let ledger = store.clone();
            // A renewal that hangs (the database unreachable) counts as
            // lost once the lease would be stale for the followers.
            let renewed = tokio::time::timeout(
                timing.lease,
                tokio::task::spawn_blocking(move || ledger.renew(epoch, timing.check / 2)),
            )
            .await;
            self.checked();
            match renewed {
                Ok(Ok(Ok(true))) => self.clock.renewed_at(Some(asked)),
                Ok(Ok(Ok(false))) => return self.lost("another replica took the lead"),
                Ok(Ok(Err(e))) => return self.lost(&format!("the leader's session is gone: {e}")),
                Ok(Err(e)) => return self.lost(&e.to_string()),
                Err(_) => return self.lost("the lease could not be renewed in time"),
            }
        }
    }

    /// A leader that lost the lead exits: another replica may bill already.
    fn lost(&self, why: &str) {
        self.clock.renewed_at(None);
        tracing::error!("{why}: exiting so that no two replicas bill (restart me: I follow)");
        std::process::exit(3);
    }
}

/// What a replica did with a schedule change.
#[derive(Debug)]
pub enum Scheduled {
    /// Planned and committed by this replica (it leads): the entries
    /// added, and why any wanted entry was refused.
    Planned(Plan),
    /// Stored in the inbox for the leader, which plans it.
    Stored,
}

/// Why a replica took nothing of a write or schedule change.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The engine refused it (nothing of it was stored).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The leader could not read what followers stored before it.
    #[error("cannot read the inbox: {0}")]
    Inbox(LedgerError),
    /// A follower could not store it for the leader.
    #[error("cannot store the write for the leader: {0}")]
    Store(LedgerError),
    /// Neither leading nor on a replicated ledger.
    #[error("the billing engine is not running")]
    NotRunning,
    /// A schedule change could not be encoded for the inbox.
    #[error("cannot encode the schedule change for the leader: {0}")]
    Encode(#[from] serde_json::Error),
    /// A blocking task failed (it panicked, or the runtime stops).
    #[error("{0}")]
    Task(String),
}

/// Where a replica sends a job.
enum Route<'a> {
    /// It leads: the job goes to the engine while the hand-over is held
    /// (the engine commits on the connection that holds the lock: a leader
    /// that lost it cannot commit, and answers 5xx).
    Lead(Arc<Engine>, tokio::sync::MutexGuard<'a, i64>),
    /// It follows: the job is stored in this inbox for the leader.
    Follow(Arc<Replication>),
}

/// An inbox entry handed to the engine, its answer to come.
enum Handed {
    Write(std::pin::Pin<Box<dyn std::future::Future<Output = Written> + Send>>),
    Schedule(std::pin::Pin<Box<dyn std::future::Future<Output = Planned> + Send>>),
    /// Not billable: removed.
    Refused,
}

/// What a scoped writer's body would have refused, decoded off the async
/// threads (`None` for a writer of every site): a follower answers as the
/// leader would, and counts what it refused. The follower's one decoding
/// of a line-protocol body.
async fn checked_scope(write: &Write) -> Result<Option<FeedReport>, AcceptError> {
    match write {
        Write::Lines {
            text,
            precision,
            received,
            scope: Some(scope),
        } => {
            let (text, precision, received, scope) =
                (text.clone(), *precision, *received, scope.clone());
            tokio::task::spawn_blocking(move || {
                let items = crate::ingest::lines(&text, precision, received);
                Scoped::new(items, Some(&scope)).refusals()
            })
            .await
            .map(Some)
            .map_err(|e| AcceptError::Task(e.to_string()))
        }
        Write::RemoteWrite {
            request,
            labels,
            scope: Some(scope),
            ..
        } => {
            let items = remote_write::samples(request, labels);
            Ok(Some(Scoped::new(items, Some(scope)).refusals()))
        }
        _ => Ok(None),
    }
}

/// The leader's inbox drain: what followers stored, in arrival order
/// through the engine, each entry removed in the transaction that bills it.
async fn drain(replica: Arc<Replica>, store: Arc<Replication>, engine: Arc<Engine>) {
    loop {
        {
            let mut handed = replica.handed.lock().await;
            if let Err(e) = replica.hand_over(&store, &engine, &mut handed).await {
                tracing::warn!("cannot read the inbox: {e}");
            }
        }
        tokio::time::sleep(DRAIN_EVERY).await;
    }
}
