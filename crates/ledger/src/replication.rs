//! What only replicas on PostgreSQL have, as a role of its own: the inbox
//! (writes followers store for the leader), the leader's lock, and its
//! lease with a fencing epoch.
//!
//! The leader holds a session advisory lock on the engine's connection
//! and a lease row (`leader`: epoch, replica, session, `renewed_at` on the
//! database's clock). It renews the lease every check and inside every
//! billing transaction, which fails unless the row still carries its epoch
//! ([`check_fence`]). A leader that stops answering without dying (a frozen
//! process, a lost machine, a cut network) keeps its lock for as long as
//! TCP keeps its session, so a follower that finds the lease older than the
//! timeout ends every session of that leader (`pg_terminate_backend`, which
//! the same database role may do), takes the lock and writes a new epoch.
//! When the old leader wakes, each of its sessions is gone: it commits
//! nothing, records no intent (so writes nothing to Perun) and exits.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::LedgerError;
use super::sql::{Db, Keepalive, params};
use super::store::Store;

use os_credits_core::sync::Locked;

/// The session advisory lock the leader holds, on the engine's connection.
const LEADER_LOCK: i64 = 7_401_002;

/// What a replica stored for the leader, as the inbox keeps it: the body
/// by its kind, with what each kind needs to be read again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboxBody {
    /// InfluxDB line protocol as received.
    Lines {
        /// The body.
        text: Vec<u8>,
        /// The unit of its timestamps, as the writer named it (`n`, `s`, ...).
        precision: String,
    },
    /// A Prometheus remote-write request as received (snappy protobuf).
    RemoteWrite {
        /// The body.
        snappy: Vec<u8>,
    },
    /// A change of the price schedule (JSON; its modules are in the ledger
    /// already, named by SHA-256).
    Schedule {
        /// The change.
        json: Vec<u8>,
    },
}

/// The scoped writer that sent an inbox entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxWriter {
    /// The writer's name.
    pub name: String,
    /// The sites it may bill, comma-separated.
    pub sites: String,
}

/// A row of the inbox before it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxRow {
    /// What was received.
    pub body: InboxBody,
    /// When it was received (ns).
    pub received: i64,
    /// The scoped writer that sent it (`None`: a writer of every site, or
    /// a schedule change).
    pub writer: Option<InboxWriter>,
}

/// A row of the inbox as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxEntry {
    /// Its id: the order of arrival.
    pub id: i64,
    /// The replica that stored it.
    pub replica: String,
    /// What it holds.
    pub row: InboxRow,
}

impl InboxBody {
    /// The columns `kind`, `body` and `precision` (empty where the kind
    /// has none).
    fn columns(&self) -> (&'static str, &[u8], &str) {
        match self {
            InboxBody::Lines { text, precision } => ("lines", text, precision),
            InboxBody::RemoteWrite { snappy } => ("remote_write", snappy, ""),
            InboxBody::Schedule { json } => ("schedule", json, ""),
        }
    }

    /// Reads the columns [`InboxBody::columns`] wrote.
    fn from_columns(kind: &str, body: Vec<u8>, precision: String) -> Result<Self, LedgerError> {
        Ok(match kind {
            "lines" => InboxBody::Lines {
                text: body,
                precision,
            },
            "remote_write" => InboxBody::RemoteWrite { snappy: body },
            "schedule" => InboxBody::Schedule { json: body },
            other => {
                return Err(LedgerError::Corrupt(format!(
                    "an inbox entry of unknown kind {other:?}"
                )));
            }
        })
    }
}

/// The lease as the database holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Lease {
    /// Bumped by every new leader.
    pub epoch: i64,
    /// The leader's name.
    pub replica: String,
    /// Milliseconds since it was last renewed (the database's clock).
    pub age_ms: i64,
}

/// The leader's fencing check, inside a billing transaction on the engine's
/// connection: renews the lease, and fails unless it still carries `epoch`.
pub(super) fn check_fence(db: &mut Db, epoch: i64) -> Result<(), LedgerError> {
    let renewed = db.execute(
        "UPDATE leader SET renewed_at = now() WHERE id = 1 AND epoch = ?1",
        params![epoch],
    )?;
    if renewed == 1 {
        Ok(())
    } else {
        Err(LedgerError::Fenced(epoch))
    }
}

