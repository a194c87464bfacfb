//! The service's configuration: flags that mirror environment variables
//! (the Python service's names where it had them). `.default.env` at the
//! repository root lists every variable with its default and meaning.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::ledger::Durability;
use crate::policy::Limits;

/// The service's data directory: the SQLite ledger (created if missing),
/// the policies' compile cache. Declared once for `serve` and the tools.
#[derive(Debug, Clone, Args)]
pub struct DataDir {
    /// Folder of the service's data (the SQLite ledger, the compile cache).
    #[arg(long = "data-dir", env = "OS_CREDITS_DATA_DIR", default_value = "data")]
    pub path: PathBuf,
}

/// Where the ledger is: SQLite in the data directory, or PostgreSQL.
/// Declared once for `serve` and the tools that read the ledger.
#[derive(Debug, Clone, Args)]
pub struct LedgerArgs {
    /// The data directory.
    #[command(flatten)]
    pub data_dir: DataDir,
    /// The ledger in PostgreSQL (`postgres://user:password@host/database`),
    /// for replicas; unset: SQLite in the data directory.
    #[arg(long, env = "OS_CREDITS_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

/// Where the ledger is: the one reading of [`LedgerArgs`], for `serve` and
/// every tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerPlace<'a> {
    /// SQLite, in this data directory.
    Sqlite(&'a std::path::Path),
    /// PostgreSQL, at this URL.
    Postgres(&'a str),
}

impl LedgerArgs {
    /// Where the ledger is: PostgreSQL when `OS_CREDITS_DATABASE_URL` is a
    /// `postgres://` (or `postgresql://`) URL, SQLite in the data directory
    /// when it is unset or blank; anything else is refused, naming the
    /// setting (and not its password).
    pub fn place(&self) -> anyhow::Result<LedgerPlace<'_>> {
        let url = self
            .database_url
            .as_deref()
            .map(str::trim)
            .filter(|url| !url.is_empty());
        match url {
            None => Ok(LedgerPlace::Sqlite(&self.data_dir.path)),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(LedgerPlace::Postgres(url))
            }
            Some(other) => anyhow::bail!(
                "OS_CREDITS_DATABASE_URL {:?} is not a postgres:// URL (leave it unset for SQLite in the data folder)",
                other.split('@').next_back().unwrap_or_default()
            ),
        }
    }
}

/// Limits on policy modules and calls, declared once for `serve` and the
/// policy tools.
#[derive(Debug, Clone, Args)]
pub struct PolicyLimitArgs {
    /// Wall-clock limit of one policy call, in milliseconds.
    #[arg(long, env = "OS_CREDITS_POLICY_TIMEOUT_MS", default_value_t = 100)]
    pub policy_timeout_ms: u64,
    /// Memory limit of one policy instance, in MiB.
    #[arg(long, env = "OS_CREDITS_POLICY_MEMORY_MB", default_value_t = 64)]
    pub policy_memory_mb: usize,
    /// Largest policy module in MiB; a bigger file is refused unread (a
    /// Python policy is ~18 MiB).
    #[arg(long, env = "OS_CREDITS_POLICY_MAX_MB", default_value_t = 64)]
    pub policy_max_mb: usize,
}

impl PolicyLimitArgs {
    /// The limits on policy calls.
    pub fn limits(&self) -> Limits {
        Limits {
            call_timeout: Duration::from_millis(self.policy_timeout_ms),
            memory_bytes: self.policy_memory_mb << 20,
            module_bytes: self.policy_max_mb << 20,
        }
    }
}

