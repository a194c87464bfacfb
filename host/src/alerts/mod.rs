//! Alerts: when a project's credits used reach a share of its granted
//! credits (50 % and 100 % by default), and when at its recent pace they
//! run out soon or before the project ends ([`crate::forecast`]), its
//! maintainers get one mail per crossing, and the webhook receiver one
//! event ([`webhook`]).
//!
//! The notifier reads the ledger (credits used, granted and the
//! maintainers' `toEmail`, both from Perun) and never the billing path: a
//! slow or absent SMTP server cannot hold up a write. A mail is recorded
//! in the ledger once the server accepted it, with the granted credits it
//! was about; a failed send is retried on the next pass (after a backoff),
//! and a crossing is re-armed when granted credits rise. A crash between
//! sending and recording sends the mail again, with the same Message-ID
//! ([`message_id`]): what it is about names it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use rust_decimal::Decimal;
use serde::Serialize;
use tracing::Instrument;

use crate::sync::Locked;

pub mod webhook;

use crate::credits::round;
use crate::forecast::Forecast;
use crate::ledger::{Forecasts, Leadership, Notifications, ProjectRecord, WebhookEvent, Webhooks};

/// How often the ledger is checked for crossings.
const PASS: Duration = Duration::from_secs(1);
/// Longest wait after the SMTP server failed.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// How often (passes) the run-out forecasts of every project are checked.
const RUNOUT_EVERY: u64 = 10;
/// The "threshold" the ledger records a run-out warning under (a threshold
/// of 0 % is refused in the settings).
pub const RUNOUT: u32 = 0;
/// The webhook event type of a threshold crossed.
pub const THRESHOLD_EVENT: &str = "credits.threshold_crossed";
/// The webhook event type of a run-out warning.
pub const RUNOUT_EVENT: &str = "credits.runout_warning";

/// The placeholders a template may use.
pub const PLACEHOLDERS: [&str; 9] = [
    "project",
    "used",
    "granted",
    "left",
    "threshold",
    "rate_per_hour",
    "runs_out_at",
    "ends_at",
    "window_hours",
];

/// Subject and body with `{project}`, `{used}`, `{granted}`, `{left}`,
/// `{threshold}`, `{rate_per_hour}`, `{runs_out_at}`, `{ends_at}`,
/// `{window_hours}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Templates {
    /// One line.
    pub subject: String,
    /// Plain text.
    pub body: String,
}

/// A template that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A file could not be read.
    #[error("cannot read mail template {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A placeholder nobody fills.
    #[error("mail {which} template has an unknown placeholder {{{name}}} (known: {known})", known = PLACEHOLDERS.join(", "))]
    Unknown {
        /// `subject` or `body`.
        which: &'static str,
        /// The placeholder.
        name: String,
    },
}

impl Default for Templates {
    fn default() -> Self {
        Templates {
            subject: include_str!("subject.txt").trim().to_owned(),
            body: include_str!("body.txt").to_owned(),
        }
    }
}

impl Templates {
    /// The built-in run-out warning.
    pub fn runout() -> Self {
        Templates {
            subject: include_str!("runout_subject.txt").trim().to_owned(),
            body: include_str!("runout_body.txt").to_owned(),
        }
    }

    /// `self`, each part replaced by its file when given.
    pub fn replaced(
        mut self,
        subject: Option<&std::path::Path>,
        body: Option<&std::path::Path>,
    ) -> Result<Self, TemplateError> {
        let read = |path: &std::path::Path| {
            std::fs::read_to_string(path).map_err(|source| TemplateError::Read {
                path: path.to_owned(),
                source,
            })
        };
        if let Some(path) = subject {
            self.subject = read(path)?.trim().to_owned();
        }
        if let Some(path) = body {
            self.body = read(path)?;
        }
        check("subject", &self.subject)?;
        check("body", &self.body)?;
        Ok(self)
    }

    /// The built-in templates, each replaced by its file when given.
    pub fn load(
        subject: Option<&std::path::Path>,
        body: Option<&std::path::Path>,
    ) -> Result<Self, TemplateError> {
        Templates::default().replaced(subject, body)
    }

