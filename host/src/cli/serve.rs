//! `os-credits serve`: the billing service.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use os_credits::api::{AppState, LogFilter, router};
use os_credits::billing::engine::{Engine, Rebaser};
use os_credits::config::ServeConfig;
use os_credits::ledger::sqlite::SqliteLedger;
use os_credits::ledger::{Floor, Ledger};
use os_credits::notify::Notifier;
use os_credits::perun::client::PerunClient;
use os_credits::perun::sync::{Publisher, Rebase};
use os_credits::policy::PolicyRuntime;
use os_credits::policy::registry::Registry;

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
    let policy_runtime = PolicyRuntime::new(config.limits())?;
    let registry = Arc::new(Registry::open(policy_runtime, &config.policy_dir)?);
    for active in registry.policies().load().active() {
        let info = active.policy.info();
        tracing::info!(
            site = %active.site, file = %active.file, policy = %info.name,
            version = %info.version, sha256 = %info.sha256, "policy active"
        );
    }
    registry.watch().with_context(|| {
        format!(
            "cannot watch the policy folder {}",
            config.policy_dir.display()
        )
    })?;
    let policies = registry.policies();
    let ledger: Arc<dyn Ledger> = Arc::new(
        SqliteLedger::open(&config.data_dir, config.durability())
            .with_context(|| format!("cannot open the ledger in {}", config.data_dir.display()))?,
    );
    let whitelist = config.whitelist();
    if let Some(projects) = &whitelist {
        tracing::info!("billing only the {} whitelisted projects", projects.len());
    }
    let options = os_credits::billing::engine::Options {
        whitelist,
        max_keys: config.max_keys,
        future_tolerance: Some(Duration::from_secs(config.future_tolerance_seconds)),
    };
    let engine = Arc::new(Engine::start(ledger.clone(), policies.clone(), options)?);
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
                Arc::new(EngineFloors(engine.rebaser())),
                sync_config,
            ));
            tokio::spawn(Arc::clone(&sync).run());
            tracing::info!(url = %config.perun_url, "publishing credits to Perun");
            Some(sync)
        }
        None => {
            tracing::warn!(
                "Perun sync is off (set OS_CREDITS_PERUN_LOGIN, OS_CREDITS_PERUN_PASSWORD and OS_CREDITS_PERUN_VO_ID): credits are billed into the local ledger ({}) only",
                config.data_dir.display()
            );
            None
        }
    };
    let notifier = match config.mail()? {
        Some(mail) => {
            let server = format!("{}:{}", mail.server, mail.port);
            let notifier = Arc::new(
                Notifier::new(ledger.clone(), mail)
                    .with_context(|| format!("cannot set up SMTP to {server}"))?,
            );
            tokio::spawn(Arc::clone(&notifier).run());
            tracing::info!(%server, "threshold mails on");
            Some(notifier)
        }
        None => {
            tracing::info!("threshold mails are off (set MAIL_SMTP_SERVER to send them)");
            None
        }
    };
    let state = AppState {
        engine: engine.clone(),
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
        remote_write: config.remote_write()?,
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
    let drained = tokio::time::timeout(
        SHUTDOWN_LIMIT,
        tokio::task::spawn_blocking(move || engine.shutdown()),
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

/// The Perun sync's port for adopted floors, wired to the billing engine
/// (perun knows nothing of billing).
struct EngineFloors(Rebaser);

impl Rebase for EngineFloors {
    fn rebase<'a>(
        &'a self,
        project: &'a str,
        floors: Vec<Floor>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<usize, String>> + Send + 'a>>
    {
        Box::pin(self.0.rebase(project, floors))
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
