//! Replicas: any number of `os-credits serve` on one PostgreSQL ledger,
//! exactly one of them billing.
//!
//! Every replica accepts writes. A follower stores each body in the
//! ledger's inbox and answers 204 once the insert is committed; the leader
//! drains the inbox in arrival order through the one engine, removing each
//! entry in the transaction that bills it (billed exactly once, whoever
//! dies when). The leader bills what it receives itself without the inbox
//! (no body stored twice), but only after every inbox entry committed
//! before it arrived: a write answered 204 by any replica is billed before
//! every write sent after that answer, whichever replica takes it, so a
//! series spread over replicas is billed in the order it was sent.
//!
//! The leader is whoever holds a PostgreSQL session advisory lock, taken on
//! the connection every billing transaction runs on: a leader that lost its
//! session can never commit. Followers try to take the lock every check
//! interval; the one that gets it restores the book from the database,
//! starts the Perun sync and the mails (leader only) and drains the inbox.
//! A leader that finds its lock gone exits, so that it never bills beside
//! a new one; its supervisor restarts it as a follower.
//!
//! With the SQLite ledger there is one process: it leads from the start.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;

use crate::billing::engine::{Body, Engine, WriteRequest, WriteResult};
use crate::billing::intake::FeedReport;
use crate::ingest::Precision;
use crate::ingest::remote_write::{self, Labels};
use crate::ledger::postgres::{InboxEntry, PostgresLedger};

/// Inbox entries drained at a time.
const DRAIN: i64 = 512;
/// How often the leader looks into the inbox.
const DRAIN_EVERY: Duration = Duration::from_millis(100);

/// A write as it arrived, before billing.
#[derive(Debug, Clone)]
pub enum Inbound {
    /// Line protocol.
    Lines {
        /// The body.
        text: Bytes,
        /// The unit of its timestamps.
        precision: Precision,
        /// When it arrived (ns).
        received: i64,
    },
    /// A Prometheus remote-write request: the body as received, and decoded.
    RemoteWrite {
        /// The snappy body.
        raw: Bytes,
        /// The request it decodes to.
        request: Box<remote_write::WriteRequest>,
        /// The labels naming project and site.
        labels: Arc<Labels>,
        /// When it arrived (ns).
        received: i64,
    },
}

