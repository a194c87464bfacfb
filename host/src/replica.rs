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
use bytes::Bytes;

use crate::billing::engine::{Body, Engine, WriteResult};
use crate::billing::intake::FeedReport;
use crate::billing::prices::Wanted;
use crate::billing::scope::{Scope, Scoped};
use crate::ingest::Precision;
use crate::ingest::remote_write::{self, Labels};
use crate::ledger::Leadership;
use crate::ledger::replication::{InboxEntry, Lease, Replication};
use crate::sync::Locked;

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

    /// Bills `inbound`. The leader (or a lone service) bills it at once and
    /// answers once it is committed; a follower stores it in the inbox and
    /// answers once the insert is committed.
    pub async fn accept(&self, inbound: Body) -> WriteResult {
        if let Some(engine) = self.engine() {
            // The engine commits on the connection that holds the lock: a
            // leader that lost it cannot commit, and answers 5xx.
            let answer = {
                let mut handed = self.handed.lock().await;
                if let Some(store) = &self.store {
                    // What followers stored before this arrived goes first.
                    if let Err(e) = self.hand_over(store, &engine, &mut handed).await {
                        return WriteResult::Failed(format!("cannot read the inbox: {e}"));
                    }
                }
                engine.submit(inbound)
            };
            return answer.await;
        }
        let Some(store) = self.store.clone() else {
            return WriteResult::Failed("the billing engine is not running".into());
        };
        // A scoped writer's points are checked here too: a body with no
        // point it may bill is answered 403 by a follower as by the leader.
        let refused = match checked_scope(&inbound).await {
            Ok(refused) => refused,
            Err(e) => return WriteResult::Failed(e),
        };
        if let Some(report) = &refused
            && report.nothing_allowed()
        {
            return WriteResult::Done(report.clone());
        }
        let (kind, body, precision, received, scope) = match &inbound {
            Body::Lines {
                text,
                precision,
                received,
                scope,
            } => (
                "lines",
                text.clone(),
                precision.as_str(),
                *received,
                scope.clone(),
            ),
            Body::RemoteWrite {
                raw,
                received,
                scope,
                ..
            } => ("remote_write", raw.clone(), "ms", *received, scope.clone()),
            Body::Schedule { wanted, complete } => {
                let request = ScheduleRequest {
                    wanted: wanted.clone(),
                    complete: *complete,
                };
                match serde_json::to_vec(&request) {
                    Ok(json) => ("schedule", Bytes::from(json), "", 0, None),
                    Err(e) => return WriteResult::Failed(e.to_string()),
                }
            }
        };
        let name = self.name.clone();
        let stored = tokio::task::spawn_blocking(move || {
            let writer = scope.as_ref().map(|s| (s.writer.as_str(), s.sites_text()));
            let writer = writer.as_ref().map(|(w, sites)| (*w, sites.as_str()));
            store.store_inbox(kind, &body, precision, received, &name, writer)
        })
        .await;
        match stored {
            Ok(Ok(_)) => WriteResult::Done(refused.unwrap_or_default()),
            Ok(Err(e)) => {
                WriteResult::Failed(format!("cannot store the write for the leader: {e}"))
            }
            Err(e) => WriteResult::Failed(e.to_string()),
        }
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
    ) -> Result<(), String> {
        if self.rehand.swap(false, Ordering::SeqCst) {
            *handed = 0;
        }
        let mut answers = Vec::new();
        loop {
            let (reader, after) = (store.clone(), *handed);
            let entries = tokio::task::spawn_blocking(move || reader.inbox_entries(after, DRAIN))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            let full = entries.len() as i64 == DRAIN;
            for entry in entries {
                *handed = entry.id;
                let id = entry.id;
                match body(entry, &self.labels, self.max_decompressed) {
                    Ok(body) => answers.push((id, Some(engine.submit(body)))),
                    Err(e) => {
                        // Stored by a replica that checked it: only by hand.
                        tracing::error!(id, "inbox entry not billed, removed: {e}");
                        answers.push((id, None));
                    }
                }
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
                    match answer {
                        Some(answer) => match answer.await {
                            WriteResult::Done(_) => billed.push(id),
                            WriteResult::Scheduled(plan) => {
                                for why in &plan.refused {
                                    tracing::error!("price schedule change refused: {why}");
                                }
                                billed.push(id);
                            }
                            WriteResult::Failed(e) => {
                                tracing::warn!(
                                    "inbox entry not billed yet (handed over again): {e}"
                                );
                                rehand.store(true, Ordering::SeqCst);
                            }
                        },
                        None => billed.push(id),
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

/// A schedule request as a follower stores it for the leader (modules by
/// SHA-256: their bytes are in the ledger already).
#[derive(serde::Serialize, serde::Deserialize)]
struct ScheduleRequest {
    wanted: Vec<Wanted>,
    complete: bool,
}

/// What a scoped writer's body would have refused, decoded off the async
/// threads (`None` for a writer of every site, or a schedule request): a
/// follower answers as the leader would, and counts what it refused.
async fn checked_scope(inbound: &Body) -> Result<Option<FeedReport>, String> {
    match inbound {
        Body::Lines {
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
            .map_err(|e| e.to_string())
        }
        Body::RemoteWrite {
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

/// What an inbox entry asks the engine to bill, decoded as the handler
/// decodes (the same size limit).
fn body(entry: InboxEntry, labels: &Arc<Labels>, limit: usize) -> Result<Body, String> {
    let scope = entry
        .writer
        .as_ref()
        .map(|(writer, sites)| Arc::new(Scope::from_text(writer, sites)));
    match entry.kind.as_str() {
        "remote_write" => {
            let request = remote_write::decode(&entry.body, limit).map_err(|e| e.to_string())?;
            Ok(Body::RemoteWrite {
                raw: Bytes::from(entry.body),
                request: Box::new(request),
                labels: labels.clone(),
                received: entry.received,
                scope,
            })
        }
        "lines" => Precision::parse(&entry.precision)
            .map(|precision| Body::Lines {
                text: Bytes::from(entry.body),
                precision,
                received: entry.received,
                scope,
            })
            .ok_or_else(|| format!("unknown precision {:?}", entry.precision)),
        "schedule" => serde_json::from_slice::<ScheduleRequest>(&entry.body)
            .map(|request| Body::Schedule {
                wanted: request.wanted,
                complete: request.complete,
            })
            .map_err(|e| format!("schedule request: {e}")),
        other => Err(format!("unknown kind {other:?}")),
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