    /// Subject and body for `values` (placeholder name, text).
    pub fn render(&self, values: &[(&str, String)]) -> (String, String) {
        let fill = |template: &str| {
            values
                .iter()
                .fold(template.to_owned(), |text, (name, value)| {
                    text.replace(&format!("{{{name}}}"), value)
                })
        };
        (fill(&self.subject), fill(&self.body))
    }
}

/// Refuses `{name}` placeholders nobody fills.
fn check(which: &'static str, template: &str) -> Result<(), TemplateError> {
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else { break };
        let name = &after[..end];
        let word = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if word && !PLACEHOLDERS.contains(&name) {
            return Err(TemplateError::Unknown {
                which,
                name: name.to_owned(),
            });
        }
        rest = &after[end + 1..];
    }
    Ok(())
}

/// How to reach the SMTP server and whom to write.
#[derive(Debug, Clone)]
pub struct MailConfig {
    /// SMTP host.
    pub server: String,
    /// SMTP port.
    pub port: u16,
    /// Login, when the server wants one.
    pub credentials: Option<(String, String)>,
    /// Sender.
    pub from: String,
    /// STARTTLS (required) unless `MAIL_NOT_STARTTLS`.
    pub starttls: bool,
    /// Copied on every mail (`CLOUD_GOVERNANCE_MAIL`).
    pub governance: Option<String>,
    /// Replaces every recipient (`NOTIFICATION_TO_OVERWRITE`).
    pub overwrite: Vec<String>,
    /// Subject and body of a threshold mail.
    pub templates: Templates,
    /// Subject and body of a run-out warning.
    pub runout_templates: Templates,
    /// Decimal places of the credits shown.
    pub precision: u32,
    /// Time limit of one SMTP conversation.
    pub timeout: Duration,
}

/// What raises alerts, and where they go.
#[derive(Debug, Clone)]
pub struct AlertConfig {
    /// Shares of granted credits, in percent (none 0), that raise an alert.
    pub thresholds: Vec<u32>,
    /// Warn when the credits run out within this (ns) of the latest
    /// measurement; `None`: only when they run out before the project ends.
    pub runout_warning: Option<i64>,
    /// The forecasts' window, in hours.
    pub window_hours: u32,
    /// Mails, when an SMTP server is set.
    pub mail: Option<MailConfig>,
    /// Whether alerts are queued for the webhook receiver.
    pub webhooks: bool,
}

/// Mails sent and failed, for `/stats` and `/metrics`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NotifyStatus {
    /// Whether alerts are on (mails or webhooks).
    pub enabled: bool,
    /// Whether mails are sent.
    pub mails: bool,
    /// Alerts raised (mailed or queued), threshold and run-out alike.
    pub alerts: u64,
    /// Run-out warnings among them.
    pub runout_warnings: u64,
    /// Mails the server accepted.
    pub sent: u64,
    /// Attempts that failed.
    pub failed: u64,
    /// The last failure.
    pub last_error: Option<String>,
    /// Passes over the ledger so far.
    pub passes: u64,
    /// Thresholds re-armed: credits used fell below one alerted before
    /// (its next crossing alerts again).
    pub rearmed: u64,
}

/// An alert that is due: a project past a threshold (or warned of its
/// run-out) not yet alerted for its current granted credits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The project and its figures.
    pub project: ProjectRecord,
    /// The threshold crossed, in percent; [`RUNOUT`] for a run-out warning.
    pub threshold: u32,
    /// How often the threshold was re-armed before (credits used fell
    /// below it again): 0 for the first crossing.
    pub round: u32,
    /// The project's forecast, when read.
    pub forecast: Option<Forecast>,
}

impl Due {
    /// What the alert is about, as a name: `50` (percent) or `runout`.
    pub fn what(&self) -> String {
        match self.threshold {
            RUNOUT => "runout".to_owned(),
            t => t.to_string(),
        }
    }
}

