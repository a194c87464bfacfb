//! Command-line interface: argument parsing and dispatch.

mod ledger;
mod policy;
mod scaffold;
mod serve;
mod service;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use os_credits::config::{DataDir, LedgerArgs, LedgerPlace, PolicyLimitArgs};
use os_credits::policy::PolicyRuntime;

/// Credits engine for OpenStack clouds, with pricing policies in WebAssembly.
#[derive(Debug, Parser)]
#[command(name = "os-credits", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (tracing EnvFilter directives), e.g. `os_credits=debug`.
    #[arg(long, global = true, env = "OS_CREDITS_LOG", default_value = "info")]
    log: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the billing service.
    Serve(Box<os_credits::config::ServeConfig>),
    /// Work with pricing policies (Wasm modules built with pricing-sdk).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Read the ledger (works while the service runs; never writes).
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Correct past prices through the running service: preview, apply, list.
    #[command(subcommand)]
    Correction(service::CorrectionCommand),
    /// A statement from the running service: per project, site, metric and
    /// price what was used and charged in a period, with every correction.
    Statement(Box<service::StatementArgs>),
    /// Ask a running service whether it is alive (`GET /ping`); exit 0 if
    /// it answers `Pong`. The container's HEALTHCHECK.
    Ping {
        /// The service's address.
        #[arg(long, env = "CREDITS_PORT", default_value_t = 80)]
        port: u16,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
}

