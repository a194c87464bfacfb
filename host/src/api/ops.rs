//! `GET /ping` and `GET /stats`.

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};

use super::AppState;

pub async fn ping() -> &'static str {
    "Pong"
}

/// `3d 4h 5m 6s`.
fn human(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m {s}s"),
        _ => format!("{d}d {h}h {m}m {s}s"),
    }
}

/// `?verbose=true` adds the queue, the runtime's worker threads and the billing thread.
#[derive(Debug, Default, serde::Deserialize)]
pub struct StatsQuery {
    #[serde(default)]
    verbose: bool,
}

/// Per worker thread of the async runtime: busy time and parks.
fn runtime_detail() -> serde_json::Value {
    let metrics = tokio::runtime::Handle::current().metrics();
    let workers: Vec<_> = (0..metrics.num_workers())
        .map(|worker| {
            serde_json::json!({
                "worker": worker,
                "busy_seconds": metrics.worker_total_busy_duration(worker).as_secs_f64(),
                "parks": metrics.worker_park_count(worker),
            })
        })
        .collect();
    serde_json::json!({
        "workers": workers,
        "alive_tasks": metrics.num_alive_tasks(),
        "global_queue_depth": metrics.global_queue_depth(),
    })
}

pub async fn stats(State(app): State<AppState>, Query(query): Query<StatsQuery>) -> Response {
    let counts = match super::counts(&app).await {
        Ok(counts) => counts,
        Err(response) => return response,
    };
    let engine = app.replica.engine().map(|e| e.stats()).unwrap_or_default();
    let queue_size = app.replica.engine().map_or(0, |e| e.queue_size());
    let replica = app.replica.status().await;
    let uptime = app.started.elapsed().as_secs();
    let now = crate::time::now_ns();
    let active: Vec<_> = app
        .schedule
        .load()
        .at(now)
        .into_iter()
        .filter_map(|(site, version)| {
            let info = version.module()?.info();
            Some(serde_json::json!({
                "site": site, "file": version.entry.file, "name": info.name,
                "version": info.version, "sha256": info.sha256,
                "schedule_entry": version.entry.id,
            }))
        })
        .collect();
    let differences = app
        .schedule
        .load()
        .differences(&app.registry.policies().load(), now);
    let mut stats = serde_json::json!({
        "uptime": human(uptime),
        "uptime_seconds": uptime,
        "workers": app.workers,
        "queue_size": queue_size,
        "role": replica.role,
        "inbox_depth": replica.inbox_depth,
        "lock_checked_seconds_ago": replica.lock_checked_seconds_ago,
        "lease": replica.lease,
        "lease_timeout_seconds": replica.lease_timeout_seconds,
        "projects": counts.projects,
        "keys": counts.keys,
        "charges": counts.charges,
        "outbox": counts.outbox,
        "pending_projects": counts.outbox,
        "writes": engine.writes,
        "commits": engine.commits,
        "failed_commits": engine.failed_commits,
        "ledger": {
            "failing": engine.ledger_failing,
            "last_error": engine.last_ledger_error.as_ref().map(|(e, _)| e),
            "last_error_at": engine.last_ledger_error.as_ref().map(|(_, at)| at),
        },
        "points": {
            "received": engine.seen.lines,
            "billed": engine.seen.billed,
            "rejected": engine.seen.rejected_count,
            "ignored": engine.seen.ignored,
        },
        "policies": active,
        "policy_errors": app.registry.failures(),
        "policy_folder": {
            "matches_schedule": differences.is_empty(),
            "differences": differences,
        },
        "write_credentials": app.writers.view(),
        "perun": app.perun.as_ref().map(|p| p.status()).unwrap_or_default(),
        "mail": app.notifier.as_ref().map(|n| n.status()).unwrap_or_default(),
        "webhooks": app.webhooks.as_ref().map(|w| w.status()).unwrap_or_default(),
        "statements": app.roll_up.view(),
    });
    if query.verbose {
        stats["queue"] = serde_json::json!({
            "depth": queue_size,
            "writes_committed": engine.writes,
            "transactions": engine.commits,
            "writes_per_transaction": if engine.commits == 0 { 0.0 } else { engine.writes as f64 / engine.commits as f64 },
            "failed_transactions": engine.failed_commits,
            "keys": engine.keys,
            "oldest_unpublished": counts.oldest_outbox.map(|ns| {
                chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            }),
        });
        stats["runtime"] = runtime_detail();
        stats["billing_thread"] = serde_json::json!({
            "writes": engine.writes,
            "points": engine.seen.lines,
            "rejected": engine.seen.rejected,
            "policy_errors": engine.seen.policy_errors,
        });
    }
    Json(stats).into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn uptime_reads_like_a_person_would_write_it() {
        assert_eq!(super::human(5), "5s");
        assert_eq!(super::human(65), "1m 5s");
        assert_eq!(super::human(3 * 3600 + 5), "3h 0m 5s");
        assert_eq!(super::human(2 * 86_400 + 61), "2d 0h 1m 1s");
    }
}
