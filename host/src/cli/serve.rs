//! `os-credits serve`: the billing service.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use os_credits::api::{AppState, LogFilter, router};
use os_credits::billing::engine::Engine;
use os_credits::config::ServeConfig;
use os_credits::ledger::replication::Replication;
use os_credits::ledger::sql::Keepalive;
use os_credits::ledger::{Floor, Ledger, Store};
use os_credits::notify::Notifier;
use os_credits::perun::client::PerunClient;
use os_credits::perun::sync::{Publisher, Rebase};
use os_credits::policy::PolicyRuntime;
use os_credits::policy::registry::Registry;
use os_credits::policy::signature::TrustedKeys;
use os_credits::replica::{Replica, Timing};

/// How long shutdown may take before the process exits anyway.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(10);

pub fn serve(config: ServeConfig, log_filter: LogFilter) -> anyhow::Result<ExitCode> {
    let workers = match config.workers {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(config, workers, log_filter))
}

async fn run(
    config: ServeConfig,
    workers: usize,
    log_filter: LogFilter,
) -> anyhow::Result<ExitCode> {
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
    let registry = Arc::new(Registry::open(policy_runtime, &config.policy_dir)?);
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
    let policies = registry.policies();
    // The store: SQLite in the data folder, or PostgreSQL (replicas).
    let postgres = match config.ledger.database_url.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            // The synchronous client: never on an async thread. Every
            // session of this process carries one name: a follower that
            // deposes it as a hung leader ends all of them.
            let url = url.to_owned();
            let session = session_name();
            let store = tokio::task::spawn_blocking(move || {
                let keepalive = Keepalive::default();
                let store = Arc::new(Store::postgres(&url, keepalive, &session)?);
                Replication::open(store, &url, keepalive, &session)
            })
            .await?
            .context("cannot open the PostgreSQL ledger")?;
            Some(Arc::new(store))
        }
        Some(other) => anyhow::bail!(
            "OS_CREDITS_DATABASE_URL {:?} is not a postgres:// URL (leave it unset for SQLite in the data folder)",
            other.split('@').next_back().unwrap_or_default()
        ),
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
    let options = os_credits::billing::engine::Options {
        whitelist,
        max_keys: config.max_keys,
        future_tolerance: Some(Duration::from_secs(config.future_tolerance_seconds)),
    };
    let remote_write = config.remote_write()?;
    let replica = match &postgres {
        None => Arc::new(Replica::single(Arc::new(Engine::start(
            ledger.clone(),
            policies.clone(),
            options.clone(),
        )?))),
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
    let notifier = match config.mail()? {
        Some(mail) => {
            let server = format!("{}:{}", mail.server, mail.port);
            let notifier = Arc::new(
                Notifier::new(ledger.clone(), replica.leadership(), mail)
                    .with_context(|| format!("cannot set up SMTP to {server}"))?,
            );
            tracing::info!(%server, "threshold mails on (while leading)");
            Some(notifier)
        }
        None => {
            tracing::info!("threshold mails are off (set MAIL_SMTP_SERVER to send them)");
            None
        }
    };
    // The leader's tasks: the Perun sync and the mails.
    let leader_tasks = {
        let (perun, notifier) = (perun.clone(), notifier.clone());
        move |handle: &tokio::runtime::Handle| {
            if let Some(sync) = perun {
                handle.spawn(sync.run());
            }
            if let Some(notifier) = notifier {
                handle.spawn(notifier.run());
            }
        }
    };
    match &postgres {
        None => leader_tasks(&tokio::runtime::Handle::current()),
        Some(store) => {
            let (store, policies, handle) = (
                store.store().clone(),
                policies.clone(),
                tokio::runtime::Handle::current(),
            );
            let lead = move || -> anyhow::Result<Arc<Engine>> {
                let engine = Arc::new(Engine::start(store, policies, options)?);
                leader_tasks(&handle);
                Ok(engine)
            };
            tokio::spawn(replica.clone().campaign(lead));
        }
    }
    let state = AppState {
        replica: replica.clone(),
        ledger,
        policies,
        registry,
        perun,
        notifier,
        log_filter,
        api_key: config.api_key.clone().filter(|k| !k.is_empty()),
        precision: config.precision,
        started: Instant::now(),
        workers,
        remote_write,
    };
    let app = router(state, config.max_body_bytes());
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    tracing::info!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!("draining the billing queue");
    let engine = replica.engine();
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
            Ok(ExitCode::SUCCESS)
        }
        Err(_) => {
            tracing::error!("shutdown took longer than {SHUTDOWN_LIMIT:?}; exiting");
            Ok(ExitCode::FAILURE)
        }
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
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<usize, String>> + Send + 'a>>
    {
        Box::pin(async move {
            match self.0.engine() {
                Some(engine) => engine.rebaser().rebase(project, floors).await,
                None => Err("not the leader".into()),
            }
        })
    }
}

/// SIGTERM (docker stop) or Ctrl-C.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: no new connections");
}
