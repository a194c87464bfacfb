//! Commands that ask the running service (`correction`, `statement`):
//! they go through its API, so a correction is computed and booked where
//! the ledger and the schedule are, and the answer is the API's.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};

/// Where the service is and the admin key.
#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// The service's base URL.
    #[arg(long, env = "OS_CREDITS_URL", default_value = "http://127.0.0.1:80")]
    url: String,
    /// The admin key (`X-API-KEY`): the service's `API_KEY`.
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Seconds to wait for the answer (a correction over much usage takes a while).
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

/// What a correction re-prices and why.
#[derive(Debug, Args)]
pub struct CorrectionArgs {
    /// Why the prices are corrected (kept with every line).
    #[arg(long)]
    reason: String,
    /// Start of the usage re-priced (RFC 3339 or a date), inclusive.
    #[arg(long)]
    from: String,
    /// End of the usage re-priced, exclusive.
    #[arg(long)]
    to: String,
    /// Only this site (location_id).
    #[arg(long)]
    site: Option<String>,
    /// Only this project (repeat for more).
    #[arg(long = "project")]
    projects: Vec<String>,
    /// A module file in the service's policy folder.
    #[arg(long, conflicts_with = "sha256", required_unless_present = "sha256")]
    module: Option<String>,
    /// A module the price schedule knows, by SHA-256.
    #[arg(long)]
    sha256: Option<String>,
    /// The module's configuration, a TOML file (default: the schedule's for the module).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    #[command(flatten)]
    service: ServiceArgs,
}

/// `os-credits correction …`.
#[derive(Debug, Subcommand)]
pub enum CorrectionCommand {
    /// Say what a correction would book, per project (books nothing).
    Preview(CorrectionArgs),
    /// Book a correction: the differences become adjustments beside the
    /// charges; the same correction again books nothing.
    Apply(CorrectionArgs),
    /// Every correction booked.
    List {
        #[command(flatten)]
        service: ServiceArgs,
    },
}

/// A statement's format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StatementFormat {
    /// RFC 4180 CSV.
    Csv,
    /// JSON.
    Json,
}

/// `os-credits statement`.
#[derive(Debug, Args)]
pub struct StatementArgs {
    /// A calendar month, e.g. 2026-11 (default: the previous month, UTC).
    #[arg(long, conflicts_with_all = ["from", "to"])]
    month: Option<String>,
    /// Start of the period (RFC 3339 or a date), with --to.
    #[arg(long, requires = "to")]
    from: Option<String>,
    /// End of the period, exclusive.
    #[arg(long, requires = "from")]
    to: Option<String>,
    /// Only this project.
    #[arg(long)]
    project: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = StatementFormat::Csv)]
    format: StatementFormat,
    #[command(flatten)]
    service: ServiceArgs,
}

/// Sends one request to the service; prints the body; exit 0 on 2xx, 1 otherwise.
fn send(
    service: &ServiceArgs,
    build: impl FnOnce(&reqwest::Client, &str) -> reqwest::RequestBuilder,
) -> anyhow::Result<ExitCode> {
    let base = service.url.trim_end_matches('/').to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, body) = runtime.block_on(async {
        let client = os_credits::http::client(Duration::from_secs(service.timeout))?;
        let mut request = build(&client, &base);
        if let Some(key) = &service.api_key {
            request = request.header("X-API-KEY", key);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("no answer from {base}"))?;
        let status = response.status();
        anyhow::Ok((status, response.text().await?))
    })?;
    if status.is_success() {
        print!("{body}");
        if !body.ends_with('\n') {
            println!();
        }
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{base} answered {status}: {body}");
        Ok(ExitCode::from(1))
    }
}

/// `os-credits correction preview|apply|list`.
pub fn correction(command: CorrectionCommand) -> anyhow::Result<ExitCode> {
    let (args, dry_run) = match command {
        CorrectionCommand::Preview(args) => (args, true),
        CorrectionCommand::Apply(args) => (args, false),
        CorrectionCommand::List { service } => {
            return send(&service, |client, base| {
                client.get(format!("{base}/api/corrections"))
            });
        }
    };
    let config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let table: toml::Table =
                toml::from_str(&text).with_context(|| format!("{} is not TOML", path.display()))?;
            Some(serde_json::to_value(table)?)
        }
        None => None,
    };
    let mut body = serde_json::json!({
        "reason": args.reason, "from": args.from, "to": args.to, "dry_run": dry_run,
    });
    let fields = [
        ("site", args.site.clone().map(serde_json::Value::from)),
        (
            "projects",
            (!args.projects.is_empty()).then(|| serde_json::Value::from(args.projects.clone())),
        ),
        ("module", args.module.clone().map(serde_json::Value::from)),
        ("sha256", args.sha256.clone().map(serde_json::Value::from)),
        ("config", config),
    ];
    for (name, value) in fields {
        if let Some(value) = value {
            body[name] = value;
        }
    }
    send(&args.service, |client, base| {
        client.post(format!("{base}/api/corrections")).json(&body)
    })
}

/// `os-credits statement`.
pub fn statement(args: StatementArgs) -> anyhow::Result<ExitCode> {
    let mut query: Vec<(&str, String)> = vec![(
        "format",
        match args.format {
            StatementFormat::Csv => "csv",
            StatementFormat::Json => "json",
        }
        .into(),
    )];
    let optional = [
        ("month", args.month),
        ("from", args.from),
        ("to", args.to),
        ("project", args.project),
    ];
    query.extend(
        optional
            .into_iter()
            .filter_map(|(name, value)| value.map(|v| (name, v))),
    );
    let base = args.service.url.trim_end_matches('/');
    let url = reqwest::Url::parse_with_params(&format!("{base}/api/statements"), &query)
        .with_context(|| format!("--url {base:?} is not a URL"))?;
    send(&args.service, |client, _| client.get(url))
}
