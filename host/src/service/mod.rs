//! The service, wired: [`Service::start`] builds every part from a
//! [`ServeConfig`] (the policy host and its folder, the ledger, the billing
//! engine or the replica's campaign, Perun, alerts, webhooks, the
//! statements' roll-up, the API) and starts their tasks; [`Service::run`]
//! serves until a shutdown is asked for, then drains billing. The binary's
//! `serve` only parses its flags and calls these, and tests can start the
//! same wiring in their own process.

mod rollup;

pub use rollup::{RollUpStatus, RollUpView};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::alerts::webhook::Deliverer;
use crate::alerts::{AlertLedger, Notifier};
use crate::api::{AppState, LogFilter, router};
use crate::billing::engine::{Engine, Planned, ScheduleChange};
use crate::billing::prices::{LiveSchedule, Schedule};
use crate::config::{LedgerPlace, ServeConfig};
use crate::ledger::replication::Replication;
use crate::ledger::sql::Keepalive;
use crate::ledger::{Floor, Ledger, Store};
use crate::perun::client::PerunClient;
use crate::perun::sync::{Publisher, Rebase, RebaseError};
use crate::policy::PolicyRuntime;
use crate::policy::registry::Registry;
use crate::policy::schedule::wanted_of;
use crate::policy::set::Failure;
use crate::policy::signature::TrustedKeys;
use crate::replica::{AcceptError, Scheduled};
use crate::replica::{Replica, Timing};
use crate::writers::Writers;
use anyhow::Context;

/// An error with its causes, each once ("...: error connecting to server:
/// Connection refused").
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        next = cause.source();
    }
    text
}

/// What to change when binding the service's port is refused: a port below
/// 1024 for a user that is not root (the image's user, under podman).
fn bind_hint(error: &std::io::Error, port: u16) -> &'static str {
    if error.kind() == std::io::ErrorKind::PermissionDenied && port < 1024 {
        " (a port below 1024 needs root, or net.ipv4.ip_unprivileged_port_start at or \
         below it: docker sets it to 0 in containers, podman with \
         `--sysctl net.ipv4.ip_unprivileged_port_start=0`; or set CREDITS_PORT to 1024 \
         or above)"
    } else {
        ""
    }
}

/// How long a replica waits at start for a PostgreSQL ledger it cannot
/// reach yet before it gives up with the error.
const DATABASE_WAIT: Duration = Duration::from_secs(60);

/// How long shutdown may take before the process exits anyway.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(10);

/// How a service stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every queued write was billed and committed.
    Cleanly,
    /// Draining billing took longer than its limit.
    TimedOut,
}

/// The running service: every task started, the listener bound.
pub struct Service {
    listener: tokio::net::TcpListener,
    app: axum::Router,
    replica: Arc<Replica>,
}

impl Service {
    /// Builds the service from `config` and starts its tasks on the
    /// current tokio runtime (with `workers` threads, as `/stats` shows);
    /// binds its address but serves nothing until [`Service::run`].
    pub async fn start(
        config: ServeConfig,
        workers: usize,
        log_filter: LogFilter,
    ) -> anyhow::Result<Service> {
        start(config, workers, log_filter).await
    }

    /// The address it listens on (the port chosen when it asked for 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then stops taking connections
    /// and drains the billing queue (within a limit).
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<Stopped> {
        axum::serve(self.listener, self.app)
            .with_graceful_shutdown(shutdown)
            .await?;
        tracing::info!("draining the billing queue");
        let engine = self.replica.engine();
        let drained = tokio::time::timeout(
            SHUTDOWN_LIMIT,
            tokio::task::spawn_blocking(move || {
                if let Some(engine) = engine {
                    engine.shutdown();
                }
            }),
        )
        .await;
        match drained {
            Ok(_) => {
                tracing::info!("stopped cleanly");
                Ok(Stopped::Cleanly)
            }
            Err(_) => {
                tracing::error!("shutdown took longer than {SHUTDOWN_LIMIT:?}; exiting");
                Ok(Stopped::TimedOut)
            }
        }
    }
}