/// The mails due for `project`, given the thresholds already mailed for
/// it (threshold, granted credits at the time).
pub fn due(project: &ProjectRecord, thresholds: &[u32], mailed: &[(u32, Decimal)]) -> Vec<Due> {
    let Some(granted) = project.granted.filter(|g| *g > Decimal::ZERO) else {
        return Vec::new();
    };
    let used = project.used();
    thresholds
        .iter()
        .filter(|t| used * Decimal::ONE_HUNDRED >= granted * Decimal::from(**t))
        // mailed for these granted credits (or more): done; granted rose since: re-armed
        .filter(|t| !mailed.iter().any(|(m, at)| m == *t && *at >= granted))
        .map(|t| Due {
            project: project.clone(),
            threshold: *t,
            round: 0,
            forecast: None,
        })
        .collect()
}

/// The run-out warning due for `forecast`'s project (warned within
/// `warning` ns, or before its end), unless warned for its current granted
/// credits already; none once its credits are used up (the 100 % alert
/// says so).
pub fn runout_due(
    project: &ProjectRecord,
    forecast: &Forecast,
    warning: Option<i64>,
    mailed: &[(u32, Decimal)],
) -> Option<Due> {
    let granted = project.granted.filter(|g| *g > Decimal::ZERO)?;
    let warns = match warning {
        Some(warning) => forecast.warns(warning),
        None => forecast.lasts_until_end == Some(false),
    };
    let done = mailed.iter().any(|(t, at)| *t == RUNOUT && *at >= granted);
    (warns && !forecast.exhausted && !done).then(|| Due {
        project: project.clone(),
        threshold: RUNOUT,
        round: 0,
        forecast: Some(forecast.clone()),
    })
}

/// The thresholds mailed for `project` that its credits used no longer
/// reach (a correction or a hand edit lowered them): to re-arm, so that
/// the next crossing is mailed again.
pub fn rearmable(project: &ProjectRecord, mailed: &[(u32, Decimal)]) -> Vec<u32> {
    let Some(granted) = project.granted.filter(|g| *g > Decimal::ZERO) else {
        return Vec::new();
    };
    let used = project.used();
    mailed
        .iter()
        .filter(|(t, at)| {
            *t != RUNOUT
                && *at > Decimal::ZERO
                && used * Decimal::ONE_HUNDRED < granted * Decimal::from(*t)
        })
        .map(|(t, _)| *t)
        .collect()
}

/// Why the notifier cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The SMTP transport refused the settings.
    #[error("SMTP settings: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
    /// `MAIL_FROM` is not an address.
    #[error("MAIL_FROM {address:?} is not a mail address: {reason}")]
    From {
        /// The value.
        address: String,
        /// Why.
        reason: String,
    },
}

/// The SMTP side of the alerts.
struct Mailer {
    config: MailConfig,
    from: Mailbox,
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

/// The ledger roles the alerts read and write.
#[derive(Clone)]
pub struct AlertLedger {
    /// Thresholds alerted, projects with granted credits.
    pub notifications: Arc<dyn Notifications>,
    /// The projects' paces.
    pub forecasts: Arc<dyn Forecasts>,
    /// The webhooks' outbox.
    pub webhooks: Arc<dyn Webhooks>,
}

/// Raises the alerts: mails and webhook events.
pub struct Notifier {
    ledger: AlertLedger,
    leadership: Arc<dyn Leadership>,
    config: AlertConfig,
    mailer: Option<Mailer>,
    /// Shared with the pass's blocking read, which counts the re-arms as
    /// the ledger records each.
    status: Arc<Mutex<NotifyStatus>>,
    /// No send before this instant (SMTP failed); and the failures in a row.
    backoff: Mutex<(Option<Instant>, u32)>,
}

impl Notifier {
    /// A notifier mailing through `config`'s server (when it has one) and
    /// queueing webhook events (when on); it raises nothing unless
    /// `leadership` says this process leads right then.
    pub fn new(
        ledger: AlertLedger,
        leadership: Arc<dyn Leadership>,
        config: AlertConfig,
    ) -> Result<Self, SetupError> {
        let mailer = config.mail.clone().map(Mailer::new).transpose()?;
        Ok(Notifier {
            ledger,
            leadership,
            status: Arc::new(Mutex::new(NotifyStatus {
                enabled: true,
                mails: mailer.is_some(),
                ..NotifyStatus::default()
            })),
            mailer,
            config,
            backoff: Mutex::new((None, 0)),
        })
    }

