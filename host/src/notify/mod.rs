//! Threshold mails: when a project's credits used reach a share of its
//! granted credits (50 % and 100 % by default), its maintainers get one
//! mail per crossing.
//!
//! The notifier reads the ledger (credits used, granted and the
//! maintainers' `toEmail`, both from Perun) and never the billing path: a
//! slow or absent SMTP server cannot hold up a write. A mail is recorded
//! in the ledger once the server accepted it, with the granted credits it
//! was about; a failed send is retried on the next pass (after a backoff),
//! and a crossing is re-armed when granted credits rise. A crash between
//! sending and recording sends the mail again, with the same Message-ID
//! ([`message_id`]): what it is about names it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use rust_decimal::Decimal;
use serde::Serialize;
use tracing::Instrument;

use crate::credits::round;
use crate::ledger::{Leadership, Notifications, ProjectRecord};

/// How often the ledger is checked for crossings.
const PASS: Duration = Duration::from_secs(1);
/// Longest wait after the SMTP server failed.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The placeholders a template may use.
pub const PLACEHOLDERS: [&str; 5] = ["project", "used", "granted", "left", "threshold"];

/// Subject and body with `{project}`, `{used}`, `{granted}`, `{left}`,
/// `{threshold}` placeholders.
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
    /// The built-in templates, each replaced by its file when given.
    pub fn load(
        subject: Option<&std::path::Path>,
        body: Option<&std::path::Path>,
    ) -> Result<Self, TemplateError> {
        let read = |path: &std::path::Path| {
            std::fs::read_to_string(path).map_err(|source| TemplateError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let mut templates = Templates::default();
        if let Some(path) = subject {
            templates.subject = read(path)?.trim().to_owned();
        }
        if let Some(path) = body {
            templates.body = read(path)?;
        }
        check("subject", &templates.subject)?;
        check("body", &templates.body)?;
        Ok(templates)
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
    /// Shares of granted credits, in percent, that trigger a mail.
    pub thresholds: Vec<u32>,
    /// Subject and body.
    pub templates: Templates,
    /// Decimal places of the credits shown.
    pub precision: u32,
    /// Time limit of one SMTP conversation.
    pub timeout: Duration,
}

/// Mails sent and failed, for `/stats` and `/metrics`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NotifyStatus {
    /// Whether notifications are on.
    pub enabled: bool,
    /// Mails the server accepted.
    pub sent: u64,
    /// Attempts that failed.
    pub failed: u64,
    /// The last failure.
    pub last_error: Option<String>,
    /// Passes over the ledger so far.
    pub passes: u64,
}

/// A mail that is due: a project past a threshold not yet mailed for its
/// current granted credits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The project and its figures.
    pub project: ProjectRecord,
    /// The threshold crossed, in percent.
    pub threshold: u32,
    /// How often the threshold was re-armed before (credits used fell
    /// below it again): 0 for the first crossing.
    pub round: u32,
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
        })
        .collect()
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
            *at > Decimal::ZERO && used * Decimal::ONE_HUNDRED < granted * Decimal::from(*t)
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

/// Sends the threshold mails.
pub struct Notifier {
    ledger: Arc<dyn Notifications>,
    leadership: Arc<dyn Leadership>,
    config: MailConfig,
    from: Mailbox,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    status: Mutex<NotifyStatus>,
    /// No send before this instant (SMTP failed); and the failures in a row.
    backoff: Mutex<(Option<Instant>, u32)>,
}

impl Notifier {
    /// A notifier writing through `config`'s server; it sends nothing
    /// unless `leadership` says this process leads right then.
    pub fn new(
        ledger: Arc<dyn Notifications>,
        leadership: Arc<dyn Leadership>,
        config: MailConfig,
    ) -> Result<Self, SetupError> {
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
        Ok(Notifier {
            ledger,
            leadership,
            from,
            transport: builder.build(),
            status: Mutex::new(NotifyStatus {
                enabled: true,
                ..NotifyStatus::default()
            }),
            config,
            backoff: Mutex::new((None, 0)),
        })
    }

    /// Mails sent and failed.
    pub fn status(&self) -> NotifyStatus {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs forever: one pass a second.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(PASS);
        loop {
            tick.tick().await;
            self.pass().await;
        }
    }

