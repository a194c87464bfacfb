//! The sync loop: outbox -> Perun.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDateTime};
use serde::Serialize;
use serde_json::Value;

use super::client::{AttributeDef, PerunClient, PerunError};
use super::reconcile::{Reading, Verdict, judge};
use crate::credits::round;
use crate::ledger::{AdjustmentKind, Floor, Leadership, LedgerError, OutboxEntry, PerunStore};
use crate::sync::Locked;
use crate::time::now_ns;

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
/// The longest pause between two passes over the outbox.
const PASS_MAX: Duration = Duration::from_millis(500);
/// How long a write may still be on its way to Perun after it was sent
/// (far beyond any call timeout): its value is recognised as ours that long
/// even after a newer write was confirmed.
const IN_FLIGHT: Duration = Duration::from_secs(3600);

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
    /// `toEmail` (read only).
    pub emails: AttributeDef,
    /// When a project ends (read only; `OS_CREDITS_PERUN_END_ATTRIBUTE`).
    pub ends: Option<AttributeDef>,
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
    /// Projects found not to be a Perun group (kept pending, retried
    /// hourly).
    pub not_groups: u64,
    /// Projects whose value in Perun was unset or unreadable when read
    /// back (published again, not taken for a hand edit).
    pub unset_values: u64,
    /// Values changed in Perun by hand, recorded as adjustments.
    pub hand_edits: u64,
    /// Projects whose timestamps were adopted from the service we replace.
    pub adopted: u64,
}

/// Where the timestamps adopted from the service we replace go: the
/// billing engine, which applies them in order with the writes. A port of
/// this module, so that perun knows nothing of billing; the service wires
/// the engine to it.
pub trait Rebase: Send + std::marker::Sync {
    /// Applies `floors` to `project`; how many charges were reversed.
    fn rebase<'a>(
        &'a self,
        project: &'a str,
        floors: Vec<Floor>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<usize, RebaseError>> + Send + 'a>>;
}

/// Why floors were not adopted (the engine's own error, behind the port).
pub type RebaseError = Box<dyn std::error::Error + Send + std::marker::Sync>;