    /// Alerts raised, mails sent and failed.
    pub fn status(&self) -> NotifyStatus {
        self.status.locked().clone()
    }

    /// Runs forever: one pass a second.
    pub async fn run(self: Arc<Self>) {
        crate::leader::every(PASS, || self.pass()).await;
    }

    /// Raises what is due now (unless the SMTP server failed recently, or
    /// this process does not lead); run-out forecasts every
    /// [`RUNOUT_EVERY`] passes.
    pub async fn pass(&self) {
        if !self.leadership.leading() {
            return;
        }
        let pass = {
            let mut status = self.status.locked();
            status.passes += 1;
            status.passes
        };
        let waiting = self
            .backoff
            .locked()
            .0
            .is_some_and(|until| Instant::now() < until);
        if waiting {
            return;
        }
        let ledger = self.ledger.clone();
        let config = self.config.clone();
        let forecasts = pass % RUNOUT_EVERY == 1;
        let status = self.status.clone();
        let due =
            tokio::task::spawn_blocking(move || dues(&ledger, &config, forecasts, &status)).await;
        let due = match due {
            Ok(Ok(due)) => due,
            Ok(Err(e)) => return tracing::error!("alerts: cannot read the ledger: {e}"),
            Err(e) => return tracing::error!("alerts: {e}"),
        };
        for due in due {
            // Asked before every alert: a leader that was frozen or cut off
            // and replaced raises nothing when it wakes.
            if !self.leadership.leading() {
                return;
            }
            let span =
                tracing::info_span!("alert", project = %due.project.project, about = %due.what());
            if !self.deliver(&due).instrument(span).await {
                return;
            }
        }
    }

    /// Raises one due alert: queues its webhook event (when on), sends its
    /// mail (when on), then records it; `false` when the ledger or the SMTP
    /// server failed (the rest of the pass waits). A crash after either
    /// effect and before the record repeats both under the same ids.
    async fn deliver(&self, due: &Due) -> bool {
        if self.config.webhooks {
            let ledger = self.ledger.webhooks.clone();
            let event = event_of(due);
            let queued = tokio::task::spawn_blocking(move || ledger.queue_webhook(&event)).await;
            if !matches!(queued, Ok(Ok(_))) {
                tracing::error!("cannot queue the alert's webhook event; trying again");
                return false;
            }
        }
        if let Some(mailer) = &self.mailer {
            let values = values(due, mailer.config.precision, self.config.window_hours);
            match mailer.send(due, &values).await {
                Ok(recipients) => {
                    self.status.locked().sent += 1;
                    *self.backoff.locked() = (None, 0);
                    tracing::info!(recipients, "alert mail sent");
                }
                Err(Failure::NoRecipients) => tracing::warn!(
                    "no maintainers known (toEmail empty) and no CLOUD_GOVERNANCE_MAIL: alert mail not sent"
                ),
                Err(Failure::Message(e)) => tracing::error!("alert mail cannot be built: {e}"),
                Err(Failure::Smtp(e)) => {
                    let delay = {
                        let mut backoff = self.backoff.locked();
                        backoff.1 = backoff.1.saturating_add(1);
                        // 2 s after the first failure, as before: one more
                        // than the failures so far.
                        let delay =
                            crate::leader::backoff(backoff.1.saturating_add(1), MAX_BACKOFF);
                        backoff.0 = Some(Instant::now() + delay);
                        delay
                    };
                    {
                        let mut status = self.status.locked();
                        status.failed += 1;
                        status.last_error = Some(e.clone());
                    }
                    tracing::warn!("sending the alert mail failed, retrying in {delay:?}: {e}");
                    return false;
                }
            }
        }
        {
            let mut status = self.status.locked();
            status.alerts += 1;
            if due.threshold == RUNOUT {
                status.runout_warnings += 1;
            }
        }
        self.record(due).await;
        true
    }