/// The worker threads `config` asks for (0: one per core).
pub fn workers(config: &ServeConfig) -> usize {
    match config.workers {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    }
}

async fn start(
    config: ServeConfig,
    workers: usize,
    log_filter: LogFilter,
) -> anyhow::Result<Service> {
    let address = config.address()?;
    let mut policy_runtime = PolicyRuntime::new(config.limits())?;
    let trusted = config.policy_trusted_keys.trim();
    if !trusted.is_empty() {
        let keys = TrustedKeys::load(std::path::Path::new(trusted))
            .map_err(|e| anyhow::anyhow!("OS_CREDITS_POLICY_TRUSTED_KEYS: {e}"))?;
        tracing::info!(
            keys = keys.len(),
            file = trusted,
            "policy modules need a signature by a trusted key (MODULE.wasm.sig)"
        );
        policy_runtime.require_signatures(keys);
    }
    // Compiled policies, so that a restart activates without compiling.
    let cache_dir = config.ledger.data_dir.path.join("policy-cache");
    if let Err(e) = policy_runtime.use_cache(&cache_dir) {
        tracing::warn!(
            dir = %cache_dir.display(),
            "no compile cache (every start compiles the policies): {e}"
        );
    }
    let policy_runtime = Arc::new(policy_runtime);
    let registry = Arc::new(Registry::open(policy_runtime.clone(), &config.policy_dir)?);
    for active in registry.policies().load().active() {
        let info = active.policy.info();
        tracing::info!(
            site = %active.site, file = %active.file, policy = %info.name,
            version = %info.version, sha256 = %info.sha256, cached = info.activation.cached,
            compile_ms = info.activation.compile_ms, ms = info.activation.total_ms, "policy active"
        );
    }
    registry.watch().with_context(|| {
        format!(
            "cannot watch the policy folder {}",
            config.policy_dir.display()
        )
    })?;
    let writers = Arc::new(write_credentials(&config)?);
    writers
        .watch()
        .context("cannot watch the write credential files")?;
    // The store: SQLite in the data folder, or PostgreSQL (replicas).
    let postgres = match config.ledger.place()? {
        LedgerPlace::Sqlite(_) => None,
        LedgerPlace::Postgres(url) => {
            // The synchronous client: never on an async thread. Every
            // session of this process carries one name: a follower that
            // deposes it as a hung leader ends all of them.
            let url = url.to_owned();
            let session = session_name();
            let store = tokio::task::spawn_blocking(move || {
                let keepalive = Keepalive::default();
                let deadline = Instant::now() + DATABASE_WAIT;
                loop {
                    let opened = Store::postgres(&url, keepalive, &session).and_then(|store| {
                        Replication::open(Arc::new(store), &url, keepalive, &session)
                    });
                    match opened {
                        // Started beside its database (a compose stack, a
                        // host booting): wait for it, not a restart loop.
                        Err(error) if error.is_unreachable() && Instant::now() < deadline => {
                            let error = causes(&error);
                            tracing::warn!(%error, "waiting for PostgreSQL");
                            std::thread::sleep(Duration::from_secs(1));
                        }
                        other => break other,
                    }
                }
            })
            .await?
            .context("cannot open the PostgreSQL ledger")?;
            Some(Arc::new(store))
        }
    };
    let ledger: Arc<dyn Ledger> = match &postgres {
        Some(replication) => replication.store().clone(),
        None => Arc::new(
            Store::sqlite(&config.ledger.data_dir.path, config.durability()).with_context(
                || {
                    format!(
                        "cannot open the ledger in {}",
                        config.ledger.data_dir.path.display()
                    )
                },
            )?,
        ),
    };
    let whitelist = config.whitelist();
    if let Some(projects) = &whitelist {
        tracing::info!("billing only the {} whitelisted projects", projects.len());
    }
    let options = crate::billing::engine::Options {
        whitelist,
        max_keys: config.max_keys,
        future_tolerance: Some(Duration::from_secs(config.future_tolerance_seconds)),
    };
    let remote_write = config.remote_write()?;
    // The price schedule lives in the ledger; this folder's modules go
    // there too, so that whichever replica bills can load them.
    let prices = Arc::new(LiveSchedule::new(policy_runtime.clone(), ledger.clone()));
    {
        let (prices, folder) = (prices.clone(), registry.policies().load_full());
        prices.offer(&folder);
        tokio::task::spawn_blocking(move || prices.store_modules(&folder))
            .await?
            .context("cannot keep the policy modules in the ledger")?;
    }
    let replica = match &postgres {
        None => {
            let engine = Arc::new(Engine::start(
                ledger.clone(),
                prices.clone(),
                options.clone(),
            )?);
            // A lone service adopts its folder at start: what changed
            // while it was stopped takes effect now.
            let first = prices.current().is_empty();
            let origin = if first { "folder" } else { "folder at start" };
            let answer = engine.schedule(folder_change(&registry, origin));
            scheduled(planned(answer.await), &registry);
            Arc::new(Replica::single(engine))
        }
        Some(store) => {
            let name = config.replica_name();
            tracing::info!(replica = %name, "replica on PostgreSQL: following until the leader's lock is free");
            Arc::new(Replica::replicated(
                &name,
                store.clone(),
                remote_write.labels.clone(),
                remote_write.max_decompressed,
                Timing {
                    check: Duration::from_secs_f64(config.leader_check_seconds.max(0.1)),
                    lease: Duration::from_secs_f64(config.lease_seconds.max(1.0)),
                },
            ))
        }
    };
    let perun = match config.perun()? {
        Some((sync_config, login, password)) => {
            let client = PerunClient::new(
                &config.perun_url,
                login,
                password,
                Duration::from_secs(config.perun_timeout),
            )?;
            let sync = Arc::new(Publisher::new(
                client,
                ledger.clone(),
                Arc::new(EngineFloors(replica.clone())),
                replica.leadership(),
                sync_config,
            ));
            tracing::info!(url = %config.perun_url, "publishing credits to Perun (while leading)");
            Some(sync)
        }
        None => {
            tracing::warn!(
                "Perun sync is off (set OS_CREDITS_PERUN_LOGIN, OS_CREDITS_PERUN_PASSWORD and OS_CREDITS_PERUN_VO_ID): credits are billed into the ledger only"
            );
            None
        }
    };
    let webhooks = match config.webhook()? {
        Some(webhook) => {
            let url = webhook.url.clone();
            let deliverer = Deliverer::new(ledger.clone(), replica.leadership(), webhook)?;
            tracing::info!(%url, "webhooks on (while leading)");
            Some(Arc::new(deliverer))
        }
        None => None,
    };
    let notifier = match config.alerts()? {
        Some(alerts) => {
            let server = alerts
                .mail
                .as_ref()
                .map(|mail| format!("{}:{}", mail.server, mail.port));
            let alert_ledger = AlertLedger {
                notifications: ledger.clone(),
                forecasts: ledger.clone(),
                webhooks: ledger.clone(),
            };
            let notifier = Arc::new(
                Notifier::new(alert_ledger, replica.leadership(), alerts).with_context(|| {
                    format!(
                        "cannot set up SMTP to {}",
                        server.clone().unwrap_or_default()
                    )
                })?,
            );
            match server {
                Some(server) => tracing::info!(%server, "alert mails on (while leading)"),
                None => tracing::info!(
                    "alert mails are off (set MAIL_SMTP_SERVER to send them); alerts go to the webhook"
                ),
            }
            Some(notifier)
        }
        None => {
            tracing::info!(
                "alerts are off (set MAIL_SMTP_SERVER or OS_CREDITS_WEBHOOK_URL to raise them)"
            );
            None
        }
    };
    // The leader's tasks: the Perun sync, the alerts, the webhooks.
    let leader_tasks = {
        let (perun, notifier, webhooks) = (perun.clone(), notifier.clone(), webhooks.clone());
        move |handle: &tokio::runtime::Handle| {
            if let Some(sync) = perun {
                handle.spawn(sync.run());
            }
            if let Some(notifier) = notifier {
                handle.spawn(notifier.run());
            }
            if let Some(webhooks) = webhooks {
                handle.spawn(webhooks.run());
            }
        }
    };
    match &postgres {
        None => leader_tasks(&tokio::runtime::Handle::current()),
        Some(store) => {
            let (store, leading_prices, leading_registry, handle) = (
                store.store().clone(),
                prices.clone(),
                registry.clone(),
                tokio::runtime::Handle::current(),
            );
            let lead = move || -> anyhow::Result<Arc<Engine>> {
                let (prices, registry) = (leading_prices, leading_registry);
                let engine = Arc::new(Engine::start(store, prices.clone(), options)?);
                let schedule = prices.current();
                if schedule.is_empty() {
                    // The first leader of a new ledger gives it its
                    // schedule: this folder, from the beginning of time.
                    let answer = engine.schedule(folder_change(&registry, "folder"));
                    handle.spawn(async move { scheduled(planned(answer.await), &registry) });
                } else {
                    // Any other folder changes nothing by becoming leader.
                    report_differences(&schedule, &registry);
                }
                leader_tasks(&handle);
                Ok(engine)
            };
            tokio::spawn(replica.clone().campaign(lead));
            // A follower keeps its copy of the schedule (for the API and
            // for when it leads) from the ledger, and says when its own
            // folder differs.
            let (prices, registry, replica) = (prices.clone(), registry.clone(), replica.clone());
            let every = Duration::from_secs_f64(config.leader_check_seconds.max(0.1));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    if replica.is_leader() {
                        continue;
                    }
                    let refresh = prices.clone();
                    match tokio::task::spawn_blocking(move || refresh.refresh()).await {
                        Ok(Ok(true)) => report_differences(&prices.current(), &registry),
                        Ok(Ok(false)) => {}
                        Ok(Err(e)) => tracing::warn!("cannot read the price schedule: {e}"),
                        Err(e) => tracing::error!("{e}"),
                    }
                }
            });
        }
    }
    // A change of the folder becomes a schedule change, for all replicas.
    {
        let (prices, replica, weak) = (prices.clone(), replica.clone(), Arc::downgrade(&registry));
        let handle = tokio::runtime::Handle::current();
        registry.on_change(Box::new(move |folder| {
            if let Err(e) = prices.store_modules(&folder) {
                tracing::error!(
                    "folder change not scheduled: cannot keep its modules in the ledger: {e}"
                );
                return;
            }
            let now = crate::time::now_ns();
            let change = ScheduleChange {
                wanted: wanted_of(&folder, "folder", now),
                complete: true,
            };
            let (replica, weak) = (replica.clone(), weak.clone());
            handle.spawn(async move {
                let answer = replica.schedule(change).await;
                if let Some(registry) = weak.upgrade() {
                    scheduled(answer, &registry);
                }
            });
        }));
    }
    let roll_up = Arc::new(RollUpStatus::default());
    rollup::roll_up_days(
        ledger.clone(),
        prices.clone(),
        webhooks.is_some(),
        roll_up.clone(),
    );
    let state = AppState {
        replica: replica.clone(),
        corrections: ledger.clone(),
        forecasts: ledger.clone(),
        applying: Default::default(),
        roll_up,
        ledger,
        schedule: prices.live(),
        prices: prices.clone(),
        registry,
        perun,
        notifier,
        webhooks,
        forecast_window_hours: config.forecast_window_hours,
        log_filter,
        api_key: config.api_key.clone().filter(|k| !k.is_empty()),
        precision: config.precision,
        started: Instant::now(),
        workers,
        remote_write,
        writers,
    };
    let app = router(state, config.max_body_bytes());
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|error| {
            let hint = bind_hint(&error, address.port());
            anyhow::Error::new(error).context(format!("cannot listen on {address}{hint}"))
        })?;
    tracing::info!("listening on {}", listener.local_addr()?);
    Ok(Service {
        listener,
        app,
        replica,
    })
}