/// `os-credits serve` settings.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "CREDITS_HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// Port to listen on (0: any free port, logged at start).
    #[arg(long, env = "CREDITS_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Where the ledger is.
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// With PostgreSQL: how often, in seconds, a follower tries to take the
    /// leader's lock and the leader renews its lease (after a leader's
    /// death, failover takes about this long).
    #[arg(long, env = "OS_CREDITS_LEADER_CHECK_SECONDS", default_value_t = 1.0)]
    pub leader_check_seconds: f64,
    /// With PostgreSQL: a leader whose lease is older than this many
    /// seconds stopped answering (frozen, cut off) and is replaced; it
    /// stops publishing and mailing after half of it.
    #[arg(long, env = "OS_CREDITS_LEASE_SECONDS", default_value_t = 8.0)]
    pub lease_seconds: f64,
    /// This replica's name in the inbox and the logs (default: the host name).
    #[arg(long, env = "OS_CREDITS_REPLICA_NAME", default_value = "")]
    pub replica_name: String,
    /// Folder of the policy modules (`make policies` fills policies/dist).
    #[arg(long, env = "OS_CREDITS_POLICY_DIR", default_value = "policies/dist")]
    pub policy_dir: PathBuf,
    /// Public keys (OpenSSH, one per line) whose signatures a policy module
    /// needs (`MODULE.wasm.sig` beside it); unset: modules need none.
    #[arg(long, env = "OS_CREDITS_POLICY_TRUSTED_KEYS", default_value = "")]
    pub policy_trusted_keys: String,
    /// Decimal places of credits shown and written (half-even rounding).
    #[arg(long, env = "OS_CREDITS_PRECISION", default_value_t = 2)]
    pub precision: u32,
    /// Threads serving HTTP and parsing (0: one per CPU).
    #[arg(long, env = "OS_CREDITS_WORKERS", default_value_t = 0)]
    pub workers: usize,
    /// Bill only these projects (`;`-separated); empty bills every project.
    #[arg(long, env = "OS_CREDITS_PROJECT_WHITELIST", default_value = "")]
    pub project_whitelist: String,
    /// Largest `/write` or `/api/v1/write` body in MiB, answered with 413
    /// beyond (InfluxDB accepts 25 MB).
    #[arg(long, env = "OS_CREDITS_MAX_BODY_MB", default_value_t = 32)]
    pub max_body_mb: usize,
    /// The most keys (project, site, metric) the service bills; samples of
    /// new keys beyond are refused with an error, so memory stays bounded
    /// whatever a sender makes up (~1 KiB per key).
    #[arg(long, env = "OS_CREDITS_MAX_KEYS", default_value_t = 100_000)]
    pub max_keys: usize,
    /// Samples more than this many seconds ahead of the clock are refused
    /// (one would leave its key waiting until then).
    #[arg(
        long,
        env = "OS_CREDITS_FUTURE_TOLERANCE_SECONDS",
        default_value_t = 900
    )]
    pub future_tolerance_seconds: u64,
    /// Limits on policy modules and calls.
    #[command(flatten)]
    pub policy_limits: PolicyLimitArgs,
    /// Largest size a remote-write body may decompress to, in MiB (checked
    /// before decompressing; Prometheus sends well under 1 MiB).
    #[arg(
        long,
        env = "OS_CREDITS_REMOTE_WRITE_MAX_DECOMPRESSED_MB",
        default_value_t = 64
    )]
    pub remote_write_max_decompressed_mb: usize,
    /// The remote-write label naming the project (the Perun group).
    #[arg(
        long,
        env = "OS_CREDITS_REMOTE_WRITE_PROJECT_LABEL",
        default_value = "project_name"
    )]
    pub remote_write_project_label: String,
    /// The remote-write label naming the site (the Perun resource id).
    #[arg(
        long,
        env = "OS_CREDITS_REMOTE_WRITE_SITE_LABEL",
        default_value = "location_id"
    )]
    pub remote_write_site_label: String,
    /// `full`: fsync every commit (survives a power cut); `normal`: survives a crash of the process.
    #[arg(long, env = "OS_CREDITS_DURABILITY", value_enum, default_value_t = DurabilityArg::Full)]
    pub durability: DurabilityArg,
    /// htpasswd file (bcrypt) of who may write measurements; `# sites: a,b` before a user scopes it. Unset (with no tokens file): writes are open.
    #[arg(long, env = "OS_CREDITS_WRITE_USERS_FILE")]
    pub write_users_file: Option<String>,
    /// Bearer tokens that may write measurements, one per line (`TOKEN` or `NAME TOKEN`; plain, `sha256:HEX` or bcrypt).
    #[arg(long, env = "OS_CREDITS_WRITE_TOKENS_FILE")]
    pub write_tokens_file: Option<String>,
    /// Key for admin endpoints (header `X-API-KEY`); unset disables them.
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Perun RPC base URL.
    #[arg(
        long,
        env = "OS_CREDITS_PERUN_URL",
        default_value = "https://perun.elixir-czech.cz/krb/rpc/json"
    )]
    pub perun_url: String,
    /// Perun login (Basic auth); sync is off without login, password and VO id.
    #[arg(long, env = "OS_CREDITS_PERUN_LOGIN")]
    pub perun_login: Option<String>,
    /// Perun password.
    #[arg(long, env = "OS_CREDITS_PERUN_PASSWORD", hide_env_values = true)]
    pub perun_password: Option<String>,
    /// Perun VO id the project groups live in.
    #[arg(long, env = "OS_CREDITS_PERUN_VO_ID", default_value = "")]
    pub perun_vo_id: String,
    /// At most one read and one write per site per project per this many
    /// seconds: the portal shows values at most this old.
    #[arg(long, env = "OS_CREDITS_PERUN_SYNC_INTERVAL", default_value_t = 300)]
    pub perun_sync_interval: u64,
    /// Timeout of one Perun call, in seconds.
    #[arg(long, env = "OS_CREDITS_PERUN_TIMEOUT", default_value_t = 30)]
    pub perun_timeout: u64,
    /// Attribute id of denbiCreditsCurrent (group, java.lang.String).
    #[arg(
        long,
        env = "OS_CREDITS_PERUN_CREDITS_CURRENT_ID",
        default_value_t = 3382
    )]
    pub perun_credits_current_id: i64,
    /// Attribute id of denbiCreditsGranted (group, java.lang.String, read only).
    #[arg(
        long,
        env = "OS_CREDITS_PERUN_CREDITS_GRANTED_ID",
        default_value_t = 3383
    )]
    pub perun_credits_granted_id: i64,
    /// Attribute id of denbiCreditTimestamps (group_resource, java.util.LinkedHashMap).
    #[arg(long, env = "OS_CREDITS_PERUN_TIMESTAMPS_ID", default_value_t = 3386)]
    pub perun_timestamps_id: i64,
    /// Friendly name of the credits-used attribute.
    #[arg(
        long,
        env = "OS_CREDITS_PERUN_CREDITS_CURRENT_NAME",
        default_value = "denbiCreditsCurrent"
    )]
    pub perun_credits_current_name: String,
    /// Friendly name of the credits-granted attribute.
    #[arg(
        long,
        env = "OS_CREDITS_PERUN_CREDITS_GRANTED_NAME",
        default_value = "denbiCreditsGranted"
    )]
    pub perun_credits_granted_name: String,
    /// Friendly name of the timestamps attribute.
    #[arg(
        long,
        env = "OS_CREDITS_PERUN_TIMESTAMPS_NAME",
        default_value = "denbiCreditTimestamps"
    )]
    pub perun_timestamps_name: String,
    /// Friendly name of the maintainers' mail addresses attribute (read only).
    #[arg(long, env = "OS_CREDITS_PERUN_EMAILS_NAME", default_value = "toEmail")]
    pub perun_emails_name: String,
    /// Namespace of the credits-used attribute (Perun reads by full name,
    /// `namespace:friendlyName`).
    #[arg(
        long,
        env = "OS_CREDITS_PERUN_CREDITS_CURRENT_NAMESPACE",
        default_value = "urn:perun:group:attribute-def:opt"
    )]
    pub perun_credits_current_namespace: String,
    /// Namespace of the credits-granted attribute.
    #[arg(
        long,
        env = "OS_CREDITS_PERUN_CREDITS_GRANTED_NAMESPACE",
        default_value = "urn:perun:group:attribute-def:opt"
    )]
    pub perun_credits_granted_namespace: String,
    /// Namespace of the timestamps attribute.
    #[arg(
        long,
        env = "OS_CREDITS_PERUN_TIMESTAMPS_NAMESPACE",
        default_value = "urn:perun:group_resource:attribute-def:opt"
    )]
    pub perun_timestamps_namespace: String,
    /// Namespace of the maintainers' mail addresses attribute.
    #[arg(
        long,
        env = "OS_CREDITS_PERUN_EMAILS_NAMESPACE",
        default_value = "urn:perun:group:attribute-def:def"
    )]
    pub perun_emails_namespace: String,
    /// Attribute id of the maintainers' mail addresses (group, java.util.ArrayList).
    #[arg(long, env = "OS_CREDITS_PERUN_EMAILS_ID", default_value_t = 2020)]
    pub perun_emails_id: i64,
    /// Full name (`namespace:friendlyName`) of a group attribute holding
    /// when the project ends (a date or RFC 3339), read with the others;
    /// empty: forecasts know no end.
    #[arg(long, env = "OS_CREDITS_PERUN_END_ATTRIBUTE", default_value = "")]
    pub perun_end_attribute: String,
    /// SMTP server for threshold mails; empty: no mails.
    #[arg(long, env = "MAIL_SMTP_SERVER", default_value = "")]
    pub mail_smtp_server: String,
    /// SMTP port.
    #[arg(long, env = "MAIL_SMTP_PORT", default_value_t = 25)]
    pub mail_smtp_port: u16,
    /// SMTP login (optional).
    #[arg(long, env = "MAIL_SMTP_USER", default_value = "")]
    pub mail_smtp_user: String,
    /// SMTP password.
    #[arg(
        long,
        env = "MAIL_SMTP_PASSWORD",
        default_value = "",
        hide_env_values = true
    )]
    pub mail_smtp_password: String,
    /// Sender of threshold mails.
    #[arg(long, env = "MAIL_FROM", default_value = "os-credits@localhost")]
    pub mail_from: String,
    /// Any value but empty, 0 or false: plain SMTP without STARTTLS.
    #[arg(long, env = "MAIL_NOT_STARTTLS", default_value = "")]
    pub mail_not_starttls: String,
    /// Copied on every threshold mail.
    #[arg(long, env = "CLOUD_GOVERNANCE_MAIL", default_value = "")]
    pub cloud_governance_mail: String,
    /// Comma-separated addresses that replace every recipient (testing, staging).
    #[arg(long, env = "NOTIFICATION_TO_OVERWRITE", default_value = "")]
    pub notification_to_overwrite: String,
    /// Shares of granted credits, in percent, that raise an alert (mail
    /// and webhook); default 50,100.
    #[arg(long, env = "OS_CREDITS_MAIL_THRESHOLDS")]
    pub mail_thresholds: Option<String>,
    /// The former name of `OS_CREDITS_MAIL_THRESHOLDS` (still read when
    /// that is unset).
    #[arg(long, env = "OS_CREDITS_NOTIFY_THRESHOLDS", hide = true)]
    pub notify_thresholds: Option<String>,
    /// Warn when a project's credits run out within this many days of its
    /// latest measurement at its recent pace (0: only when they run out
    /// before the project ends).
    #[arg(long, env = "OS_CREDITS_RUNOUT_WARNING_DAYS", default_value_t = 14)]
    pub runout_warning_days: u32,
    /// The window, in hours, whose pace forecasts and run-out warnings
    /// use (1-2160; `GET /api/forecast` takes another per request).
    #[arg(long, env = "OS_CREDITS_FORECAST_WINDOW_HOURS", default_value_t = 24)]
    pub forecast_window_hours: u32,
    /// File replacing the run-out warning's subject template.
    #[arg(long, env = "OS_CREDITS_RUNOUT_SUBJECT_FILE", default_value = "")]
    pub runout_subject_file: String,
    /// File replacing the run-out warning's body template.
    #[arg(long, env = "OS_CREDITS_RUNOUT_BODY_FILE", default_value = "")]
    pub runout_body_file: String,
    /// Where alerts and corrections are POSTed (Standard Webhooks); empty: no webhooks.
    #[arg(long, env = "OS_CREDITS_WEBHOOK_URL", default_value = "")]
    pub webhook_url: String,
    /// The webhooks' signing secret (`whsec_` and base64).
    #[arg(
        long,
        env = "OS_CREDITS_WEBHOOK_SECRET",
        default_value = "",
        hide_env_values = true
    )]
    pub webhook_secret: String,
    /// Time limit of one webhook delivery, in seconds (an answer later
    /// than this counts as a failure: the event is sent again, same id).
    #[arg(long, env = "OS_CREDITS_WEBHOOK_TIMEOUT_SECONDS", default_value_t = 10)]
    pub webhook_timeout_seconds: u64,
    /// File replacing the subject template (placeholders {project}, {used},
    /// {granted}, {left}, {threshold}).
    #[arg(long, env = "OS_CREDITS_MAIL_SUBJECT_FILE", default_value = "")]
    pub mail_subject_file: String,
    /// File replacing the body template (same placeholders).
    #[arg(long, env = "OS_CREDITS_MAIL_BODY_FILE", default_value = "")]
    pub mail_body_file: String,
}

