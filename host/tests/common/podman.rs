//! Podman with this machine's settings (`target/containers.conf`, which
//! scripts/engine.sh writes), the os-credits image that `make image`
//! builds, and the stack's images that `make stack-images` builds from
//! Debian's packages.

use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Instant;

/// The tag the tests build the os-credits image under.
pub const IMAGE: &str = "os-credits:test";

/// `make ARGS` from the repository's root, outside this cargo test.
fn make(args: &[&str]) -> Output {
    super::outside_cargo_test(&mut Command::new("make"))
        .current_dir(super::root())
        .args(args)
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL")
        .output()
        .expect("make runs")
}

/// Builds the image once per test process (`make image`, whose layers and
/// cache mounts make a rebuild compile only what changed).
pub fn image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let started = Instant::now();
        ok(
            "make image",
            make(&["-s", "image", &format!("IMAGE={IMAGE}")]),
        );
        println!("make image took {:.0?}", started.elapsed());
    });
    IMAGE
}

/// Builds the stack's images once per test process (`make stack-images`)
/// and returns the variables that point the compose files at them
/// (`INFLUXDB_IMAGE=...`), with `OS_CREDITS_IMAGE` for [`image`].
pub fn stack_images() -> &'static [(String, String)] {
    static BUILT: OnceLock<Vec<(String, String)>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let image = image();
        let started = Instant::now();
        let printed = ok("make stack-images", make(&["-s", "stack-images"]));
        println!("make stack-images took {:.0?}", started.elapsed());
        let mut variables: Vec<(String, String)> = printed
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect();
        assert_eq!(variables.len(), 4, "make stack-images printed {printed}");
        variables.push(("OS_CREDITS_IMAGE".to_owned(), image.to_owned()));
        variables
    })
}

/// The settings file scripts/engine.sh writes for this machine.
pub fn containers_conf() -> std::path::PathBuf {
    super::target_dir().join("containers.conf")
}

/// `podman ARGS` with this machine's settings.
pub fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .env("CONTAINERS_CONF", containers_conf())
        .args(args)
        .output()
        .expect("podman runs")
}

/// The standard output of a command that must have succeeded.
pub fn ok(what: &str, output: Output) -> String {
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A name no other test run uses (lowercase letters, digits and dashes).
pub fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("os-credits-test-{what}-{}-{nanos}", std::process::id())
}

/// The address of a running container on its (only) network.
pub fn address(container: &str) -> String {
    ok(
        "podman inspect",
        podman(&[
            "inspect",
            container,
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        ]),
    )
}

/// Makes `path` readable by the containers' users (which are not this
/// test's): folders 0755 and files 0644, recursively. A temporary folder
/// is 0700.
pub fn make_readable(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let directory = path.is_dir();
    let mode = if directory { 0o755 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("set permissions");
    if directory {
        for entry in std::fs::read_dir(path).expect("read the folder") {
            make_readable(&entry.expect("a folder entry").path());
        }
    }
}

/// A container's log (its standard output and error).
pub fn logs(container: &str) -> String {
    let output = podman(&["logs", container]);
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}