/// The whole policy folder as a schedule change.
fn folder_change(registry: &Registry, origin: &str) -> ScheduleChange {
    let now = crate::time::now_ns();
    ScheduleChange {
        wanted: wanted_of(&registry.policies().load(), origin, now),
        complete: true,
    }
}

/// The engine's answer to a schedule change, as a replica gives it.
fn planned(answer: Planned) -> Result<Scheduled, AcceptError> {
    Ok(Scheduled::Planned(answer?))
}

/// Logs what a schedule change did; refusals are kept as the folder's
/// failures (shown by `/api/policies` and `/stats`).
fn scheduled(answer: Result<Scheduled, AcceptError>, registry: &Registry) {
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let failure = |error: String| Failure {
        site: "schedule".into(),
        file: "policies.toml".into(),
        sha256: String::new(),
        error,
        at: at.clone(),
    };
    match answer {
        Ok(Scheduled::Planned(plan)) => {
            for why in &plan.refused {
                tracing::error!("price schedule change refused: {why}");
            }
            registry.report(plan.refused.into_iter().map(failure).collect());
        }
        Err(why) => {
            tracing::error!("price schedule change not stored: {why}");
            registry.report(vec![failure(format!("not stored: {why}"))]);
        }
        // The leader plans it and reports what it refused.
        Ok(Scheduled::Stored) => {}
    }
}