    async fn record(&self, due: &Due) {
        let ledger = self.ledger.notifications.clone();
        let project = due.project.project.clone();
        let threshold = due.threshold;
        let granted = due.project.granted.unwrap_or_default();
        let recorded = tokio::task::spawn_blocking(move || {
            ledger.record_notification(&project, threshold, granted)
        })
        .await;
        if !matches!(recorded, Ok(Ok(()))) {
            tracing::error!("cannot record the alert in the ledger; it may be raised again");
        }
    }
}

/// Every alert due now: thresholds (re-arming those used fell below), and
/// with `forecasts`, run-out warnings; each with its project's forecast.
/// Counts each threshold re-armed in `status`.
fn dues(
    ledger: &AlertLedger,
    config: &AlertConfig,
    forecasts: bool,
    status: &Mutex<NotifyStatus>,
) -> Result<Vec<Due>, crate::ledger::LedgerError> {
    let window = crate::forecast::window_ns(config.window_hours);
    let projects = ledger.notifications.notifiable()?;
    let paces: std::collections::HashMap<String, Forecast> = if forecasts {
        ledger
            .forecasts
            .paces(window)?
            .iter()
            .map(|pace| {
                let forecast = Forecast::of(pace, config.window_hours);
                (forecast.project.clone(), forecast)
            })
            .collect()
    } else {
        Default::default()
    };
    let mut all = Vec::new();
    for n in &projects {
        let name = &n.project.project;
        for threshold in rearmable(&n.project, &n.mailed) {
            ledger.notifications.rearm(name, threshold)?;
            status.locked().rearmed += 1;
            tracing::info!(project = %name, threshold, "credits used fell below a threshold alerted before: re-armed");
        }
        for mut d in due(&n.project, &config.thresholds, &n.mailed) {
            d.round = n
                .rearmed
                .iter()
                .find(|(t, _)| *t == d.threshold)
                .map_or(0, |(_, times)| *times);
            d.forecast = match paces.get(name) {
                Some(forecast) => Some(forecast.clone()),
                None => ledger
                    .forecasts
                    .pace(name, window)?
                    .map(|pace| Forecast::of(&pace, config.window_hours)),
            };
            all.push(d);
        }
        if let Some(forecast) = paces.get(name) {
            all.extend(runout_due(
                &n.project,
                forecast,
                config.runout_warning,
                &n.mailed,
            ));
        }
    }
    Ok(all)
}

/// The placeholders' values for `due`'s mail.
fn values(due: &Due, precision: u32, window_hours: u32) -> Vec<(&'static str, String)> {
    let project = &due.project;
    let granted = project.granted.unwrap_or_default();
    let used = project.used();
    let shown = |value: Decimal| round(value, precision).to_string();
    let date = |ns: Option<i64>, none: &str| {
        ns.map_or_else(
            || none.to_owned(),
            |ns| {
                chrono::DateTime::from_timestamp_nanos(ns)
                    .format("%Y-%m-%d %H:%M UTC")
                    .to_string()
            },
        )
    };
    let forecast = due.forecast.as_ref();
    vec![
        ("project", project.project.clone()),
        ("used", shown(used)),
        ("granted", shown(granted)),
        ("left", shown(granted - used)),
        ("threshold", due.threshold.to_string()),
        (
            "rate_per_hour",
            shown(forecast.map_or(Decimal::ZERO, |f| f.rate_per_hour)),
        ),
        (
            "runs_out_at",
            date(forecast.and_then(|f| f.runs_out_at), "not at this pace"),
        ),
        ("ends_at", date(project.ends_at, "not known")),
        ("window_hours", window_hours.to_string()),
    ]
}

/// The webhook event of `due`: its id derived from what it is about (as
/// the mail's Message-ID), so that it is the same whenever it is queued.
pub fn event_of(due: &Due) -> WebhookEvent {
    use sha2::{Digest, Sha256};
    let key = format!(
        "{}\n{}\n{}\n{}",
        due.project.project,
        due.what(),
        due.project.granted.unwrap_or_default().normalize(),
        due.round
    );
    let id = format!("msg_{}", hex::encode(&Sha256::digest(key.as_bytes())[..16]));
    let project = &due.project;
    let exact = |d: Decimal| d.normalize().to_string();
    let mut data = serde_json::json!({
        "project": project.project,
        "used": exact(project.used()),
        "granted": project.granted.map(exact),
        "left": project.granted.map(|g| exact(g - project.used())),
    });
    if due.threshold != RUNOUT {
        data["threshold"] = due.threshold.into();
    }
    if let Some(forecast) = &due.forecast {
        data["forecast"] = serde_json::to_value(forecast.answer()).unwrap_or_default();
    }
    let kind = if due.threshold == RUNOUT {
        RUNOUT_EVENT
    } else {
        THRESHOLD_EVENT
    };
    let at = crate::time::now_ns();
    WebhookEvent::new(id, kind, at, data)
}

impl Mailer {
    fn new(config: MailConfig) -> Result<Self, SetupError> {
        let from = config
            .from
            .trim()
            .parse()
            .map_err(|e: lettre::address::AddressError| SetupError::From {
                address: config.from.clone(),
                reason: e.to_string(),
            })?;
        let builder = if config.starttls {
            AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&config.server)?
        } else {
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.server)
        };
        let mut builder = builder.port(config.port).timeout(Some(config.timeout));
        if let Some((user, password)) = &config.credentials {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        Ok(Mailer {
            from,
            transport: builder.build(),
            config,
        })
    }