/// The replicas' role of a PostgreSQL ledger.
pub struct Replication {
    store: Arc<Store>,
    /// The inbox's own connection: a follower stores without waiting for
    /// anything else.
    inbox: Mutex<Db>,
    /// This process's sessions' `application_name`: a follower deposing
    /// this leader ends every one of them.
    session: String,
}

impl Replication {
    /// The replication role of `store` (opened with [`Store::postgres`] on
    /// `url` and `keepalive`, its sessions named `session`).
    pub fn open(
        store: Arc<Store>,
        url: &str,
        keepalive: Keepalive,
        session: &str,
    ) -> Result<Self, LedgerError> {
        Ok(Replication {
            inbox: Mutex::new(Db::postgres(url, keepalive, session)?),
            store,
            session: session.to_owned(),
        })
    }

    /// The store (every other role).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Tries to become the leader: the advisory lock on the engine's
    /// connection, then a new epoch in the lease; from then on every
    /// billing transaction checks it. Returns the epoch when taken.
    pub fn try_lead(&self, replica: &str) -> Result<Option<i64>, LedgerError> {
        let mut db = self.store.writer();
        let taken = db
            .query_one("SELECT pg_try_advisory_lock(?1)", params![LEADER_LOCK])?
            .bool(0)?;
        if !taken {
            return Ok(None);
        }
        let epoch = db.transaction(|db| {
            db.query_one(
                "INSERT INTO leader (id, epoch, replica, backend_pid, renewed_at)
                 VALUES (1, 1, ?1, pg_backend_pid(), now())
                 ON CONFLICT (id) DO UPDATE SET epoch = leader.epoch + 1,
                     replica = excluded.replica, backend_pid = excluded.backend_pid,
                     renewed_at = excluded.renewed_at
                 RETURNING epoch",
                params![replica],
            )?
            .int(0)
        })?;
        *self.store.fence.locked() = Some(epoch);
        Ok(Some(epoch))
    }