impl Inbound {
    fn into_request(self) -> WriteRequest {
        WriteRequest::new(match self {
            Inbound::Lines {
                text,
                precision,
                received,
            } => Body::Lines {
                text,
                precision,
                received,
            },
            Inbound::RemoteWrite {
                request, labels, ..
            } => Body::RemoteWrite { request, labels },
        })
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
}

/// This process as a replica: its engine once it leads.
pub struct Replica {
    name: String,
    engine: ArcSwapOption<Engine>,
    store: Option<Arc<PostgresLedger>>,
    last_check: Mutex<Option<Instant>>,
    /// The labels naming project and site in stored remote writes.
    labels: Arc<Labels>,
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
            handed: tokio::sync::Mutex::new(0),
            rehand: Arc::default(),
        }
    }

    /// A replica on `store`, following until it takes the lock; `labels`
    /// name project and site in remote writes.
    pub fn replicated(name: &str, store: Arc<PostgresLedger>, labels: Arc<Labels>) -> Self {
        Replica {
            name: name.to_owned(),
            engine: ArcSwapOption::empty(),
            store: Some(store),
            last_check: Mutex::new(None),
            labels,
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

    /// Bills `inbound`. The leader (or a lone service) bills it at once and
    /// answers once it is committed; a follower stores it in the inbox and
    /// answers once the insert is committed.
    pub async fn accept(&self, inbound: Inbound) -> WriteResult {
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
                engine.submit(inbound.into_request())
            };
            return answer.await;
        }
        let Some(store) = self.store.clone() else {
            return WriteResult::Failed("the billing engine is not running".into());
        };
        let (kind, body, precision, received) = match &inbound {
            Inbound::Lines {
                text,
                precision,
                received,
            } => ("lines", text.clone(), precision.as_str(), *received),
            Inbound::RemoteWrite { raw, received, .. } => {
                ("remote_write", raw.clone(), "ms", *received)
            }
        };
        let name = self.name.clone();
        let stored = tokio::task::spawn_blocking(move || {
            store.store_inbox(kind, &body, precision, received, &name)
        })
        .await;
        match stored {
            Ok(Ok(_)) => WriteResult::Done(FeedReport::default()),
            Ok(Err(e)) => {
                WriteResult::Failed(format!("cannot store the write for the leader: {e}"))
            }
            Err(e) => WriteResult::Failed(e.to_string()),
        }
    }

    /// Hands the inbox entries after `handed` to the engine, in id order
    /// (the caller holds `handed`). A task awaits their answers; if one
    /// fails (the ledger could not commit), the next hand-over starts again
    /// from the oldest entry still there. An entry handed twice bills
    /// nothing twice: its points are no newer than its keys' states.
    async fn hand_over(
        &self,
        store: &Arc<PostgresLedger>,
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
                answers.push(engine.submit(request(entry, &self.labels)));
            }
            if !full {
                break;
            }
        }
        if !answers.is_empty() {
            let rehand = self.rehand.clone();
            tokio::spawn(async move {
                for answer in answers {
                    if let WriteResult::Failed(e) = answer.await {
                        tracing::warn!("inbox entry not billed yet (handed over again): {e}");
                        rehand.store(true, Ordering::SeqCst);
                    }
                }
            });
        }
        Ok(())
    }

    /// This replica's part, for `/stats` and `/metrics`.
    pub async fn status(&self) -> ReplicaStatus {
        let inbox_depth = match self.store.clone() {
            Some(store) => tokio::task::spawn_blocking(move || store.inbox_depth().ok())
                .await
                .ok()
                .flatten(),
            None => None,
        };
        let last_check = *self
            .last_check
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        ReplicaStatus {
            role: if self.is_leader() {
                "leader"
            } else {
                "follower"
            },
            inbox_depth,
            lock_checked_seconds_ago: last_check.map(|at| at.elapsed().as_secs_f64()),
        }
    }

    fn checked(&self) {
        *self
            .last_check
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    /// Runs forever on a replicated ledger: follows until the lock is
    /// taken, then calls `lead` (which starts the engine and the leader's
    /// tasks), drains the inbox, and checks the lock every `every`; exits
    /// the process when it is lost.
    pub async fn campaign(
        self: Arc<Self>,
        every: Duration,
        lead: impl FnOnce() -> anyhow::Result<Arc<Engine>> + Send + 'static,
    ) {
        let Some(store) = self.store.clone() else {
            return;
        };
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let store = store.clone();
            let taken = tokio::task::spawn_blocking(move || store.try_lead()).await;
            self.checked();
            match taken {
                Ok(Ok(true)) => break,
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::warn!("cannot reach the ledger to check the leader's lock: {e}")
                }
                Err(e) => tracing::error!("{e}"),
            }
        }
        tracing::info!(replica = %self.name, "took the leader's lock: restoring the book and billing");
        let started = Instant::now();
        let engine = match tokio::task::spawn_blocking(lead).await {
            Ok(Ok(engine)) => engine,
            Ok(Err(e)) => return lost(&format!("cannot start billing as the leader: {e:#}")),
            Err(e) => return lost(&e.to_string()),
        };
        self.engine.store(Some(engine.clone()));
        tracing::info!(took = ?started.elapsed(), "leading");
        tokio::spawn(drain(self.clone(), store.clone(), engine));
        loop {
            tick.tick().await;
            let store = store.clone();
            let holding = tokio::task::spawn_blocking(move || store.still_leading()).await;
            self.checked();
            match holding {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => return lost("the leader's lock is gone"),
                Ok(Err(e)) => return lost(&format!("the leader's session is gone: {e}")),
                Err(e) => return lost(&e.to_string()),
            }
        }
    }
}

/// A leader that lost its lock exits: another replica may bill already.
fn lost(why: &str) {
    tracing::error!("{why}: exiting so that no two replicas bill (restart me: I follow)");
    std::process::exit(3);
}

/// What an inbox entry asks the engine to bill.
fn request(entry: InboxEntry, labels: &Arc<Labels>) -> WriteRequest {
    let body = match entry.kind.as_str() {
        "remote_write" => remote_write::decode(&entry.body, usize::MAX)
            .map(|request| Body::RemoteWrite {
                request: Box::new(request),
                labels: labels.clone(),
            })
            .map_err(|e| e.to_string()),
        "lines" => Precision::parse(&entry.precision)
            .map(|precision| Body::Lines {
                text: Bytes::from(entry.body),
                precision,
                received: entry.received,
            })
            .ok_or_else(|| format!("unknown precision {:?}", entry.precision)),
        other => Err(format!("unknown kind {other:?}")),
    };
    let body = body.unwrap_or_else(|e| {
        // Stored by a replica that checked it: cannot happen but by hand.
        tracing::error!(id = entry.id, "inbox entry not billed: {e}");
        Body::Lines {
            text: Bytes::new(),
            precision: Precision::Nanoseconds,
            received: entry.received,
        }
    });
    WriteRequest {
        body,
        inbox_id: Some(entry.id),
    }
}

/// The leader's inbox drain: what followers stored, in arrival order
/// through the engine, each entry removed in the transaction that bills it.
async fn drain(replica: Arc<Replica>, store: Arc<PostgresLedger>, engine: Arc<Engine>) {
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