/// Durability of ledger commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DurabilityArg {
    /// fsync every commit.
    Full,
    /// fsync at checkpoints.
    Normal,
}

impl ServeConfig {
    /// The address to bind.
    pub fn address(&self) -> anyhow::Result<SocketAddr> {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        let ip = host
            .parse()
            .map_err(|_| anyhow::anyhow!("CREDITS_HOST {:?} is not an IP address", self.host))?;
        Ok(SocketAddr::new(ip, self.port))
    }

    /// The whitelist, or `None` when every project is billed.
    pub fn whitelist(&self) -> Option<HashSet<String>> {
        let projects: HashSet<String> = self
            .project_whitelist
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        (!projects.is_empty()).then_some(projects)
    }

    /// The limits on policy calls.
    pub fn limits(&self) -> Limits {
        self.policy_limits.limits()
    }

    /// Ledger durability.
    pub fn durability(&self) -> Durability {
        match self.durability {
            DurabilityArg::Full => Durability::Full,
            DurabilityArg::Normal => Durability::Normal,
        }
    }

    /// The alert settings, or `None` (alerts off) without an SMTP server
    /// and without a webhook receiver.
    pub fn alerts(&self) -> anyhow::Result<Option<crate::alerts::AlertConfig>> {
        let (name, text) = match (&self.mail_thresholds, &self.notify_thresholds) {
            (Some(text), _) => ("OS_CREDITS_MAIL_THRESHOLDS", text.as_str()),
            (None, Some(text)) => ("OS_CREDITS_NOTIFY_THRESHOLDS", text.as_str()),
            (None, None) => ("OS_CREDITS_MAIL_THRESHOLDS", "50,100"),
        };
        let mut thresholds = Vec::new();
        for item in text.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            let percent: u32 = item
                .trim_end_matches('%')
                .parse()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "{name}: {item:?} is not a whole percentage above 0 (e.g. 25,50,75,100)"
                    )
                })?;
            thresholds.push(percent);
        }
        thresholds.sort_unstable();
        thresholds.dedup();
        let window_hours = self.forecast_window_hours;
        if !(1..=crate::forecast::MAX_WINDOW_HOURS).contains(&window_hours) {
            anyhow::bail!("OS_CREDITS_FORECAST_WINDOW_HOURS {window_hours} is not within 1-2160");
        }
        let mail = self.mail()?;
        let webhooks = !self.webhook_url.trim().is_empty();
        if mail.is_none() && !webhooks {
            return Ok(None);
        }
        Ok(Some(crate::alerts::AlertConfig {
            thresholds,
            runout_warning: (self.runout_warning_days > 0)
                .then(|| i64::from(self.runout_warning_days) * crate::period::DAY),
            window_hours,
            mail,
            webhooks,
        }))
    }

    /// The webhook settings, or `None` (webhooks off) without a URL.
    pub fn webhook(&self) -> anyhow::Result<Option<crate::alerts::webhook::WebhookConfig>> {
        let url = self.webhook_url.trim();
        if url.is_empty() {
            return Ok(None);
        }
        let url = reqwest::Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                anyhow::anyhow!("OS_CREDITS_WEBHOOK_URL {url:?} is not an http(s) URL")
            })?;
        if self.webhook_secret.trim().is_empty() {
            anyhow::bail!(
                "OS_CREDITS_WEBHOOK_URL is set but OS_CREDITS_WEBHOOK_SECRET is not: events are always signed"
            );
        }
        Ok(Some(crate::alerts::webhook::WebhookConfig {
            url,
            secret: self.webhook_secret.trim().to_owned(),
            timeout: Duration::from_secs(self.webhook_timeout_seconds.max(1)),
        }))
    }

    /// The mail settings, or `None` (mails off) without a server.
    pub fn mail(&self) -> anyhow::Result<Option<crate::alerts::MailConfig>> {
        use crate::alerts::{MailConfig, Templates};
        let server = self.mail_smtp_server.trim();
        if server.is_empty() {
            return Ok(None);
        }
        let list = |text: &str| -> Vec<String> {
            text.split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let file = |text: &str| {
            Some(text.trim())
                .filter(|p| !p.is_empty())
                .map(std::path::PathBuf::from)
        };
        let flag = self.mail_not_starttls.trim().to_ascii_lowercase();
        let not_starttls = !matches!(flag.as_str(), "" | "0" | "false" | "no");
        Ok(Some(MailConfig {
            server: server.to_owned(),
            port: self.mail_smtp_port,
            credentials: (!self.mail_smtp_user.is_empty())
                .then(|| (self.mail_smtp_user.clone(), self.mail_smtp_password.clone())),
            from: self.mail_from.clone(),
            starttls: !not_starttls,
            governance: Some(self.cloud_governance_mail.trim().to_owned())
                .filter(|m| !m.is_empty()),
            overwrite: list(&self.notification_to_overwrite),
            runout_templates: Templates::runout().replaced(
                file(&self.runout_subject_file).as_deref(),
                file(&self.runout_body_file).as_deref(),
            )?,
            templates: Templates::load(
                Some(self.mail_subject_file.trim())
                    .filter(|p| !p.is_empty())
                    .map(std::path::Path::new),
                Some(self.mail_body_file.trim())
                    .filter(|p| !p.is_empty())
                    .map(std::path::Path::new),
            )?,
            precision: self.precision,
            timeout: Duration::from_secs(10),
        }))
    }

    /// This replica's name: given, or the host name.
    pub fn replica_name(&self) -> String {
        let given = self.replica_name.trim();
        if !given.is_empty() {
            return given.to_owned();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| format!("replica-{}", std::process::id()))
    }

    /// The body limit in bytes.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_mb.saturating_mul(1 << 20)
    }

    /// How `/api/v1/write` reads Prometheus' samples.
    pub fn remote_write(&self) -> anyhow::Result<crate::api::RemoteWriteSettings> {
        use crate::ingest::remote_write::Labels;
        let label = |name: &str, value: &str| -> anyhow::Result<String> {
            let value = value.trim();
            anyhow::ensure!(
                !value.is_empty() && value != "__name__",
                "{name} must name a label (not empty, not __name__)"
            );
            Ok(value.to_owned())
        };
        Ok(crate::api::RemoteWriteSettings {
            labels: std::sync::Arc::new(Labels {
                project: label(
                    "OS_CREDITS_REMOTE_WRITE_PROJECT_LABEL",
                    &self.remote_write_project_label,
                )?,
                site: label(
                    "OS_CREDITS_REMOTE_WRITE_SITE_LABEL",
                    &self.remote_write_site_label,
                )?,
            }),
            max_decompressed: self
                .remote_write_max_decompressed_mb
                .saturating_mul(1 << 20),
        })
    }
}

