//! The sync loop: outbox -> Perun.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDateTime};
use serde::Serialize;
use serde_json::Value;

use super::client::{AttributeWrite, PerunClient, PerunError};
use crate::billing::round;
use crate::engine::Rebaser;
use crate::ledger::{AdjustmentKind, Floor, Ledger, OutboxEntry};

/// Perun's timestamp format for `denbiCreditTimestamps`.
const TIMESTAMP_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.6f";
/// How long a group id stays cached.
const GROUP_TTL: Duration = Duration::from_secs(3600);
/// Retry delay for a project that is not a Perun group.
const NOT_A_GROUP_RETRY: Duration = Duration::from_secs(3600);
/// Longest backoff after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Projects published at once.
const CONCURRENCY: usize = 8;

/// An attribute definition: id, friendly name, namespace, type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeDef {
    /// Definition id (differs between Perun instances).
    pub id: i64,
    /// Friendly name.
    pub friendly_name: String,
    /// Namespace.
    pub namespace: String,
    /// Java type.
    pub kind: String,
}

impl AttributeDef {
    fn write(&self, value: Value) -> AttributeWrite {
        AttributeWrite {
            id: self.id,
            friendly_name: self.friendly_name.clone(),
            namespace: self.namespace.clone(),
            kind: self.kind.clone(),
            value,
        }
    }
}

/// What the sync needs to know.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// The VO the groups live in.
    pub vo: i64,
    /// At most one write per project per this interval.
    pub interval: Duration,
    /// Decimal places of `denbiCreditsCurrent`.
    pub precision: u32,
    /// `denbiCreditsCurrent`.
    pub credits_current: AttributeDef,
    /// `denbiCreditsGranted` (read only).
    pub credits_granted: AttributeDef,
    /// `denbiCreditTimestamps` (group-resource).
    pub timestamps: AttributeDef,
    /// Friendly name of `toEmail` (read only).
    pub emails: String,
}

/// The sync's state for `/stats`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncStatus {
    /// Whether sync runs at all.
    pub enabled: bool,
    /// When a project was last published (RFC 3339).
    pub last_success: Option<String>,
    /// The last error and when.
    pub last_error: Option<String>,
    /// When the last error happened (RFC 3339).
    pub last_error_at: Option<String>,
    /// Projects published since start.
    pub published: u64,
    /// RPC calls made since start.
    pub calls: u64,
    /// Failed publishing attempts since start.
    pub errors: u64,
}

/// Publishes the outbox to Perun.
pub struct Sync {
    client: PerunClient,
    ledger: Arc<dyn Ledger>,
    rebaser: Rebaser,
    config: SyncConfig,
    groups: Mutex<HashMap<String, (i64, Instant)>>,
    status: Mutex<SyncStatus>,
    login_warned: AtomicBool,
    missing_warned: Mutex<std::collections::HashSet<String>>,
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

fn rfc3339_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Reads Perun's `%Y-%m-%d %H:%M:%S.%f` (UTC; fraction optional) as ns.
fn parse_timestamp(text: &str) -> Option<i64> {
    NaiveDateTime::parse_from_str(text.trim(), "%Y-%m-%d %H:%M:%S%.f")
        .ok()?
        .and_utc()
        .timestamp_nanos_opt()
}

/// Exponential backoff with jitter: about 2^attempts s, at most 5 min.
fn backoff(attempts: i64) -> Duration {
    let base = Duration::from_secs(1u64 << attempts.clamp(0, 9)).min(MAX_BACKOFF);
    // jitter in [0.5, 1.5) from the clock's nanoseconds; no RNG needed
    let jitter = 0.5 + f64::from(chrono::Utc::now().timestamp_subsec_nanos() % 1000) / 1000.0;
    base.mul_f64(jitter)
}

impl Sync {
    /// A sync over `client` and `ledger`; floors adopted on first contact
    /// go to the engine through `rebaser`.
    pub fn new(
        client: PerunClient,
        ledger: Arc<dyn Ledger>,
        rebaser: Rebaser,
        config: SyncConfig,
    ) -> Self {
        Sync {
            client,
            ledger,
            rebaser,
            config,
            groups: Mutex::new(HashMap::new()),
            status: Mutex::new(SyncStatus {
                enabled: true,
                ..SyncStatus::default()
            }),
            login_warned: AtomicBool::new(false),
            missing_warned: Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// The state for `/stats`.
    pub fn status(&self) -> SyncStatus {
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        status.calls = self.client.calls();
        status
    }

    /// Runs forever: publishes what is due, every half second.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            self.pass().await;
        }
    }

