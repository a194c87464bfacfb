//! `GET /metrics`: Prometheus text exposition (OpenMetrics), built at each
//! scrape from the counters the engine, the sync and the notifier keep.
//! (prometheus-client ends every help text with a period itself.)

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{AppState, error};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Denial {
    endpoint: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Project {
    project: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Refusal {
    writer: String,
    reason: String,
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let metric = Counter::<u64>::default();
    metric.inc_by(value);
    registry.register(name, help, metric);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let metric = Gauge::<i64>::default();
    metric.set(value);
    registry.register(name, help, metric);
}

fn gauge_f64(registry: &mut Registry, name: &str, help: &str, value: f64) {
    let metric = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    metric.set(value);
    registry.register(name, help, metric);
}

pub async fn metrics(State(app): State<AppState>) -> Response {
    let counts = match super::counts(&app).await {
        Ok(counts) => counts,
        Err(response) => return response,
    };
    let engine = app.replica.engine().map(|e| e.stats()).unwrap_or_default();
    let queue_size = app.replica.engine().map_or(0, |e| e.queue_size());
    let replica = app.replica.status().await;
    let seen = &engine.seen;
    let mut registry = Registry::with_prefix("os_credits");
    counter(
        &mut registry,
        "points_received",
        "Points received on /write",
        seen.lines as u64,
    );
    counter(
        &mut registry,
        "points_applied",
        "Points that were charged",
        seen.billed as u64,
    );
    let ignored = Family::<Reason, Counter>::default();
    for (reason, count) in &seen.ignored {
        ignored
            .get_or_create(&Reason {
                reason: (*reason).to_owned(),
            })
            .inc_by(*count as u64);
    }
    registry.register(
        "points_ignored",
        "Points that charged nothing, by reason",
        ignored,
    );
    counter(
        &mut registry,
        "points_rejected",
        "Broken or unusable lines",
        seen.rejected_count as u64,
    );
    counter(
        &mut registry,
        "charges",
        "Charges recorded in the ledger",
        counts.charges,
    );
    counter(
        &mut registry,
        "policy_errors",
        "Steps a policy failed to price (billed with the key's next point)",
        seen.ignored
            .get(crate::billing::book::POLICY_ERROR)
            .copied()
            .unwrap_or_default() as u64,
    );
    registry.register(
        "policy_call_seconds",
        "Duration of one pricing call into a policy (a batch of up to 256 steps)",
        crate::policy::call_latency().clone(),
    );
    counter(
        &mut registry,
        "policy_load_failures",
        "Policy modules refused at (re)load and not active",
        app.registry.failures().len() as u64,
    );
    let schedule = app.schedule.load();
    let now = crate::time::now_ns();
    gauge(
        &mut registry,
        "policy_folder_differences",
        "How many sites or changes this replica's policy folder has other than the price schedule (0: it matches)",
        schedule
            .differences(&app.registry.policies().load(), now)
            .len() as i64,
    );
    gauge(
        &mut registry,
        "policy_schedule_entries",
        "Entries of the price schedule (kept in the ledger)",
        schedule.entries().len() as i64,
    );
    gauge(
        &mut registry,
        "write_credentials_required",
        "Whether /write and /api/v1/write require a credential (1) or are open (0)",
        i64::from(app.writers.required()),
    );
    let denied = Family::<Denial, Counter>::default();
    for (endpoint, why, count) in app.writers.denied() {
        denied
            .get_or_create(&Denial {
                endpoint: endpoint.to_owned(),
                reason: why.as_str().to_owned(),
            })
            .inc_by(count);
    }
    registry.register(
        "write_auth_failures",
        "Write requests refused with 401, by endpoint and reason (missing or wrong credential)",
        denied,
    );
    let refused = Family::<Refusal, Counter>::default();
    for (writer, reason, count) in app.writers.refused() {
        refused
            .get_or_create(&Refusal {
                writer,
                reason: reason.to_owned(),
            })
            .inc_by(count);
    }
    registry.register(
        "write_points_refused",
        "Points a writer sent and may not bill, by writer and reason",
        refused,
    );
    gauge(
        &mut registry,
        "queue_depth",
        "Writes waiting for the billing thread",
        queue_size as i64,
    );
    counter(
        &mut registry,
        "commits",
        "Ledger transactions committed",
        engine.commits,
    );
    counter(
        &mut registry,
        "failed_commits",
        "Ledger transactions that failed",
        engine.failed_commits,
    );
    gauge(
        &mut registry,
        "leader",
        "1 while this replica bills (holds the leader's lock; always with SQLite)",
        i64::from(replica.role == "leader"),
    );
    gauge(
        &mut registry,
        "inbox_depth",
        "Writes stored by replicas, waiting for the leader to bill them",
        replica.inbox_depth.unwrap_or(0) as i64,
    );
    gauge(
        &mut registry,
        "lock_check_age_seconds",
        "Seconds since the leader's lock was last checked (replicated ledgers)",
        replica.lock_checked_seconds_ago.unwrap_or(0.0) as i64,
    );
    if let Some(lease) = &replica.lease {
        gauge_f64(
            &mut registry,
            "lease_age_seconds",
            "Seconds since the leader last renewed its lease, on the database's clock (replicated ledgers; replaced past the lease timeout)",
            lease.age_ms as f64 / 1000.0,
        );
        gauge(
            &mut registry,
            "lease_epoch",
            "The leader's epoch: bumped by every new leader (replicated ledgers)",
            lease.epoch,
        );
    }
    gauge(
        &mut registry,
        "ledger_failing",
        "1 while the ledger cannot commit (disk full, read-only, I/O error): writes are answered 500",
        i64::from(engine.ledger_failing),
    );
    gauge(
        &mut registry,
        "keys",
        "Keys (project, site, metric) in the book",
        engine.keys as i64,
    );
    gauge(
        &mut registry,
        "perun_pending_projects",
        "Projects waiting to be published to Perun",
        counts.outbox as i64,
    );
    let lag = counts.oldest_outbox.map_or(0, |since| {
        let now = crate::time::now_ns();
        now.saturating_sub(since) / 1_000_000_000
    });
    gauge(
        &mut registry,
        "perun_sync_lag_seconds",
        "How long the longest-waiting project has waited to be published",
        lag,
    );
    let perun = app.perun.as_ref().map(|p| p.status()).unwrap_or_default();
    counter(
        &mut registry,
        "perun_calls",
        "Perun RPC calls made",
        perun.calls,
    );
    counter(
        &mut registry,
        "perun_published",
        "Projects published to Perun",
        perun.published,
    );
    counter(
        &mut registry,
        "perun_errors",
        "Failed attempts to publish to Perun",
        perun.errors,
    );
    counter(
        &mut registry,
        "perun_hand_edits",
        "Values changed in Perun by hand, recorded as adjustments",
        perun.hand_edits,
    );
    gauge(
        &mut registry,
        "perun_not_groups",
        "Projects that are not a Perun group (kept pending)",
        perun.not_groups as i64,
    );
    let mail = app
        .notifier
        .as_ref()
        .map(|n| n.status())
        .unwrap_or_default();
    counter(
        &mut registry,
        "mails_sent",
        "Threshold mails the SMTP server accepted",
        mail.sent,
    );
    counter(
        &mut registry,
        "mails_failed",
        "Alert mails that failed (retried later)",
        mail.failed,
    );
    counter(
        &mut registry,
        "alerts",
        "Alerts raised (threshold crossings and run-out warnings; mailed or queued for the webhook)",
        mail.alerts,
    );
    counter(
        &mut registry,
        "runout_warnings",
        "Run-out warnings raised",
        mail.runout_warnings,
    );
    let hooks = app
        .webhooks
        .as_ref()
        .map(|w| w.status())
        .unwrap_or_default();
    counter(
        &mut registry,
        "webhooks_delivered",
        "Webhook events the receiver took (2xx)",
        hooks.delivered,
    );
    counter(
        &mut registry,
        "webhooks_failed",
        "Webhook deliveries that failed (retried later under the same id)",
        hooks.failed,
    );
    gauge(
        &mut registry,
        "webhooks_queued",
        "Webhook events not delivered yet",
        hooks.queued as i64,
    );
    gauge(
        &mut registry,
        "webhooks_retrying",
        "Webhook events not delivered yet that failed at least once",
        hooks.retrying as i64,
    );
    let hours = app.forecast_window_hours;
    let ledger = app.forecasts.clone();
    let paces = super::blocking(move || ledger.paces(crate::forecast::window_ns(hours))).await;
    let runout = Family::<Project, Gauge<i64>>::default();
    match paces {
        Ok(Ok(paces)) => {
            for pace in &paces {
                let forecast = crate::forecast::Forecast::of(pace, hours);
                if let Some(at) = forecast.runs_out_at {
                    runout
                        .get_or_create(&Project {
                            project: forecast.project,
                        })
                        .set(at.div_euclid(1_000_000_000));
                }
            }
        }
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(response) => return response,
    }
    registry.register(
        "runout_timestamp_seconds",
        "When each project's credits run out at the pace of the forecast window (Unix time), for projects with one",
        runout,
    );
    gauge(
        &mut registry,
        "uptime_seconds",
        "Seconds since the service started",
        app.started.elapsed().as_secs() as i64,
    );
    let mut text = String::new();
    if let Err(e) = encode(&mut text, &registry) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