    /// Sends what is due now (unless the server failed recently, or this
    /// process does not lead).
    pub async fn pass(&self) {
        if !self.leadership.leading() {
            return;
        }
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .passes += 1;
        let waiting = self
            .backoff
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .is_some_and(|until| Instant::now() < until);
        if waiting {
            return;
        }
        let ledger = self.ledger.clone();
        let thresholds = self.config.thresholds.clone();
        let due = tokio::task::spawn_blocking(move || -> Result<Vec<Due>, String> {
            let projects = ledger.notifiable().map_err(|e| e.to_string())?;
            let mut all = Vec::new();
            for n in &projects {
                for threshold in rearmable(&n.project, &n.mailed) {
                    ledger
                        .rearm(&n.project.project, threshold)
                        .map_err(|e| e.to_string())?;
                    tracing::info!(project = %n.project.project, threshold, "credits used fell below a threshold mailed before: re-armed");
                }
                all.extend(due(&n.project, &thresholds, &n.mailed).into_iter().map(|mut d| {
                    d.round = n
                        .rearmed
                        .iter()
                        .find(|(t, _)| *t == d.threshold)
                        .map_or(0, |(_, times)| *times);
                    d
                }));
            }
            Ok(all)
        })
        .await;
        let due = match due {
            Ok(Ok(due)) => due,
            Ok(Err(e)) => return tracing::error!("notifications: cannot read the ledger: {e}"),
            Err(e) => return tracing::error!("notifications: {e}"),
        };
        for due in due {
            // Asked before every mail: a leader that was frozen or cut off
            // and replaced sends nothing when it wakes.
            if !self.leadership.leading() {
                return;
            }
            let span = tracing::info_span!("notify", project = %due.project.project, threshold = due.threshold);
            if !self.deliver(&due).instrument(span).await {
                return;
            }
        }
    }

    /// Sends one due mail and records it; `false` when the server failed
    /// (the rest of the pass waits for the backoff).
    async fn deliver(&self, due: &Due) -> bool {
        match self.send(due).await {
            Ok(recipients) => {
                self.status
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .sent += 1;
                *self.backoff.lock().unwrap_or_else(PoisonError::into_inner) = (None, 0);
                tracing::info!(recipients, "threshold mail sent");
                self.record(due).await;
            }
            Err(Failure::NoRecipients) => {
                tracing::warn!(
                    "no maintainers known (toEmail empty) and no CLOUD_GOVERNANCE_MAIL: threshold mail not sent"
                );
                self.record(due).await;
            }
            Err(Failure::Message(e)) => {
                tracing::error!("threshold mail cannot be built: {e}");
                self.record(due).await;
            }
            Err(Failure::Smtp(e)) => {
                let delay = {
                    let mut backoff = self.backoff.lock().unwrap_or_else(PoisonError::into_inner);
                    backoff.1 = backoff.1.saturating_add(1);
                    let delay = Duration::from_secs(1u64 << backoff.1.min(9)).min(MAX_BACKOFF);
                    backoff.0 = Some(Instant::now() + delay);
                    delay
                };
                {
                    let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
                    status.failed += 1;
                    status.last_error = Some(e.clone());
                }
                tracing::warn!("sending the threshold mail failed, retrying in {delay:?}: {e}");
                return false;
            }
        }
        true
    }

    async fn record(&self, due: &Due) {
        let ledger = self.ledger.clone();
        let project = due.project.project.clone();
        let threshold = due.threshold;
        let granted = due.project.granted.unwrap_or_default();
        let recorded = tokio::task::spawn_blocking(move || {
            ledger.record_notification(&project, threshold, granted)
        })
        .await;
        if !matches!(recorded, Ok(Ok(()))) {
            tracing::error!("cannot record the threshold mail in the ledger; it may be sent again");
        }
    }

    /// Sends the mail for `due`; returns how many recipients it had.
    async fn send(&self, due: &Due) -> Result<usize, Failure> {
        let project = &due.project;
        let granted = project.granted.unwrap_or_default();
        let used = project.used();
        let shown = |value: Decimal| round(value, self.config.precision).to_string();
        let values = [
            ("project", project.project.clone()),
            ("used", shown(used)),
            ("granted", shown(granted)),
            ("left", shown(granted - used)),
            ("threshold", due.threshold.to_string()),
        ];
        let (subject, body) = self.config.templates.render(&values);
        let maintainers = mailboxes(&project.emails);
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
        due.threshold,
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
        ]);
        assert_eq!(subject, "50% of the credits of project p used");
        assert!(body.contains("used 100.00 of its 200.00"));
        assert!(!body.contains('{'));
        assert!(check("body", "{project} {whatever}").is_err());
        assert!(check("body", "{project} uses {{json}} {").is_ok());
    }
}