    /// Sends the mail for `due`; returns how many recipients it had.
    async fn send(&self, due: &Due, values: &[(&str, String)]) -> Result<usize, Failure> {
        let templates = if due.threshold == RUNOUT {
            &self.config.runout_templates
        } else {
            &self.config.templates
        };
        let (subject, body) = templates.render(values);
        let maintainers = mailboxes(&due.project.emails);
        let governance = mailboxes(self.config.governance.as_slice());
        let (to, cc) = if !self.config.overwrite.is_empty() {
            (mailboxes(&self.config.overwrite), Vec::new())
        } else if maintainers.is_empty() {
            (governance, Vec::new())
        } else {
            (maintainers, governance)
        };
        if to.is_empty() {
            return Err(Failure::NoRecipients);
        }
        let mut message = Message::builder()
            .from(self.from.clone())
            .message_id(Some(message_id(due, &self.from)))
            .subject(subject)
            .header(ContentType::TEXT_PLAIN);
        for mailbox in &to {
            message = message.to(mailbox.clone());
        }
        for mailbox in &cc {
            message = message.cc(mailbox.clone());
        }
        let message = message
            .body(body)
            .map_err(|e| Failure::Message(e.to_string()))?;
        self.transport
            .send(message)
            .await
            .map_err(|e| Failure::Smtp(e.to_string()))?;
        Ok(to.len() + cc.len())
    }
}

/// The Message-ID of the mail for `due`: derived from what the mail is
/// about (project, threshold, granted credits), so that a mail sent again
/// after a crash (sent, but not recorded yet) carries the same id and mail
/// clients and archives show it once.
pub fn message_id(due: &Due, from: &Mailbox) -> String {
    use sha2::{Digest, Sha256};
    let project = hex::encode(&Sha256::digest(due.project.project.as_bytes())[..12]);
    let granted = due.project.granted.unwrap_or_default().normalize();
    // A crossing after a re-arm is another event: another id.
    let round = match due.round {
        0 => String::new(),
        n => format!(".r{n}"),
    };
    format!(
        "<credits.{project}.{}.{granted}{round}@{}>",
        due.what(),
        from.email.domain()
    )
}

/// The addresses that parse; each one that does not is logged and skipped.
fn mailboxes(addresses: &[String]) -> Vec<Mailbox> {
    addresses
        .iter()
        .filter_map(|address| match address.trim().parse() {
            Ok(mailbox) => Some(mailbox),
            Err(e) => {
                tracing::warn!(address, "skipping an invalid mail address: {e}");
                None
            }
        })
        .collect()
}