/// Publishes the outbox to Perun.
pub struct Publisher {
    client: PerunClient,
    ledger: Arc<dyn PerunStore>,
    rebaser: Arc<dyn Rebase>,
    leadership: Arc<dyn Leadership>,
    config: SyncConfig,
    groups: Mutex<HashMap<String, (i64, Instant)>>,
    status: Mutex<SyncStatus>,
    login_warned: AtomicBool,
    missing_warned: Mutex<std::collections::HashSet<String>>,
    unset_warned: Mutex<std::collections::HashSet<String>>,
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

impl Publisher {
    /// A publisher over `client` and the ledger's outbox; floors adopted on
    /// first contact go to the engine through `rebaser`; nothing is written
    /// to Perun unless `leadership` says this process leads right then.
    pub fn new(
        client: PerunClient,
        ledger: Arc<dyn PerunStore>,
        rebaser: Arc<dyn Rebase>,
        leadership: Arc<dyn Leadership>,
        config: SyncConfig,
    ) -> Self {
        Publisher {
            client,
            ledger,
            rebaser,
            leadership,
            config,
            groups: Mutex::new(HashMap::new()),
            status: Mutex::new(SyncStatus {
                enabled: true,
                ..SyncStatus::default()
            }),
            login_warned: AtomicBool::new(false),
            missing_warned: Mutex::new(std::collections::HashSet::new()),
            unset_warned: Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// The state for `/stats`.
    pub fn status(&self) -> SyncStatus {
        let mut status = self.status.locked().clone();
        status.calls = self.client.calls();
        status.not_groups = self.missing_warned.locked().len() as u64;
        status.unset_values = self.unset_warned.locked().len() as u64;
        status
    }

    /// Runs forever: publishes what is due, every 1/600 of the interval
    /// (half a second at the default 300 s; a clock sped up for a test
    /// speeds this up with it), at least every 5 ms.
    pub async fn run(self: Arc<Self>) {
        let every = (self.config.interval / 600).clamp(Duration::from_millis(5), PASS_MAX);
        crate::leader::every(every, || self.pass()).await;
    }

    /// One pass over what is due now (nothing while not leading).
    pub async fn pass(self: &Arc<Self>) {
        if !self.leadership.leading() {
            return;
        }
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
        let cached = self.groups.locked().get(project).copied();
        if let Some((id, at)) = cached
            && at.elapsed() < GROUP_TTL
        {
            return Ok(id);
        }
        let id = self.client.group_id(self.config.vo, project).await?;
        self.groups
            .locked()
            .insert(project.to_owned(), (id, Instant::now()));
        Ok(id)
    }

    /// Reads the per-site timestamps the service we replace stored: the
    /// floors below which it billed already.
    async fn floors(&self, group: i64) -> Result<Vec<Floor>, PerunError> {
        let definition = &self.config.timestamps;
        let mut floors = Vec::new();
        for resource in self.client.assigned_resources(group).await? {
            let attributes = self
                .client
                .group_resource_attributes(group, resource, &[definition])
                .await?;
            let stamps = attributes
                .iter()
                .filter(|a| definition.is(a))
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
        let owned = project.to_owned();
        let record = self
            .on_ledger(move |ledger| ledger.perun_record(&owned))
            .await?;
        if record.adopted_at.is_some() {
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
            .map_err(|e| PerunError::Local(e.to_string()))?;
        self.status.locked().adopted += 1;
        tracing::info!(
            project,
            keys = count,
            reversed,
            "adopted the timestamps of the service we replace: points not newer are its own"
        );
        Ok(())
    }

    /// Runs `work` on the ledger off the async threads.
    /// Fails unless this process leads right now: asked before every write
    /// to Perun, so a leader that was frozen or cut off and replaced writes
    /// nothing when it wakes.
    fn leading(&self) -> Result<(), PerunError> {
        if self.leadership.leading() {
            Ok(())
        } else {
            Err(PerunError::Local(
                "not the leader (its lease is not fresh): nothing written".into(),
            ))
        }
    }

    async fn on_ledger<T: Send + 'static>(
        &self,
        work: impl FnOnce(&dyn PerunStore) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, PerunError> {
        let ledger = self.ledger.clone();
        tokio::task::spawn_blocking(move || work(ledger.as_ref()))
            .await
            .map_err(|e| PerunError::Local(e.to_string()))?
            .map_err(|e| PerunError::Local(e.to_string()))
    }

    /// Reads credits used and granted and the maintainers; stores granted
    /// and maintainers; adopts Perun's credits used on first contact and
    /// records a hand edit (see [`super::reconcile`]).
    async fn reconcile(&self, project: &str, group: i64) -> Result<(), PerunError> {
        self.adopt_floors(project, group).await?;
        let config = &self.config;
        let mut wanted = vec![
            &config.credits_current,
            &config.credits_granted,
            &config.emails,
        ];
        wanted.extend(config.ends.as_ref());
        let attributes = self.client.group_attributes(group, &wanted).await?;
        let find = |def: &AttributeDef| attributes.iter().find(|a| def.is(a));
        let current = find(&config.credits_current);
        let reading = Reading::of(current.map(|a| &a.value));
        let granted = match Reading::of(find(&config.credits_granted).map(|a| &a.value)) {
            Reading::Value(granted) => Some(granted),
            Reading::Unset => None,
            Reading::Unreadable(text) => {
                tracing::warn!(
                    project,
                    "ignoring an unreadable {}: {text:?}",
                    config.credits_granted.friendly_name
                );
                None
            }
        };
        let emails: Vec<String> = find(&config.emails)
            .and_then(|a| a.value.as_array())
            .map(|list| {
                list.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let ends_at = config.ends.as_ref().and_then(|def| {
            let value = find(def).map(|a| &a.value);
            let read = end_of(value);
            if let Err(text) = &read {
                tracing::warn!(
                    project,
                    "ignoring an unreadable {} (a date, YYYY-MM-DD, DD.MM.YYYY or RFC 3339, is expected): {text}",
                    def.friendly_name
                );
            }
            read.ok().flatten()
        });
        let modified_at = current.and_then(|a| a.value_modified_at.clone());
        let owned = project.to_owned();
        let record = self
            .on_ledger(move |ledger| {
                ledger.set_contacts(&owned, granted, ends_at, &emails)?;
                ledger.perun_record(&owned)
            })
            .await?;
        let owned = project.to_owned();
        match judge(&reading, &record) {
            Verdict::Ours { landed: None } => {}
            Verdict::Ours { landed: Some(id) } => {
                let forget = now_ns().saturating_sub(IN_FLIGHT.as_nanos() as i64);
                self.on_ledger(move |ledger| ledger.confirm_write(&owned, id, forget))
                    .await?;
            }
            Verdict::Missing => {
                let first = self.unset_warned.locked().insert(project.to_owned());
                if first {
                    tracing::warn!(
                        project,
                        "{} in Perun is unset or unreadable ({reading:?}): not a hand edit; publishing the ledger's value again",
                        config.credits_current.friendly_name
                    );
                }
            }
            Verdict::CannotAdopt(text) => {
                return Err(PerunError::Local(format!(
                    "cannot adopt {} {text:?} from Perun: not a decimal; fix it in Perun (nothing is published until then)",
                    config.credits_current.friendly_name
                )));
            }
            Verdict::Adopt(adjustment, value) | Verdict::HandEdit(adjustment, value) => {
                let at = modified_at.clone();
                self.on_ledger(move |ledger| {
                    ledger.adjust(&owned, adjustment, value, at.as_deref())
                })
                .await?;
                match adjustment.kind {
                    AdjustmentKind::Adopted => {
                        tracing::info!(project, credits = %adjustment.amount, "adopted credits used from Perun")
                    }
                    AdjustmentKind::ManualEdit | AdjustmentKind::Correction => {
                        self.status.locked().hand_edits += 1;
                        tracing::warn!(project, difference = %adjustment.amount, perun = %value, modified_at, "credits used were changed in Perun by hand: recorded as an adjustment, continuing from Perun's value")
                    }
                }
            }
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
                    let mut status = self.status.locked();
                    status.last_success = Some(rfc3339_now());
                    status.published += 1;
                }
                let next = now_ns().saturating_add(self.config.interval.as_nanos() as i64);
                tokio::task::spawn_blocking(move || ledger.synced(&entry, next)).await
            }
            Err(error) => {
                let delay = if error.is_missing_group() {
                    let first = self.missing_warned.locked().insert(project.clone());
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
                    // About 2^attempts s (attempts: the failures before
                    // this one), at most 5 min.
                    let failures = u32::try_from(entry.attempts.max(0)).unwrap_or(u32::MAX);
                    crate::leader::jittered(crate::leader::backoff(
                        failures.saturating_add(1),
                        MAX_BACKOFF,
                    ))
                };
                {
                    let mut status = self.status.locked();
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
        let project = entry.project.clone();
        let Some(publishable) = self
            .on_ledger(move |ledger| ledger.publishable(&project))
            .await?
        else {
            return Ok(());
        };
        let used = round(publishable.used, self.config.precision);
        let current = self
            .config
            .credits_current
            .write(Value::String(used.to_string()));
        let mut writes = Vec::new();
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
            writes.push((resource, stamps));
        }
        // The intent first: if we die once Perun applied a write and before
        // its answer is recorded, the value read back later is still ours.
        let intended: serde_json::Map<String, Value> = writes
            .iter()
            .map(|(resource, stamps)| (resource.to_string(), Value::Object(stamps.clone())))
            .collect();
        let project = entry.project.clone();
        let intended = Value::Object(intended).to_string();
        let intent = self
            .on_ledger(move |ledger| ledger.record_intent(&project, used, &intended))
            .await?;
        if writes.is_empty() {
            self.leading()?;
            self.client
                .set_attributes(group, None, std::slice::from_ref(&current))
                .await?;
        }
        for (resource, stamps) in writes {
            let attributes = [
                current.clone(),
                self.config.timestamps.write(Value::Object(stamps)),
            ];
            self.leading()?;
            self.client
                .set_attributes(group, Some(resource), &attributes)
                .await?;
        }
        let project = entry.project.clone();
        let forget = now_ns().saturating_sub(IN_FLIGHT.as_nanos() as i64);
        if let Err(e) = self
            .on_ledger(move |ledger| ledger.confirm_write(&project, intent, forget))
            .await
        {
            // The intent stays: the value read back is still recognised.
            tracing::error!(
                project = entry.project,
                "cannot record the value written to Perun: {e}"
            );
        }
        Ok(())
    }
}
/// When a project ends, from its end attribute's value: a date
/// (`YYYY-MM-DD` or `DD.MM.YYYY`, the project running through that day,
/// UTC: its end is the next midnight) or an RFC 3339 instant; `Ok(None)`
/// when unset.
pub fn end_of(value: Option<&Value>) -> Result<Option<i64>, UnreadableEnd> {
    let text = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(text)) if text.trim().is_empty() => return Ok(None),
        Some(Value::String(text)) => text.trim(),
        Some(other) => return Err(UnreadableEnd(other.to_string())),
    };
    let unreadable = || UnreadableEnd(text.to_owned());
    if let Ok(instant) = chrono::DateTime::parse_from_rfc3339(text) {
        return instant
            .timestamp_nanos_opt()
            .map(Some)
            .ok_or_else(unreadable);
    }
    let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .or_else(|_| chrono::NaiveDate::parse_from_str(text, "%d.%m.%Y"))
        .map_err(|_| unreadable())?;
    date.succ_opt()
        .and_then(|next| next.and_hms_opt(0, 0, 0))
        .and_then(|midnight| midnight.and_utc().timestamp_nanos_opt())
        .map(Some)
        .ok_or_else(unreadable)
}

/// An end attribute's value that is no date nor instant (the value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnreadableEnd(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_end_is_a_date_or_an_instant() {
        let read = |v: Value| end_of(Some(&v));
        let day = 86_400_000_000_000_i64;
        // 2027-03-31 runs through that day: its end is 2027-04-01T00:00Z.
        let april = chrono::NaiveDate::from_ymd_opt(2027, 4, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .and_then(|t| t.and_utc().timestamp_nanos_opt())
            .unwrap();
        assert_eq!(read(Value::from("2027-03-31")), Ok(Some(april)));
        assert_eq!(read(Value::from(" 31.03.2027 ")), Ok(Some(april)));
        assert_eq!(
            read(Value::from("2027-03-31T00:00:00+00:00")),
            Ok(Some(april - day))
        );
        assert_eq!(read(Value::from("")), Ok(None));
        assert_eq!(end_of(None), Ok(None));
        assert_eq!(read(Value::Null), Ok(None));
        assert_eq!(
            read(Value::from("soon")),
            Err(UnreadableEnd("soon".to_owned()))
        );
        assert!(read(Value::from(5)).is_err());
    }
}
