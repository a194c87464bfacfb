//! The Wasm policy host against real modules: the de.NBI policy reproduces
//! the original service's cases, and hostile modules fail one call with a
//! clear error within the limits while good policies keep working.

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::wasm;
use os_credits::billing::intake::Intake;
use os_credits::credits::round;
use os_credits::ingest::Precision;
use os_credits::policy::{CallError, Limits, LoadError, MAX_BATCH, Module, PolicyRuntime, Step};
use rust_decimal::Decimal;

const LIMITS: Limits = Limits {
    call_timeout: Duration::from_millis(50),
    memory_bytes: 16 << 20,
    module_bytes: 64 << 20,
};

fn runtime() -> &'static PolicyRuntime {
    static RUNTIME: OnceLock<PolicyRuntime> = OnceLock::new();
    RUNTIME.get_or_init(|| PolicyRuntime::new(LIMITS).expect("engine starts"))
}

fn load(package: &str, config: &str) -> Result<Module, LoadError> {
    runtime().load(&wasm(package), config)
}

fn denbi() -> Module {
    load("denbi-policy", "").expect("de.NBI policy loads")
}

const HOUR: i64 = 3_600_000_000_000;

fn usage<'a>(metric: &'a str, previous: &'a str, current: &'a str) -> Step<'a> {
    Step {
        metric,
        project: "p",
        location_id: "8676",
        tags: &[],
        previous: (0, previous),
        current: (HOUR, current),
    }
}

fn cpu_step() -> Step<'static> {
    usage("project_vcpu_usage", "100", "105")
}

#[test]
fn denbi_bills_five_credits_for_five_vcpu_hours() {
    assert_eq!(denbi().bill(&cpu_step()), Ok(Decimal::from(5)));
    let ram = usage("project_mb_usage", "0", "10");
    assert_eq!(
        denbi().bill(&ram).map(|d| d.normalize()),
        Ok(Decimal::from(3))
    );
}

#[test]
fn denbi_quotes_25_6_per_hour_for_16_cpus_and_32_gib() {
    let policy = denbi();
    let cpu = policy.cost_per_hour("project_vcpu_usage", Decimal::from(16), 0);
    let ram = policy.cost_per_hour("project_mb_usage", Decimal::from(32), 0);
    let total = round(cpu.unwrap(), 2) + round(ram.unwrap(), 2);
    assert_eq!(round(total, 2).to_string(), "25.60");
}

#[test]
fn denbi_reads_its_info_and_refuses_metrics_it_does_not_price() {
    let policy = denbi();
    let info = policy.info();
    assert_eq!(info.name, "denbi");
    assert_eq!(info.contract, "2.0.0");
    assert_eq!(info.sha256.len(), 64);
    let names: Vec<_> = info
        .metrics
        .iter()
        .map(|m| m.friendly_name.as_str())
        .collect();
    assert_eq!(names, ["cpu", "ram"]);
    let err = policy.bill(&usage("go_goroutines", "1", "2")).unwrap_err();
    assert!(
        matches!(&err, CallError::Refused(m) if m.contains("go_goroutines")),
        "{err}"
    );
}

#[test]
fn small_steps_accumulate_exactly_through_the_wasm_policy() {
    let policy = load("denbi-policy", "cpu_price = \"0.001\"").unwrap();
    let line = |value: u32| {
        format!("project_vcpu_usage,location_id=8676,project_name=p value={value} {value}\n")
    };
    let mut intake = Intake::new();
    let feed = |intake: &mut Intake, body: String| {
        let items = os_credits::ingest::lines(body.as_bytes(), Precision::Seconds, 0);
        intake.feed(&policy, items, |_| {}, |_, _, _| {});
        intake.book().project_total("p")
    };
    let five = feed(&mut intake, (0..=5).map(line).collect());
    assert_eq!(five.to_string(), "0.005");
    assert_eq!(round(five, 2).to_string(), "0.00");
    let six = feed(&mut intake, line(6));
    assert_eq!(six.to_string(), "0.006");
    assert_eq!(round(six, 2).to_string(), "0.01");
}

#[test]
fn the_configuration_is_validated_at_load() {
    let err = load("denbi-policy", "cpu_prize = 1").unwrap_err();
    assert!(
        matches!(&err, LoadError::Configure(m) if m.contains("unknown field")),
        "{err}"
    );
    let err = load("hostile-policy", "refuse").unwrap_err();
    assert_eq!(
        err.to_string(),
        "the policy refused its configuration: refusing this configuration"
    );
}

/// A hostile call fails with the expected error, in bounded time, drops the
/// instance, and leaves the runtime able to price with a good policy.
fn assert_contained(mode: &str, check: impl Fn(&CallError) -> bool) {
    let hostile = load("hostile-policy", mode).unwrap();
    assert_eq!(hostile.idle_instances(), 1);
    let started = Instant::now();
    let err = hostile.bill(&cpu_step()).unwrap_err();
    let took = started.elapsed();
    assert!(check(&err), "{mode}: unexpected error {err:?}");
    assert!(took < Duration::from_secs(2), "{mode}: took {took:?}");
    assert_eq!(
        hostile.idle_instances(),
        0,
        "{mode}: a failed instance was kept"
    );
    // The next call gets a fresh instance and fails the same way.
    assert!(check(&hostile.bill(&cpu_step()).unwrap_err()));
    // A good policy on the same runtime still works.
    assert_eq!(denbi().bill(&cpu_step()), Ok(Decimal::from(5)));
}