enum Failure {
    NoRecipients,
    Message(String),
    Smtp(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(used: &str, granted: Option<&str>) -> ProjectRecord {
        ProjectRecord {
            project: "p".into(),
            charged: used.parse().unwrap(),
            adopted: Decimal::ZERO,
            granted: granted.map(|g| g.parse().unwrap()),
            emails: vec![],
            ends_at: None,
        }
    }

    fn thresholds(dues: &[Due]) -> Vec<u32> {
        dues.iter().map(|d| d.threshold).collect()
    }

    #[test]
    fn the_message_id_names_what_the_mail_is_about() {
        let from: Mailbox = "credits@cloud.example".parse().unwrap();
        let due = |granted: &str, threshold| Due {
            round: 0,
            forecast: None,
            project: project("100", Some(granted)),
            threshold,
        };
        let id = message_id(&due("200", 50), &from);
        assert!(
            id.starts_with("<credits.") && id.ends_with(".50.200@cloud.example>"),
            "{id}"
        );
        // Sent again after a crash: the same id.
        assert_eq!(message_id(&due("200.00", 50), &from), id);
        assert_ne!(message_id(&due("200", 100), &from), id);
        assert_ne!(message_id(&due("400", 50), &from), id);
        // Crossed again after a re-arm: another event, another id.
        let again = Due {
            round: 1,
            ..due("200", 50)
        };
        assert_ne!(message_id(&again, &from), id);
    }

    fn forecast(runs_out_at: Option<i64>, exhausted: bool, lasts: Option<bool>) -> Forecast {
        Forecast {
            project: "p".into(),
            used: Decimal::from(100),
            granted: Some(Decimal::from(200)),
            window_hours: 24,
            rate_per_hour: Decimal::ONE,
            latest_measurement: Some(0),
            runs_out_at,
            exhausted,
            ends_at: None,
            lasts_until_end: lasts,
        }
    }

    #[test]
    fn a_run_out_warning_is_due_once_per_granted_amount_and_never_re_armed_by_use() {
        let day: i64 = 86_400_000_000_000;
        let project = project("100", Some("200"));
        let soon = forecast(Some(3 * day), false, None);
        let warned = runout_due(&project, &soon, Some(14 * day), &[]).unwrap();
        assert_eq!(
            (warned.threshold, warned.what()),
            (RUNOUT, "runout".to_owned())
        );
        assert!(runout_due(&project, &soon, Some(2 * day), &[]).is_none());
        // 0 days: only an end before the run-out warns.
        assert!(runout_due(&project, &soon, None, &[]).is_none());
        let short = forecast(Some(3 * day), false, Some(false));
        assert!(runout_due(&project, &short, None, &[]).is_some());
        // Warned at these granted credits: not again; granted rose: again.
        let mailed = [(RUNOUT, Decimal::from(200))];
        assert!(runout_due(&project, &soon, Some(14 * day), &mailed).is_none());
        let more = self::project("100", Some("400"));
        assert!(runout_due(&more, &soon, Some(14 * day), &mailed).is_some());
        // Used up: the 100 % alert says so, no warning.
        let spent = forecast(Some(-day), true, None);
        assert!(runout_due(&project, &spent, Some(14 * day), &[]).is_none());
        // Never re-armed by credits used falling (only by granted rising).
        assert!(rearmable(&self::project("1", Some("200")), &mailed).is_empty());
    }

    #[test]
    fn a_webhook_event_keeps_its_id_whenever_it_is_queued() {
        let due = |granted: &str, threshold, round| Due {
            project: project("150", Some(granted)),
            threshold,
            round,
            forecast: None,
        };
        let first = event_of(&due("200", 50, 0));
        assert!(first.id.starts_with("msg_"), "{}", first.id);
        assert_eq!(event_of(&due("200.0", 50, 0)).id, first.id);
        assert_ne!(event_of(&due("200", 75, 0)).id, first.id);
        assert_ne!(event_of(&due("400", 50, 0)).id, first.id);
        assert_ne!(event_of(&due("200", 50, 1)).id, first.id);
        assert_eq!(first.kind, THRESHOLD_EVENT);
        let body: serde_json::Value = serde_json::from_str(&first.body).unwrap();
        assert_eq!(body["type"], THRESHOLD_EVENT);
        assert_eq!(body["data"]["threshold"], 50);
        assert_eq!(body["data"]["left"], "50");
        assert_eq!(event_of(&due("200", RUNOUT, 0)).kind, RUNOUT_EVENT);
    }

    #[test]
    fn a_threshold_falls_back_below_and_is_re_armed_once() {
        let mailed = [(50, Decimal::from(200)), (100, Decimal::from(200))];
        // 120 of 200: 50 % still reached, 100 % no longer.
        assert_eq!(rearmable(&project("120", Some("200")), &mailed), vec![100]);
        assert_eq!(
            rearmable(&project("99", Some("200")), &mailed),
            vec![50, 100]
        );
        // Re-armed already (granted 0): not again; and due once crossed.
        let rearmed = [(50, Decimal::ZERO)];
        assert!(rearmable(&project("10", Some("200")), &rearmed).is_empty());
        assert_eq!(
            thresholds(&due(&project("100", Some("200")), &[50], &rearmed)),
            vec![50]
        );
        assert!(rearmable(&project("10", None), &mailed).is_empty());
    }

    #[test]
    fn a_threshold_is_due_once_per_granted_amount() {
        let t = [50, 100];
        assert!(due(&project("99.99", Some("200")), &t, &[]).is_empty());
        assert_eq!(
            thresholds(&due(&project("100", Some("200")), &t, &[])),
            vec![50]
        );
        assert_eq!(
            thresholds(&due(&project("250", Some("200")), &t, &[])),
            vec![50, 100]
        );
        let mailed = [(50, Decimal::from(200))];
        assert_eq!(
            thresholds(&due(&project("150", Some("200")), &t, &mailed)),
            Vec::<u32>::new()
        );
        // granted rose to 400 and use crossed its half again: re-armed
        assert_eq!(
            thresholds(&due(&project("200", Some("400")), &t, &mailed)),
            vec![50]
        );
        assert!(due(&project("500", None), &t, &[]).is_empty());
        assert!(due(&project("500", Some("0")), &t, &[]).is_empty());
    }

    #[test]
    fn template_files_replace_the_built_in_ones_and_a_typo_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let subject = dir.path().join("subject.txt");
        let body = dir.path().join("body.txt");
        std::fs::write(&subject, "Credits of {project}: {left} left\n").unwrap();
        std::fs::write(&body, "{used} of {granted}").unwrap();
        let templates = Templates::load(Some(&subject), Some(&body)).unwrap();
        let (s, b) = templates.render(&[
            ("project", "p".into()),
            ("used", "1".into()),
            ("granted", "2".into()),
            ("left", "1".into()),
        ]);
        assert_eq!((s.as_str(), b.as_str()), ("Credits of p: 1 left", "1 of 2"));
        std::fs::write(&body, "{usd} of {granted}").unwrap();
        let error = Templates::load(None, Some(&body)).unwrap_err().to_string();
        assert!(error.contains("{usd}"), "{error}");
        let missing = Templates::load(Some(&dir.path().join("nope.txt")), None);
        assert!(missing.unwrap_err().to_string().contains("nope.txt"));
    }

