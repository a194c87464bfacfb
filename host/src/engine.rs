//! The billing engine: one thread that owns the book and the ledger's
//! writer, so every point is applied in arrival order (per project and
//! globally) and nothing else writes billing state.
//!
//! Writes queue here as whole bodies. The thread takes every write waiting,
//! applies them in order through [`Replay::feed`] (the same code path as
//! `policy run`), commits all their changes in **one** transaction and only
//! then answers them: a write answered as done is durable, and many writes
//! share one fsync. If the commit fails, the book is rebuilt from the
//! ledger and those writes are answered as failed.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::sync::oneshot;

use crate::billing::{Book, Outcome};
use crate::ingest::{Measurement, Precision};
use crate::ledger::{Batch, ChargeRecord, Ledger, LedgerError, PolicyStamp};
use crate::policy::set::PolicySet;
use crate::replay::{FeedReport, Replay};

/// Writes applied in one transaction at most.
const MAX_GROUP: usize = 512;

/// A body of line protocol to apply.
#[derive(Debug, Clone)]
pub struct WriteRequest {
    /// The body as received.
    pub body: Bytes,
    /// The unit of its timestamps.
    pub precision: Precision,
    /// When it was received (ns), for points without a timestamp.
    pub received: i64,
}

/// How a write ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteResult {
    /// Applied and committed; what each line did.
    Done(FeedReport),
    /// Nothing of it was stored.
    Failed(String),
}

struct Job {
    request: WriteRequest,
    reply: oneshot::Sender<WriteResult>,
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
    jobs: Mutex<Option<Sender<Job>>>,
    queued: Arc<AtomicUsize>,
    stats: Arc<Mutex<EngineStats>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Engine {
    /// Restores the book from `ledger` and starts the engine thread.
    pub fn start(
        ledger: Arc<dyn Ledger>,
        policies: Arc<ArcSwap<PolicySet>>,
        whitelist: Option<HashSet<String>>,
    ) -> Result<Self, StartError> {
        let book = Book::restore(ledger.accounts()?);
        tracing::info!(keys = book.len(), "book restored from the ledger");
        let replay = Replay::with_book(book).whitelist(whitelist);
        let (sender, receiver) = channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(Mutex::new(EngineStats::default()));
        let worker = Worker {
            ledger,
            policies,
            replay,
            queued: Arc::clone(&queued),
            stats: Arc::clone(&stats),
        };
        let thread = std::thread::Builder::new()
            .name("billing".into())
            .spawn(move || worker.run(receiver))
            .map_err(StartError::Thread)?;
        Ok(Engine {
            jobs: Mutex::new(Some(sender)),
            queued,
            stats,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues a write and waits until it is committed (or failed).
    pub async fn write(&self, request: WriteRequest) -> WriteResult {
        let (reply, answer) = oneshot::channel();
        let sent = {
            let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
            match jobs.as_ref() {
                Some(jobs) => {
                    self.queued.fetch_add(1, Ordering::Relaxed);
                    jobs.send(Job { request, reply }).is_ok()
                }
                None => false,
            }
        };
        if !sent {
            return WriteResult::Failed("the service is shutting down".into());
        }
        answer
            .await
            .unwrap_or_else(|_| WriteResult::Failed("the billing engine stopped".into()))
    }

    /// Writes waiting to be applied.
    pub fn queue_size(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// What the engine has done so far.
    pub fn stats(&self) -> EngineStats {
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops taking writes, applies and commits those queued, and waits
    /// for the thread to end.
    pub fn shutdown(&self) {
        drop(
            self.jobs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("the billing thread panicked");
        }
    }
}

struct Worker {
    ledger: Arc<dyn Ledger>,
    policies: Arc<ArcSwap<PolicySet>>,
    replay: Replay,
    queued: Arc<AtomicUsize>,
    stats: Arc<Mutex<EngineStats>>,
}

impl Worker {
    fn run(mut self, jobs: Receiver<Job>) {
        while let Ok(first) = jobs.recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match jobs.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
            self.queued.fetch_sub(group.len(), Ordering::Relaxed);
            self.apply(group);
        }
        tracing::info!("billing engine stopped");
    }

    fn apply(&mut self, group: Vec<Job>) {
        let policies = self.policies.load_full();
        let mut batch = Batch::default();
        let mut reports = Vec::with_capacity(group.len());
        for job in &group {
            let request = &job.request;
            let report = self.replay.feed(
                policies.as_ref(),
                &request.body,
                request.precision,
                request.received,
                |_| {},
                |m, outcome, book| record(&mut batch, m, outcome, book),
            );
            reports.push(report);
        }
        let committed = self.ledger.commit(&batch);
        let mut stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        match committed {
            Ok(()) => {
                stats.commits += 1;
                stats.writes += group.len() as u64;
                stats.seen = self.replay.seen().clone();
                stats.keys = self.replay.book().len();
                drop(stats);
                for (job, report) in group.into_iter().zip(reports) {
                    let _ = job.reply.send(WriteResult::Done(report));
                }
            }
            Err(e) => {
                stats.failed_commits += 1;
                drop(stats);
                tracing::error!("ledger commit failed, {} writes refused: {e}", group.len());
                match self.ledger.accounts() {
                    Ok(accounts) => self.replay.reset_book(Book::restore(accounts)),
                    Err(e) => tracing::error!("cannot reload the book from the ledger: {e}"),
                }
                for job in group {
                    let _ = job
                        .reply
                        .send(WriteResult::Failed(format!("ledger write failed: {e}")));
                }
            }
        }
    }
}

/// Turns an outcome into ledger changes.
fn record(batch: &mut Batch, m: &Measurement<'_>, outcome: &Outcome, book: &Book) {
    if !outcome.changes_state() {
        return;
    }
    let Some((key, account)) = book.entry(m.project, m.location_id, m.metric) else {
        return;
    };
    batch.states.push((key.clone(), account.clone()));
    if let Outcome::Charged(charge) = outcome {
        let policy = match &charge.policy {
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
        batch.charges.push(ChargeRecord {
            key: key.clone(),
            previous: (charge.previous.timestamp, charge.previous.text.to_string()),
            current: (m.timestamp, m.text.to_owned()),
            credits: charge.credits,
            charged_after: book.project_total(m.project),
            policy,
        });
    }
}