impl ServeConfig {
    /// The Perun sync settings, or `None` (sync off) without login,
    /// password and VO id.
    pub fn perun(&self) -> anyhow::Result<Option<(crate::perun::sync::SyncConfig, &str, &str)>> {
        use crate::perun::client::AttributeDef;
        use crate::perun::sync::SyncConfig;
        let vo =
            match self.perun_vo_id.trim() {
                "" => None,
                text => Some(text.parse::<i64>().map_err(|_| {
                    anyhow::anyhow!("OS_CREDITS_PERUN_VO_ID {text:?} is not a number")
                })?),
            };
        let login = self.perun_login.as_deref().filter(|l| !l.is_empty());
        let (Some(login), Some(password), Some(vo)) = (login, self.perun_password.as_deref(), vo)
        else {
            return Ok(None);
        };
        let def = |id, name: &str, namespace: &str, kind: &str| AttributeDef {
            id,
            friendly_name: name.to_owned(),
            namespace: namespace.to_owned(),
            kind: kind.to_owned(),
        };
        let config = SyncConfig {
            vo,
            interval: Duration::from_secs(self.perun_sync_interval),
            precision: self.precision,
            credits_current: def(
                self.perun_credits_current_id,
                &self.perun_credits_current_name,
                &self.perun_credits_current_namespace,
                "java.lang.String",
            ),
            credits_granted: def(
                self.perun_credits_granted_id,
                &self.perun_credits_granted_name,
                &self.perun_credits_granted_namespace,
                "java.lang.String",
            ),
            timestamps: def(
                self.perun_timestamps_id,
                &self.perun_timestamps_name,
                &self.perun_timestamps_namespace,
                "java.util.LinkedHashMap",
            ),
            emails: def(
                self.perun_emails_id,
                &self.perun_emails_name,
                &self.perun_emails_namespace,
                "java.util.ArrayList",
            ),
            ends: match self.perun_end_attribute.trim() {
                "" => None,
                full => {
                    let (namespace, name) = full
                        .rsplit_once(':')
                        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
                        .ok_or_else(|| {
                            anyhow::anyhow!(
                                "OS_CREDITS_PERUN_END_ATTRIBUTE {full:?} is not a full attribute name (namespace:friendlyName, e.g. urn:perun:group:attribute-def:def:projectEndDate)"
                            )
                        })?;
                    Some(def(0, name, namespace, "java.lang.String"))
                }
            },
        };
        Ok(Some((config, login, password)))
    }
}