    #[test]
    fn templates_fill_placeholders_and_refuse_unknown_ones() {
        let templates = Templates::default();
        let (subject, body) = templates.render(&[
            ("project", "p".into()),
            ("used", "100.00".into()),
            ("granted", "200.00".into()),
            ("left", "100.00".into()),
            ("threshold", "50".into()),
            ("rate_per_hour", "2.00".into()),
            ("runs_out_at", "2026-12-06 00:52 UTC".into()),
            ("ends_at", "not known".into()),
            ("window_hours", "24".into()),
        ]);
        assert_eq!(subject, "50% of the credits of project p used");
        assert!(body.contains("used 100.00 of its 200.00"));
        assert!(body.contains("(2.00 credits per hour) they run out: 2026-12-06 00:52 UTC"));
        assert!(!body.contains('{'));
        let (subject, body) = Templates::runout().render(&[
            ("project", "p".into()),
            ("runs_out_at", "2026-12-06 00:52 UTC".into()),
            ("rate_per_hour", "2.00".into()),
        ]);
        assert_eq!(
            subject,
            "The credits of project p run out on 2026-12-06 00:52 UTC"
        );
        assert!(body.contains("(2.00 credits per\nhour)"), "{body}");
        assert!(check("body", "{project} {whatever}").is_err());
        assert!(check("body", "{project} uses {{json}} {").is_ok());
    }
}