#[derive(Debug, Subcommand)]
enum LedgerCommand {
    /// A project's charges, each with the policy (name, version, sha256) that priced it.
    Charges {
        /// The project (Perun group name).
        #[arg(long)]
        project: String,
        #[command(flatten)]
        ledger: LedgerLocation,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Every change of credits used that no charge explains: values adopted
    /// from Perun on first contact and hand edits found there.
    Adjustments {
        /// Only this project.
        #[arg(long)]
        project: Option<String>,
        #[command(flatten)]
        ledger: LedgerLocation,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Copies a SQLite ledger into an empty PostgreSQL one (moving to
    /// replicas); refuses a target that holds anything.
    Copy {
        /// The service's data directory (the SQLite ledger to copy).
        #[command(flatten)]
        data_dir: DataDir,
        /// The PostgreSQL ledger to fill (`postgres://…`).
        #[arg(long)]
        to: String,
    },
}

/// Where the ledger is: the SQLite file in the data directory, or PostgreSQL.
#[derive(Debug, Args)]
pub struct LedgerLocation {
    /// The ledger: SQLite in the data directory, or PostgreSQL.
    #[command(flatten)]
    ledger: LedgerArgs,
}

impl LedgerLocation {
    /// The ledger, for reading (SQLite read-only; works while the service runs).
    fn open(&self) -> anyhow::Result<Box<dyn os_credits::ledger::Reads>> {
        match self.ledger.place()? {
            LedgerPlace::Postgres(url) => Ok(Box::new(os_credits::ledger::Store::postgres(
                url,
                Default::default(),
                "os-credits ledger reader",
            )?)),
            LedgerPlace::Sqlite(dir) => {
                Ok(Box::new(os_credits::ledger::Store::sqlite_read_only(dir)?))
            }
        }
    }

    /// Where it is, for messages.
    fn describe(&self) -> String {
        match self.ledger.place() {
            Ok(LedgerPlace::Postgres(_)) => "the PostgreSQL ledger".into(),
            Ok(LedgerPlace::Sqlite(dir)) => dir.display().to_string(),
            Err(e) => e.to_string(),
        }
    }
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Start a policy: a Rust crate `policies/NAME` (or with `--python` a
    /// package `policies/python/NAME`) with unit tests, example
    /// measurements and the credits they must give; `make` builds it and
    /// `make test` runs its tests, with no other file to edit.
    New {
        /// Lowercase letters, digits and dashes, e.g. `my-site`.
        name: String,
        /// A Python policy (componentize-py) instead of a Rust one.
        #[arg(long)]
        python: bool,
        /// The `policies` folder of the os-credits workspace.
        #[arg(long, default_value = "policies")]
        dir: PathBuf,
    },
    /// Load a module, validate it (contract, configuration, self-test) and print its info.
    Check {
        /// The policy module (`.wasm` component).
        module: PathBuf,
        #[command(flatten)]
        options: PolicyOptions,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Replay measurements (line protocol) through a policy and print the credits billed.
    Run {
        /// The policy module (`.wasm` component), or with `--mapping` a
        /// `policies.toml` (its modules beside it).
        module: PathBuf,
        /// Price with the schedule of the mapping given as MODULE: its
        /// entries from the beginning of time, its `[[changes]]` from their
        /// `from` (a step spanning one split there).
        #[arg(long)]
        mapping: bool,
        /// Measurements in InfluxDB line protocol, as `/write` receives them (`-` for stdin).
        measurements: PathBuf,
        #[command(flatten)]
        options: PolicyOptions,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Unit of the timestamps in the file: n, u, ms, s, m or h.
        #[arg(long, default_value = "n")]
        precision: String,
        /// Decimal places of rounded totals (half-even).
        #[arg(long, env = "OS_CREDITS_PRECISION", default_value_t = 2)]
        decimals: u32,
    },
    /// Bill measurements through a policy and compare the exact credits per
    /// project and in total with an expected file; exit 0 when equal, 1
    /// with the differences, 2 on an error.
    Test {
        /// The policy module (`.wasm` component), or with `--mapping` a
        /// `policies.toml` (its modules beside it).
        module: PathBuf,
        /// Price with the schedule of the mapping given as MODULE (as
        /// `policy run --mapping`).
        #[arg(long)]
        mapping: bool,
        /// Measurements in InfluxDB line protocol, as `/write` receives them (`-` for stdin).
        measurements: PathBuf,
        /// The expected credits (`{"projects": {"name": "1.5"}, "total": "1.5"}`,
        /// as `examples/stack-sample.expected.json`).
        #[arg(long)]
        expect: PathBuf,
        /// Write the expected file from what the policy bills instead.
        #[arg(long)]
        update: bool,
        #[command(flatten)]
        options: PolicyOptions,
        /// Unit of the timestamps in the file: n, u, ms, s, m or h.
        #[arg(long, default_value = "n")]
        precision: String,
    },
    /// Make an Ed25519 key pair for signing policies: KEY (private, OpenSSH
    /// format, mode 0600) and KEY.pub (the line for the trusted keys).
    Keygen {
        /// Where to write the private key (the public one goes to KEY.pub).
        #[arg(long)]
        out: PathBuf,
        /// The keys' comment (who signs).
        #[arg(long, default_value = "os-credits policy signing")]
        comment: String,
    },
    /// Sign a module: writes MODULE.sig beside it (SSHSIG, namespace
    /// `os-credits-policy`, as `ssh-keygen -Y sign` makes).
    Sign {
        /// The policy module.
        module: PathBuf,
        /// The private key (OpenSSH Ed25519, unencrypted).
        #[arg(long)]
        key: PathBuf,
    },
    /// Check a module's signature (MODULE.sig) against trusted public keys:
    /// exit 0 and the signer, or 1 and why not.
    Verify {
        /// The policy module.
        module: PathBuf,
        /// The trusted public keys (OpenSSH, one per line).
        #[arg(long, env = "OS_CREDITS_POLICY_TRUSTED_KEYS")]
        trusted_keys: PathBuf,
    },
    /// Dry run: price the ledger's recorded steps of a period with another module; writes nothing.
    Rerate {
        /// The policy module to compare with, or with `--mapping` a
        /// `policies.toml` (its modules beside it).
        module: PathBuf,
        /// Re-rate with the schedule of the mapping given as MODULE (as
        /// `policy run --mapping`).
        #[arg(long)]
        mapping: bool,
        /// Start of the period (UTC): `2024-05-02`, `2024-05-02 01:00:00` or RFC 3339.
        #[arg(long)]
        from: String,
        /// End of the period, exclusive (same forms).
        #[arg(long)]
        to: String,
        #[command(flatten)]
        options: PolicyOptions,
        #[command(flatten)]
        ledger: LedgerLocation,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

/// How a policy is loaded and limited.
#[derive(Debug, Args)]
struct PolicyOptions {
    /// Site configuration for the policy (TOML or JSON).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Limits on the module and its calls.
    #[command(flatten)]
    limits: PolicyLimitArgs,
    /// Keep compiled modules in this folder, so that the next run of the
    /// same module does not compile it again (e.g. a service's
    /// `<data dir>/policy-cache`).
    #[arg(long, env = "OS_CREDITS_POLICY_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
}

impl PolicyOptions {
    fn runtime(&self) -> anyhow::Result<PolicyRuntime> {
        let mut runtime = PolicyRuntime::new(self.limits.limits())?;
        if let Some(dir) = &self.cache_dir {
            runtime.use_cache(dir).map_err(|e| {
                anyhow::anyhow!("cannot use the compile cache {}: {e}", dir.display())
            })?;
        }
        Ok(runtime)
    }

    fn config_text(&self) -> anyhow::Result<String> {
        match &self.config {
            None => Ok(String::new()),
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read policy config {}: {e}", path.display())),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Aligned columns for people.
    Table,
    /// One JSON object for programs.
    Json,
}

/// Logs go to stderr so that command output on stdout stays clean.
/// The filter can be replaced at runtime (`POST /logconfig`).
pub fn init_tracing(cli: &Cli) -> os_credits::api::LogFilter {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, fmt, reload};
    let filter = EnvFilter::try_new(&cli.log).unwrap_or_else(|e| {
        eprintln!(
            "warning: OS_CREDITS_LOG {:?} is not a valid filter ({e}); using info",
            cli.log
        );
        EnvFilter::new("info")
    });
    let (filter, handle) = reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            fmt::layer()
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr),
        )
        .init();
    std::sync::Arc::new(move |directives: &str| {
        let filter = EnvFilter::try_new(directives)?;
        Ok(handle.reload(filter)?)
    })
}

/// Runs the command.
pub fn run(cli: Cli, log_filter: os_credits::api::LogFilter) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(config) => serve::serve(*config, log_filter),
        Command::Policy(PolicyCommand::Check {
            module,
            options,
            format,
        }) => policy::check(&module, &options, format),
        Command::Policy(PolicyCommand::New { name, python, dir }) => {
            let folder = scaffold::new(&name, python, &dir)?;
            let kind = if python { "Python" } else { "Rust" };
            println!("created the {kind} policy {name} in {}", folder.display());
            println!(
                "next: `make test` runs its tests and examples, `make policies` builds policies/dist/{name}.wasm"
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(PolicyCommand::Keygen { out, comment }) => policy::keygen(&out, &comment),
        Command::Policy(PolicyCommand::Sign { module, key }) => policy::sign(&module, &key),
        Command::Policy(PolicyCommand::Verify {
            module,
            trusted_keys,
        }) => policy::verify(&module, &trusted_keys),
        Command::Policy(PolicyCommand::Test {
            module,
            mapping,
            measurements,
            expect,
            update,
            options,
            precision,
        }) => Ok(policy::test(
            &module,
            mapping,
            &measurements,
            &expect,
            &options,
            &precision,
            update,
        )),
        Command::Policy(PolicyCommand::Run {
            module,
            mapping,
            measurements,
            options,
            format,
            precision,
            decimals,
        }) => policy::run(
            &module,
            mapping,
            &measurements,
            &options,
            format,
            &precision,
            decimals,
        ),
        Command::Policy(PolicyCommand::Rerate {
            module,
            mapping,
            from,
            to,
            options,
            ledger,
            format,
        }) => policy::rerate(&module, mapping, &from, &to, &options, &ledger, format),
        Command::Ledger(LedgerCommand::Charges {
            project,
            ledger,
            format,
        }) => ledger::charges(&project, &ledger, format),
        Command::Ledger(LedgerCommand::Adjustments {
            project,
            ledger,
            format,
        }) => ledger::adjustments(project.as_deref(), &ledger, format),
        Command::Ledger(LedgerCommand::Copy { data_dir, to }) => ledger::copy(&data_dir.path, &to),
        Command::Ping { port, timeout } => ping(port, timeout),
        Command::Correction(command) => service::correction(command),
        Command::Statement(args) => service::statement(*args),
    }
}

/// `os-credits ping`: `GET /ping` on 127.0.0.1 (reqwest).
fn ping(port: u16, timeout: u64) -> anyhow::Result<ExitCode> {
    let url = format!("http://127.0.0.1:{port}/ping");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer: anyhow::Result<(reqwest::StatusCode, String)> = runtime.block_on(async {
        let client = os_credits::http::client(std::time::Duration::from_secs(timeout))?;
        let response = client.get(&url).send().await?;
        let status = response.status();
        Ok((status, response.text().await?))
    });
    match answer {
        Ok((status, body)) if status.is_success() && body == "Pong" => {
            println!("Pong");
            Ok(ExitCode::SUCCESS)
        }
        Ok((status, body)) => anyhow::bail!("{url} answered {status}: {body:?}, not Pong"),
        Err(e) => anyhow::bail!("no answer from {url}: {e:#}"),
    }
}
