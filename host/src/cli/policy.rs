//! `os-credits policy check|run|test|rerate`: the policy author's tools.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use os_credits::billing::intake::{Intake, Report};
use os_credits::ingest::Precision;
use std::sync::Arc;

use os_credits::policy::schedule::Schedule;
use os_credits::policy::set::{self, PolicySet};
use os_credits::policy::signature;
use os_credits::policy::{Module, ModuleInfo};
use os_credits::schedule::show_time;
use rust_decimal::Decimal;
use serde::Serialize;

use super::{Format, PolicyOptions};

/// How many line warnings go to stderr.
const SHOWN_WARNINGS: usize = 10;

/// Files larger than this get a progress bar (when stderr is a terminal).
const PROGRESS_MIN_BYTES: usize = 4 << 20;

/// What prices in `run`, `test` and `rerate`: one module, or the schedule
/// of a mapping (`--mapping`: its entries from the beginning of time, its
/// `[[changes]]` from their `from`, as a ledger's first schedule).
enum Pricing {
    Module(Module),
    Schedule {
        schedule: Schedule,
        /// The default's first entry, shown as "the policy".
        shown: Arc<ModuleInfo>,
    },
}

impl Pricing {
    fn info(&self) -> &Arc<ModuleInfo> {
        match self {
            Pricing::Module(module) => module.info(),
            Pricing::Schedule { shown, .. } => shown,
        }
    }

    /// Prints the schedule's entries (a mapping's), one per line.
    fn describe(&self) {
        if let Pricing::Schedule { schedule, .. } = self {
            for version in schedule.entries() {
                let entry = &version.entry;
                println!(
                    "schedule  site {} from {}: {} (sha256 {})",
                    entry.site,
                    show_time(entry.from),
                    entry.file,
                    entry.sha256
                );
            }
        }
    }
}

/// Loads `path`: a module, or with `mapping` a `policies.toml` and every
/// module it names (beside it).
fn prices(path: &Path, mapping: bool, options: &PolicyOptions) -> anyhow::Result<Pricing> {
    let is_toml = path.extension().is_some_and(|e| e == "toml");
    if !mapping {
        anyhow::ensure!(
            !is_toml,
            "{} is a mapping: give --mapping to price with its schedule",
            path.display()
        );
        return load(path, options).map(Pricing::Module);
    }
    anyhow::ensure!(
        options.config.is_none(),
        "--config does not go with --mapping: each entry of the mapping has its configuration"
    );
    let runtime = options.runtime()?;
    let folder = path.parent().unwrap_or(Path::new("."));
    let assignments = set::assignments_in(folder, path)?;
    let (set, failures) = PolicySet::build(&runtime, &assignments, None);
    if let Some(failure) = failures.into_iter().next() {
        anyhow::bail!(
            "{}: site {}: {}: {}",
            path.display(),
            failure.site,
            failure.file,
            failure.error
        );
    }
    let set = set.with_context(|| format!("{}: no [default] policy", path.display()))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    let shown = Arc::clone(set.default_module().info());
    Ok(Pricing::Schedule {
        schedule: Schedule::of_folder(&set, "mapping", now),
        shown,
    })
}

fn load(module: &Path, options: &PolicyOptions) -> anyhow::Result<Module> {
    let runtime = options.runtime()?;
    let config = options.config_text()?;
    runtime
        .load(module, &config)
        .with_context(|| format!("policy {} is not usable", module.display()))
}

/// `policy check`: load, validate and describe a module.
pub fn check(module: &Path, options: &PolicyOptions, format: Format) -> anyhow::Result<ExitCode> {
    let policy = load(module, options)?;
    let info = policy.info();
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&**info)?),
        Format::Table => {
            println!("policy    {} {}", info.name, info.version);
            println!("about     {}", info.description);
            println!("contract  os-credits:pricing@{}", info.contract);
            println!("sha256    {}", info.sha256);
            println!("config    sha256 {}", info.config_sha256);
            println!("self-test passed");
            println!();
            let rows = info
                .metrics
                .iter()
                .map(|m| {
                    vec![
                        m.name.clone(),
                        m.friendly_name.clone(),
                        m.unit.clone(),
                        m.amount_type.clone(),
                        m.description.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &["METRIC", "FRIENDLY", "UNIT", "AMOUNT", "DESCRIPTION"],
                    rows
                )
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The JSON `policy run` prints.
#[derive(Serialize)]
struct RunOutput<'a> {
    policy: PolicySummary<'a>,
    #[serde(flatten)]
    report: &'a Report,
}

#[derive(Serialize)]
pub struct PolicySummary<'a> {
    name: &'a str,
    version: &'a str,
    sha256: &'a str,
    config_sha256: &'a str,
}

impl<'a> From<&'a ModuleInfo> for PolicySummary<'a> {
    fn from(info: &'a ModuleInfo) -> Self {
        PolicySummary {
            name: &info.name,
            version: &info.version,
            sha256: &info.sha256,
            config_sha256: &info.config_sha256,
        }
    }
}