/// Logs how this replica's folder differs from the schedule in force.
fn report_differences(schedule: &Schedule, registry: &Registry) {
    let now = crate::time::now_ns();
    for difference in schedule.differences(&registry.policies().load(), now) {
        tracing::warn!(
            "this replica's policy folder differs from the price schedule (which prices): {difference}"
        );
    }
}

/// This process's PostgreSQL sessions' name (`application_name`): unique
/// per process, so that deposing it ends its sessions and no other's.
fn session_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("os-credits {} {nanos:08x}", std::process::id())
}

/// The Perun sync's port for adopted floors, wired to the billing engine
/// of this replica (perun knows nothing of billing).
struct EngineFloors(Arc<Replica>);

impl Rebase for EngineFloors {
    fn rebase<'a>(
        &'a self,
        project: &'a str,
        floors: Vec<Floor>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<usize, RebaseError>> + Send + 'a>>
    {
        Box::pin(async move {
            match self.0.engine() {
                Some(engine) => Ok(engine.rebaser().rebase(project, floors).await?),
                None => Err("not the leader".into()),
            }
        })
    }
}

/// Who may write measurements: the credential files, read now (a file
/// that does not read stops the start) and watched; none: open, with a
/// warning.
fn write_credentials(config: &ServeConfig) -> anyhow::Result<Writers> {
    // An empty setting (as `.default.env` lists them) is no file.
    let named = |path: &Option<String>| {
        path.as_deref()
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(std::path::PathBuf::from)
    };
    let (users, tokens) = (
        named(&config.write_users_file),
        named(&config.write_tokens_file),
    );
    if users.is_none() && tokens.is_none() {
        tracing::warn!(
            "writes are open: anyone who reaches /write or /api/v1/write can bill any project (set OS_CREDITS_WRITE_USERS_FILE or OS_CREDITS_WRITE_TOKENS_FILE)"
        );
        return Ok(Writers::open_to_all());
    }
    let writers = Writers::open(users, tokens).context("cannot read the write credentials")?;
    let view = writers.view();
    tracing::info!(
        users = view.users,
        tokens = view.tokens,
        "writes require a credential"
    );
    Ok(writers)
}
