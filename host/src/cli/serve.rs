//! `os-credits serve`: the library's [`Service`], on a runtime of its own,
//! until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use anyhow::Context;
use os_credits::api::LogFilter;
use os_credits::config::ServeConfig;
use os_credits::service::{Service, Stopped, workers};

pub fn serve(config: ServeConfig, log_filter: LogFilter) -> anyhow::Result<ExitCode> {
    let workers = workers(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let service = Service::start(config, workers, log_filter).await?;
        Ok(match service.run(shutdown_signal()).await? {
            Stopped::Cleanly => ExitCode::SUCCESS,
            Stopped::TimedOut => ExitCode::FAILURE,
        })
    })
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