#[test]
fn an_infinite_loop_times_out_at_the_deadline() {
    let started = Instant::now();
    assert_contained("loop", |e| *e == CallError::Timeout(LIMITS.call_timeout));
    // two calls of 50 ms each, at least
    assert!(started.elapsed() >= 2 * LIMITS.call_timeout);
    assert_eq!(
        CallError::Timeout(LIMITS.call_timeout).to_string(),
        "policy call timed out after 50ms"
    );
}

#[test]
fn a_memory_bomb_hits_the_memory_cap() {
    assert_contained("bomb", |e| {
        *e == CallError::MemoryLimit(LIMITS.memory_bytes)
    });
}

#[test]
fn a_trap_is_an_error_of_that_call() {
    assert_contained(
        "trap",
        |e| matches!(e, CallError::Trap(m) if m.contains("unreachable")),
    );
}

#[test]
fn a_charge_that_is_not_a_decimal_or_negative_is_refused() {
    for mode in ["garbage", "negative"] {
        let hostile = load("hostile-policy", mode).unwrap();
        let err = hostile.bill(&cpu_step()).unwrap_err();
        assert!(matches!(err, CallError::BadResult(_)), "{mode}: {err:?}");
        // A wrong answer is not a trap: the instance stays usable.
        assert_eq!(hostile.idle_instances(), 1);
    }
    let ok = load("hostile-policy", "ok").unwrap();
    assert_eq!(ok.bill(&cpu_step()), Ok(Decimal::from(5)));
}

#[test]
fn a_wrong_contract_version_is_refused_at_load() {
    let err = load("contract-v1-policy", "").unwrap_err();
    assert!(
        matches!(&err, LoadError::Contract { found } if found == "1.0.0"),
        "{err:?}"
    );
    assert!(err.to_string().contains("this host speaks @2.0.0"));
    assert_eq!(denbi().bill(&cpu_step()), Ok(Decimal::from(5)));
}

#[test]
fn bytes_that_are_not_a_component_are_refused() {
    let err = runtime().load_bytes(b"not wasm at all", "").unwrap_err();
    assert!(matches!(err, LoadError::Compile(_)), "{err:?}");
    let missing = runtime()
        .load(std::path::Path::new("/nonexistent/policy.wasm"), "")
        .unwrap_err();
    assert!(missing.to_string().contains("/nonexistent/policy.wasm"));
}

#[test]
fn concurrent_calls_each_get_an_instance() {
    let policy = denbi();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..200 {
                    assert_eq!(policy.bill(&cpu_step()), Ok(Decimal::from(5)));
                }
            });
        }
    });
    let idle = policy.idle_instances();
    assert!((1..=4).contains(&idle), "{idle} instances");
}

/// A vCPU step for each project (values to be filled in).
fn steps(projects: &[String]) -> Vec<Step<'_>> {
    projects
        .iter()
        .map(|project| Step {
            project,
            ..usage("project_vcpu_usage", "0", "0")
        })
        .collect()
}

#[test]
fn a_batch_prices_every_step_in_order_across_calls() {
    // More steps than one call takes: priced in several calls, in order.
    let projects: Vec<String> = (0..MAX_BATCH * 2 + 7).map(|i| format!("p{i}")).collect();
    let values: Vec<(String, String)> = (0..projects.len())
        .map(|i| (i.to_string(), (2 * i + 1).to_string()))
        .collect();
    let usages: Vec<Step<'_>> = steps(&projects)
        .into_iter()
        .zip(&values)
        .map(|(usage, (previous, current))| Step {
            previous: (0, previous),
            current: (HOUR, current),
            ..usage
        })
        .collect();
    let policy = denbi();
    let batched = policy.bill_batch(&usages);
    let one_by_one: Vec<_> = usages.iter().map(|u| policy.bill(u)).collect();
    let expected: Vec<_> = (0..projects.len())
        .map(|i| Ok(Decimal::from(i as u64 + 1)))
        .collect();
    assert_eq!(batched, expected);
    assert_eq!(one_by_one, expected);
}

#[test]
fn a_step_that_breaks_the_policy_fails_alone_in_its_batch() {
    let projects: Vec<String> = ["a", "bad", "c"].map(String::from).to_vec();
    let values = [("1", "3"), ("1", "4"), ("1", "6")];
    let usages: Vec<Step<'_>> = steps(&projects)
        .into_iter()
        .zip(values)
        .map(|(usage, (previous, current))| Step {
            previous: (0, previous),
            current: (HOUR, current),
            ..usage
        })
        .collect();
    let hostile = load("hostile-policy", "trap-on:bad").unwrap();
    let priced = hostile.bill_batch(&usages);
    assert_eq!(priced[0], Ok(Decimal::from(2)));
    assert!(
        matches!(&priced[1], Err(CallError::Trap(m)) if m.contains("unreachable")),
        "{:?}",
        priced[1]
    );
    assert_eq!(priced[2], Ok(Decimal::from(5)));

    // A policy that answers a batch with the wrong number of charges
    // prices nothing, with an error that says so.
    let short = load("hostile-policy", "short").unwrap();
    for priced in short.bill_batch(&usages) {
        assert_eq!(
            priced,
            Err(CallError::ResultCount {
                steps: 1,
                results: 0
            })
        );
    }
    assert_eq!(denbi().bill_batch(&usages[..1]), vec![Ok(Decimal::from(2))]);
}