    /// The leader's check: it still holds the lock and the lease carries
    /// its epoch. Renews the lease unless a billing transaction did so
    /// within `fresh` (read-only then: no commit to sync on the engine's
    /// connection). `false`: another replica leads.
    pub fn renew(&self, epoch: i64, fresh: Duration) -> Result<bool, LedgerError> {
        let mut db = self.store.writer();
        let state = db.query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'
                     AND pid = pg_backend_pid() AND granted
                     AND ((classid::bigint << 32) | objid::bigint) = ?1),
                 (SELECT epoch FROM leader WHERE id = 1),
                 (SELECT CAST(EXTRACT(EPOCH FROM (clock_timestamp() - renewed_at)) * 1000
                          AS BIGINT) FROM leader WHERE id = 1)",
            params![LEADER_LOCK],
        )?;
        if !state.bool(0)? || state.opt_int(1)? != Some(epoch) {
            return Ok(false);
        }
        let fresh_ms = i64::try_from(fresh.as_millis()).unwrap_or(i64::MAX);
        if state.opt_int(2)?.is_some_and(|age| age < fresh_ms) {
            return Ok(true);
        }
        match check_fence(&mut db, epoch) {
            Ok(()) => Ok(true),
            Err(LedgerError::Fenced(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The lease, if any replica ever led.
    pub fn lease(&self) -> Result<Option<Lease>, LedgerError> {
        self.store.read(|db| {
            db.query_opt(
                "SELECT epoch, replica,
                     CAST(EXTRACT(EPOCH FROM (clock_timestamp() - renewed_at)) * 1000 AS BIGINT)
                 FROM leader WHERE id = 1",
                &[],
            )?
            .map(|row| {
                Ok(Lease {
                    epoch: row.int(0)?,
                    replica: row.text(1)?,
                    age_ms: row.int(2)?,
                })
            })
            .transpose()
        })
    }

    /// A follower's move when the lock is taken: if the lease is older
    /// than `timeout`, ends every session of the leader that holds the
    /// lock (it stopped answering) so that the lock is free. Returns the
    /// deposed replica's name and how many sessions were ended.
    pub fn depose_stale(&self, timeout: Duration) -> Result<Option<(String, i64)>, LedgerError> {
        let mut db = self.store.writer();
        let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        let stale = db.query_opt(
            "SELECT l.replica, a.application_name FROM leader l
                 JOIN pg_locks k ON k.pid = l.backend_pid AND k.locktype = 'advisory' AND k.granted
                     AND ((k.classid::bigint << 32) | k.objid::bigint) = ?2
                 JOIN pg_stat_activity a ON a.pid = l.backend_pid
             WHERE l.id = 1
               AND EXTRACT(EPOCH FROM (clock_timestamp() - l.renewed_at)) * 1000 > ?1",
            params![timeout_ms, LEADER_LOCK],
        )?;
        let Some(stale) = stale else {
            return Ok(None);
        };
        let (replica, session) = (stale.text(0)?, stale.opt_text(1)?.unwrap_or_default());
        let ended = db
            .query_one(
                "SELECT COUNT(*) FILTER (WHERE ended) FROM (
                     SELECT pg_terminate_backend(pid) AS ended FROM pg_stat_activity
                     WHERE (application_name = ?1 AND ?1 <> '')
                        OR pid = (SELECT backend_pid FROM leader WHERE id = 1)) AS sessions",
                params![&session],
            )?
            .int(0)?;
        Ok(Some((replica, ended)))
    }

    /// This process's sessions' name.
    pub fn session(&self) -> &str {
        &self.session
    }

    /// Stores `row` for the leader, as received by `replica`; durable once
    /// this returns. Answers its id.
    pub fn store_inbox(&self, row: &InboxRow, replica: &str) -> Result<i64, LedgerError> {
        let (kind, body, precision) = row.body.columns();
        let writer = row.writer.as_ref();
        let (writer, sites) = (writer.map(|w| &w.name), writer.map(|w| &w.sites));
        self.inbox
            .locked()
            .query_one(
                "INSERT INTO inbox (kind, body, precision, received, replica, writer, sites)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
                params![kind, body, precision, row.received, replica, writer, sites],
            )?
            .int(0)
    }

    /// The oldest `limit` entries waiting in the inbox after id `after`, in
    /// arrival order.
    pub fn inbox_entries(&self, after: i64, limit: i64) -> Result<Vec<InboxEntry>, LedgerError> {
        self.inbox.locked().map(
            "SELECT id, kind, body, precision, received, replica, writer, sites FROM inbox
             WHERE id > ?1 ORDER BY id LIMIT ?2",
            params![after, limit],
            |row| {
                Ok(InboxEntry {
                    id: row.int(0)?,
                    replica: row.text(5)?,
                    row: InboxRow {
                        body: InboxBody::from_columns(&row.text(1)?, row.bytes(2)?, row.text(3)?)?,
                        received: row.int(4)?,
                        writer: match (row.opt_text(6)?, row.opt_text(7)?) {
                            (Some(name), Some(sites)) => Some(InboxWriter { name, sites }),
                            _ => None,
                        },
                    },
                })
            },
        )
    }

    /// Removes inbox entries the engine has billed and committed. An entry
    /// billed again (the leader died before removing it) bills nothing:
    /// its points are no newer than their keys' states.
    pub fn settle(&self, ids: &[i64]) -> Result<(), LedgerError> {
        let mut db = self.inbox.locked();
        for chunk in ids.chunks(512) {
            let list = chunk
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            db.batch(&format!("DELETE FROM inbox WHERE id IN ({list})"))?;
        }
        Ok(())
    }

    /// How many writes wait in the inbox.
    pub fn inbox_depth(&self) -> Result<u64, LedgerError> {
        let depth = self
            .inbox
            .locked()
            .query_one("SELECT COUNT(*) FROM inbox", &[])?
            .int(0)?;
        Ok(depth.max(0) as u64)
    }
}