    /// One pass over what is due now.
    pub async fn pass(self: &Arc<Self>) {
        let ledger = self.ledger.clone();
        let due = match tokio::task::spawn_blocking(move || ledger.due(now_ns(), 256)).await {
            Ok(Ok(due)) => due,
            Ok(Err(e)) => return tracing::error!("perun sync: cannot read the outbox: {e}"),
            Err(e) => return tracing::error!("perun sync: {e}"),
        };
        let mut tasks = tokio::task::JoinSet::new();
        for entry in due {
            while tasks.len() >= CONCURRENCY {
                tasks.join_next().await;
            }
            let sync = Arc::clone(self);
            tasks.spawn(async move { sync.publish(entry).await });
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn group(&self, project: &str) -> Result<i64, PerunError> {
        let cached = self
            .groups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(project)
            .copied();
        if let Some((id, at)) = cached
            && at.elapsed() < GROUP_TTL
        {
            return Ok(id);
        }
        let id = self.client.group_id(self.config.vo, project).await?;
        self.groups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(project.to_owned(), (id, Instant::now()));
        Ok(id)
    }

    /// Reads the per-site timestamps the service we replace stored: the
    /// floors below which it billed already.
    async fn floors(&self, group: i64) -> Result<Vec<Floor>, PerunError> {
        let name = self.config.timestamps.friendly_name.as_str();
        let mut floors = Vec::new();
        for resource in self.client.assigned_resources(group).await? {
            let attributes = self
                .client
                .group_resource_attributes(group, resource, &[name])
                .await?;
            let stamps = attributes
                .iter()
                .filter(|a| a.friendly_name == name)
                .filter_map(|a| a.value.as_object());
            for (metric, text) in stamps.flatten() {
                match text.as_str().and_then(parse_timestamp) {
                    Some(timestamp) => floors.push(Floor {
                        location_id: resource.to_string(),
                        metric: metric.clone(),
                        timestamp,
                    }),
                    None => tracing::warn!(
                        group,
                        resource,
                        metric,
                        "ignoring an unreadable timestamp in Perun: {text}"
                    ),
                }
            }
        }
        Ok(floors)
    }

    /// On first contact with a group, adopts the timestamps stored per
    /// site (through the engine, ordered with the writes) before its
    /// credits used are adopted; a failure leaves both for the next try.
    async fn adopt_floors(&self, project: &str, group: i64) -> Result<(), PerunError> {
        let ledger = self.ledger.clone();
        let owned = project.to_owned();
        let adopted = tokio::task::spawn_blocking(move || ledger.adopted(&owned))
            .await
            .map_err(|e| PerunError::Local(e.to_string()))?
            .map_err(|e| PerunError::Local(e.to_string()))?;
        if adopted {
            return Ok(());
        }
        let floors = self.floors(group).await?;
        if floors.is_empty() {
            return Ok(());
        }
        let count = floors.len();
        let reversed = self
            .rebaser
            .rebase(project, floors)
            .await
            .map_err(PerunError::Local)?;
        tracing::info!(
            project,
            keys = count,
            reversed,
            "adopted the timestamps of the service we replace: points not newer are its own"
        );
        Ok(())
    }

    /// Reads credits used and granted and the maintainers; stores granted
    /// and maintainers; adopts or records a hand edit of credits used.
    async fn reconcile(&self, project: &str, group: i64) -> Result<(), PerunError> {
        self.adopt_floors(project, group).await?;
        let current_name = self.config.credits_current.friendly_name.as_str();
        let granted_name = self.config.credits_granted.friendly_name.as_str();
        let emails_name = self.config.emails.as_str();
        let attributes = self
            .client
            .group_attributes(group, &[current_name, granted_name, emails_name])
            .await?;
        let find = |name: &str| attributes.iter().find(|a| a.friendly_name == name);
        let decimal = |name: &str| {
            find(name)
                .and_then(|a| a.value.as_str())
                .and_then(|v| pricing_sdk::parse_decimal(v.trim()).ok())
        };
        let (granted, current) = (decimal(granted_name), decimal(current_name));
        let emails: Vec<String> = find(emails_name)
            .and_then(|a| a.value.as_array())
            .map(|list| {
                list.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let modified_at = find(current_name).and_then(|a| a.value_modified_at.clone());
        let ledger = self.ledger.clone();
        let owned = project.to_owned();
        let reconciled = tokio::task::spawn_blocking(move || {
            ledger.set_contacts(&owned, granted, &emails)?;
            ledger.reconcile(&owned, current, modified_at.as_deref())
        })
        .await;
        match reconciled {
            Ok(Ok(Some(adjustment))) => match adjustment.kind {
                AdjustmentKind::Adopted => {
                    tracing::info!(project, credits = %adjustment.amount, "adopted credits used from Perun")
                }
                AdjustmentKind::ManualEdit => {
                    tracing::warn!(project, difference = %adjustment.amount, "credits used were changed in Perun by hand: recorded as an adjustment, continuing from Perun's value")
                }
            },
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::error!(project, "cannot record Perun's values: {e}"),
            Err(e) => tracing::error!(project, "{e}"),
        }
        Ok(())
    }

    async fn publish(&self, entry: OutboxEntry) {
        let project = entry.project.clone();
        let result = self.try_publish(&entry).await;
        let ledger = self.ledger.clone();
        let outcome = match result {
            Ok(()) => {
                self.login_warned.store(false, Ordering::Relaxed);
                {
                    let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
                    status.last_success = Some(rfc3339_now());
                    status.published += 1;
                }
                let next = now_ns().saturating_add(self.config.interval.as_nanos() as i64);
                tokio::task::spawn_blocking(move || ledger.synced(&entry, next)).await
            }
            Err(error) => {
                let delay = if error.is_missing_group() {
                    let first = self
                        .missing_warned
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(project.clone());
                    if first {
                        tracing::warn!(
                            project,
                            "not a Perun group: its charges stay in the ledger; retrying hourly"
                        );
                    }
                    NOT_A_GROUP_RETRY
                } else {
                    if matches!(error, PerunError::Unauthorized { .. }) {
                        if !self.login_warned.swap(true, Ordering::Relaxed) {
                            tracing::error!(
                                "{error}; publishing to Perun is paused, nothing is lost"
                            );
                        }
                    } else {
                        tracing::warn!(project, "publishing to Perun failed: {error}");
                    }
                    backoff(entry.attempts)
                };
                {
                    let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
                    status.last_error = Some(error.to_string());
                    status.last_error_at = Some(rfc3339_now());
                    status.errors += 1;
                }
                let next = now_ns().saturating_add(delay.as_nanos() as i64);
                let message = error.to_string();
                tokio::task::spawn_blocking(move || ledger.sync_failed(&project, next, &message))
                    .await
            }
        };
        if let Ok(Err(e)) = outcome {
            tracing::error!("perun sync: cannot update the outbox: {e}");
        }
    }

    async fn try_publish(&self, entry: &OutboxEntry) -> Result<(), PerunError> {
        let group = self.group(&entry.project).await?;
        self.reconcile(&entry.project, group).await?;
        let ledger = self.ledger.clone();
        let project = entry.project.clone();
        let publishable = tokio::task::spawn_blocking(move || ledger.publishable(&project))
            .await
            .ok()
            .and_then(Result::ok)
            .flatten();
        let Some(publishable) = publishable else {
            return Ok(());
        };
        let used = round(publishable.used, self.config.precision);
        let current = self
            .config
            .credits_current
            .write(Value::String(used.to_string()));
        if publishable.sites.is_empty() {
            self.client
                .set_attributes(group, None, std::slice::from_ref(&current))
                .await?;
        }
        for (site, metrics) in &publishable.sites {
            let Ok(resource) = site.parse::<i64>() else {
                tracing::warn!(
                    project = entry.project,
                    site,
                    "location_id is not a Perun resource id; timestamps not published"
                );
                continue;
            };
            let stamps: serde_json::Map<String, Value> = metrics
                .iter()
                .map(|(metric, ns)| {
                    let text = DateTime::from_timestamp_nanos(*ns)
                        .format(TIMESTAMP_FORMAT)
                        .to_string();
                    (metric.clone(), Value::String(text))
                })
                .collect();
            let attributes = [
                current.clone(),
                self.config.timestamps.write(Value::Object(stamps)),
            ];
            self.client
                .set_attributes(group, Some(resource), &attributes)
                .await?;
        }
        let ledger = self.ledger.clone();
        let project = entry.project.clone();
        let recorded = tokio::task::spawn_blocking(move || ledger.written(&project, used)).await;
        if let Ok(Err(e)) = recorded {
            tracing::error!(
                project = entry.project,
                "cannot record the value written to Perun: {e}"
            );
        }
        Ok(())
    }
}