fn read_measurements(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut body = Vec::new();
        std::io::stdin().read_to_end(&mut body)?;
        return Ok(body);
    }
    std::fs::read(path).with_context(|| format!("cannot read measurements {}", path.display()))
}

/// Bills `measurements` through `module` with the intake `/write` uses;
/// line warnings go to stderr.
fn bill(
    module: &Path,
    mapping: bool,
    measurements: &Path,
    options: &PolicyOptions,
    precision: &str,
    decimals: u32,
) -> anyhow::Result<(Pricing, Report)> {
    let precision = Precision::parse(precision)
        .with_context(|| format!("unknown precision {precision:?} (n, u, ms, s, m or h)"))?;
    let policy = prices(module, mapping, options)?;
    let body = read_measurements(measurements)?;
    let received = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));

    let bar = if body.len() >= PROGRESS_MIN_BYTES {
        let bar = ProgressBar::new(body.len() as u64);
        if let Ok(style) =
            ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
        {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut intake = Intake::new();
    let items = os_credits::ingest::lines(&body, precision, received);
    let progress = |done: usize| bar.set_position(done as u64);
    match &policy {
        Pricing::Module(module) => intake.feed(module, items, progress, |_, _, _| {}),
        Pricing::Schedule { schedule, .. } => intake.feed(schedule, items, progress, |_, _, _| {}),
    };
    bar.finish_and_clear();

    let report = intake.report(decimals);
    let issues = report.errors.iter().chain(&report.policy_errors);
    for issue in issues.clone().take(SHOWN_WARNINGS) {
        eprintln!("warning: line {}: {}", issue.line, issue.error);
    }
    if issues.count() > SHOWN_WARNINGS {
        eprintln!("warning: … and more (see --format json)");
    }
    Ok((policy, report))
}

/// `policy run`: replay measurements through a policy.
pub fn run(
    module: &Path,
    mapping: bool,
    measurements: &Path,
    options: &PolicyOptions,
    format: Format,
    precision: &str,
    decimals: u32,
) -> anyhow::Result<ExitCode> {
    let (policy, report) = bill(module, mapping, measurements, options, precision, decimals)?;
    match format {
        Format::Json => {
            let output = RunOutput {
                policy: policy.info().as_ref().into(),
                report: &report,
            };
            println!("{}", serde_json::to_string_pretty(&output)?);
        }
        Format::Table => {
            policy.describe();
            print_report(policy.info(), &report)
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Exact credits per project and in total: the expected file's format
/// (`examples/stack-sample.expected.json`), decimals as text.
#[derive(Debug, Default, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    projects: std::collections::BTreeMap<String, String>,
    total: String,
}

/// Reads an expected file.
fn read_expected(path: &Path) -> anyhow::Result<Expected> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the expected credits {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not an expected-credits file ({{\"projects\": {{\"name\": \"1.5\"}}, \"total\": \"1.5\"}})",
            path.display()
        )
    })
}

/// An exact decimal of the expected file.
fn expected_decimal(text: &str, what: &str) -> anyhow::Result<Decimal> {
    pricing_sdk::parse_decimal(text)
        .map_err(|e| anyhow::anyhow!("the expected credits of {what} ({text:?}): {e}"))
}

/// `policy test`: bills the measurements and compares the exact credits
/// per project and in total with the expected file; exit 0 when equal, 1
/// with a table of the differences, 2 when something cannot be done.
/// `--update` writes the file instead.
pub fn test(
    module: &Path,
    mapping: bool,
    measurements: &Path,
    expected: &Path,
    options: &PolicyOptions,
    precision: &str,
    update: bool,
) -> ExitCode {
    match compare(
        module,
        mapping,
        measurements,
        expected,
        options,
        precision,
        update,
    ) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Whether the billed credits equal the expected ones (printing the
/// differences when not), or the file written with `update`.
fn compare(
    module: &Path,
    mapping: bool,
    measurements: &Path,
    expected: &Path,
    options: &PolicyOptions,
    precision: &str,
    update: bool,
) -> anyhow::Result<bool> {
    let (policy, report) = bill(module, mapping, measurements, options, precision, 2)?;
    let billed: std::collections::BTreeMap<String, Decimal> = report
        .projects
        .iter()
        .map(|p| (p.project.clone(), p.credits))
        .collect();
    let info = policy.info();
    if update {
        let file = Expected {
            projects: billed
                .iter()
                .map(|(project, credits)| (project.clone(), credits.to_string()))
                .collect(),
            total: report.total.to_string(),
        };
        let mut out = Vec::new();
        let formatter = serde_json::ser::PrettyFormatter::with_indent(b" ");
        let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
        file.serialize(&mut serializer)?;
        out.push(b'\n');
        std::fs::write(expected, out)
            .with_context(|| format!("cannot write {}", expected.display()))?;
        println!(
            "wrote {} ({} projects, total {}) with policy {} {}",
            expected.display(),
            billed.len(),
            report.total,
            info.name,
            info.version
        );
        return Ok(true);
    }
    let wanted = read_expected(expected)?;
    let mut rows = Vec::new();
    let mut names: std::collections::BTreeSet<&String> = billed.keys().collect();
    names.extend(wanted.projects.keys());
    for name in names {
        let want = wanted
            .projects
            .get(name)
            .map(|text| expected_decimal(text, name))
            .transpose()?;
        let got = billed.get(name).copied();
        if want != got {
            let show = |d: Option<Decimal>| d.map_or_else(|| "-".to_owned(), |d| d.to_string());
            let difference = got.unwrap_or_default() - want.unwrap_or_default();
            rows.push(vec![
                name.clone(),
                show(want),
                show(got),
                difference.to_string(),
            ]);
        }
    }
    let want_total = expected_decimal(&wanted.total, "the total")?;
    if want_total != report.total {
        rows.push(vec![
            "TOTAL".into(),
            want_total.to_string(),
            report.total.to_string(),
            (report.total - want_total).to_string(),
        ]);
    }
    if rows.is_empty() {
        println!(
            "ok: {} projects, total {}, as expected ({} {}, {} lines, {} billed)",
            billed.len(),
            report.total,
            info.name,
            info.version,
            report.lines,
            report.billed
        );
        return Ok(true);
    }
    println!(
        "FAILED: {} of the expected credits differ ({} {}):",
        rows.len(),
        info.name,
        info.version
    );
    print!(
        "{}",
        table(&["PROJECT", "EXPECTED", "BILLED", "DIFFERENCE"], rows)
    );
    Ok(false)
}

fn print_report(info: &ModuleInfo, report: &Report) {
    println!(
        "policy {} {} (sha256 {})",
        info.name, info.version, info.sha256
    );
    let reasons: Vec<String> = report
        .ignored_by_reason
        .iter()
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect();
    println!(
        "lines {}: billed {}, ignored {} ({})",
        report.lines,
        report.billed,
        report.ignored,
        reasons.join(", ")
    );
    println!();
    let rows = report
        .charges
        .iter()
        .map(|c| {
            vec![
                c.project.clone(),
                c.location_id.clone(),
                c.metric.clone(),
                c.credits.to_string(),
            ]
        })
        .collect();
    print!("{}", table(&["PROJECT", "SITE", "METRIC", "CREDITS"], rows));
    println!();
    let mut rows: Vec<Vec<String>> = report
        .projects
        .iter()
        .map(|p| {
            vec![
                p.project.clone(),
                p.credits.to_string(),
                p.rounded.to_string(),
            ]
        })
        .collect();
    rows.push(vec![
        "TOTAL".into(),
        report.total.to_string(),
        report.total_rounded.to_string(),
    ]);
    print!("{}", table(&["PROJECT", "CREDITS", "ROUNDED"], rows));
}

/// Left-aligned columns separated by two spaces.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header = headers.iter().map(|h| (*h).to_owned()).collect();
    let mut out = String::new();
    for row in std::iter::once(header).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Parses `2024-05-02`, `2024-05-02 01:00:00` or RFC 3339 (UTC) into ns.
pub fn parse_instant(text: &str) -> anyhow::Result<i64> {
    use chrono::{DateTime, NaiveDate, NaiveDateTime};
    let parsed = DateTime::parse_from_rfc3339(text)
        .map(|d| d.to_utc())
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").map(|d| d.and_utc()))
        .or_else(|_| {
            NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())
        })
        .map_err(|_| {
            anyhow::anyhow!(
                "{text:?} is not a date: use 2024-05-02, \"2024-05-02 01:00:00\" or RFC 3339"
            )
        })?;
    parsed
        .timestamp_nanos_opt()
        .with_context(|| format!("{text:?} is out of range"))
}

/// `policy rerate`: what the recorded steps of a period would cost under `module`.
pub fn rerate(
    module: &Path,
    mapping: bool,
    from: &str,
    to: &str,
    options: &PolicyOptions,
    location: &super::LedgerLocation,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let (start, end) = (parse_instant(from)?, parse_instant(to)?);
    anyhow::ensure!(end > start, "--to must be after --from");
    let charges = location.open()?.charges_between(start, end)?;
    let policy = prices(module, mapping, options)?;
    let result = match &policy {
        Pricing::Module(module) => os_credits::billing::rerate::rerate(&charges, module),
        Pricing::Schedule { schedule, .. } => {
            os_credits::billing::rerate::rerate(&charges, schedule)
        }
    };
    for failure in result.failures.iter().take(SHOWN_WARNINGS) {
        eprintln!(
            "warning: {} {} {}: {}",
            failure.project, failure.location_id, failure.metric, failure.error
        );
    }
    match format {
        Format::Json => {
            let output = serde_json::json!({
                "policy": PolicySummary::from(policy.info().as_ref()),
                "from": from, "to": to, "steps": charges.len(), "rerate": result,
            });
            println!("{}", serde_json::to_string_pretty(&output)?);
        }
        Format::Table => {
            let info = policy.info();
            println!(
                "re-rating {} steps from {from} to {to} with {} {} (sha256 {})",
                charges.len(),
                info.name,
                info.version,
                info.sha256
            );
            println!();
            let mut rows: Vec<Vec<String>> = result
                .projects
                .iter()
                .map(|p| {
                    vec![
                        p.project.clone(),
                        p.steps.to_string(),
                        p.billed.to_string(),
                        p.would_be.to_string(),
                        p.difference.to_string(),
                    ]
                })
                .collect();
            rows.push(vec![
                "TOTAL".into(),
                charges.len().to_string(),
                result.billed.to_string(),
                result.would_be.to_string(),
                result.difference.to_string(),
            ]);
            print!(
                "{}",
                table(
                    &["PROJECT", "STEPS", "BILLED", "WOULD BE", "DIFFERENCE"],
                    rows
                )
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `policy keygen`: an Ed25519 key pair, the private key readable by its
/// owner only; refuses to overwrite either file.
pub fn keygen(out: &Path, comment: &str) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let (private, public) = signature::keygen(comment)?;
    let public_path = {
        let mut path = out.as_os_str().to_owned();
        path.push(".pub");
        std::path::PathBuf::from(path)
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(out)
        .with_context(|| format!("cannot create {} (it must not exist)", out.display()))?;
    file.write_all(private.as_bytes())?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&public_path)
        .and_then(|mut f| f.write_all(format!("{public}\n").as_bytes()))
        .with_context(|| format!("cannot create {}", public_path.display()))?;
    println!("private key: {} (keep it secret)", out.display());
    println!(
        "public key:  {} (add it to OS_CREDITS_POLICY_TRUSTED_KEYS)",
        public_path.display()
    );
    println!("{public}");
    Ok(ExitCode::SUCCESS)
}

/// `policy sign`: MODULE.sig beside the module.
pub fn sign(module: &Path, key: &Path) -> anyhow::Result<ExitCode> {
    let bytes =
        std::fs::read(module).with_context(|| format!("cannot read {}", module.display()))?;
    let key_text =
        std::fs::read_to_string(key).with_context(|| format!("cannot read {}", key.display()))?;
    let text = signature::sign(&bytes, &key_text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
    let path = signature::signature_path(module);
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    println!("signed {}: {}", module.display(), path.display());
    Ok(ExitCode::SUCCESS)
}

/// `policy verify`: exit 0 with the signer, 1 with why not.
pub fn verify(module: &Path, trusted_keys: &Path) -> anyhow::Result<ExitCode> {
    let keys = signature::TrustedKeys::load(trusted_keys)?;
    let bytes =
        std::fs::read(module).with_context(|| format!("cannot read {}", module.display()))?;
    match keys.verify_file(module, &bytes) {
        Ok(signer) => {
            println!("ok: {} signed by {signer}", module.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(why) => {
            println!("FAILED: {}: {why}", module.display());
            Ok(ExitCode::from(1))
        }
    }
}
