//! A real PostgreSQL server for the tests (Debian's `postgresql`), started
//! in a temporary folder with `initdb` and `pg_ctl` on a free port, as the
//! `postgres` user when the tests run as root (PostgreSQL refuses root).
//! `PG_BIN` names the folder of the server's programs if they are elsewhere.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running server; stopped when dropped.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    /// Its `pg_ctl -o` options (port, socket folder, addresses, settings).
    options: String,
}

fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .filter(|bin| bin.join("pg_ctl").is_file())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL is needed for this test and was not found: install Debian's \
             `postgresql` package (make test does, see scripts/test-programs.sh) or set PG_BIN"
        )
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl Postgres {
    fn run(&self, program: &str, args: &[&str]) {
        let path = self.bin.join(program);
        let mut command = if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&path);
            command
        } else {
            Command::new(&path)
        };
        let output = command
            .args(args)
            .output()
            .expect("a PostgreSQL program runs");
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Starts a fresh server for tests (`fsync=off`: nothing it holds
    /// must outlive the machine).
    pub fn start() -> Postgres {
        Self::start_with("-c fsync=off")
    }

    /// Starts a fresh server with `settings` (`-c name=value ...`).
    pub fn start_with(settings: &str) -> Postgres {
        Self::start_listening(settings, None)
    }

    /// Starts a fresh server that also listens on `extra` (an address of
    /// this machine, trusted from its /30), with `settings`.
    pub fn start_listening(settings: &str, extra: Option<&str>) -> Postgres {
        let dir = tempfile::tempdir().expect("temp dir");
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Postgres {
            bin: bin_dir(),
            port,
            dir,
            options: String::new(),
        };
        let data = server.data();
        server.run(
            "initdb",
            &[
                "-D",
                &data,
                "--auth=trust",
                "--username=postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        let listen = match extra {
            Some(address) => {
                let hba = server.dir.path().join("data").join("pg_hba.conf");
                let mut rules = std::fs::read_to_string(&hba).expect("pg_hba.conf");
                rules.push_str(&format!("host all all {address}/30 trust\n"));
                std::fs::write(&hba, rules).expect("pg_hba.conf written");
                format!("'127.0.0.1,{address}'")
            }
            None => "127.0.0.1".to_owned(),
        };
        server.options = format!(
            "-p {port} -k {} -c listen_addresses={listen} -c max_connections=200 {settings}",
            server.dir.path().display()
        );
        server.start_again();
        server.reap_with_this_process();
        server
    }

    /// Stops the server once this test process has exited, however it
    /// ends: a server held in a `static` is never dropped, and a test that
    /// panics or is killed never drops its own. (The watcher runs as the
    /// server's user, which may not signal this process: it watches
    /// `/proc` instead.)
    fn reap_with_this_process(&self) {
        // Backgrounded by the shell, which exits at once: the watcher is
        // nobody's child here and outlives this process.
        let script = format!(
            "(while [ -e /proc/{pid} ]; do sleep 1; done; \
              '{pg_ctl}' -D '{data}' -m immediate stop) >/dev/null 2>&1 </dev/null &",
            pid = std::process::id(),
            pg_ctl = self.bin.join("pg_ctl").display(),
            data = self.data(),
        );
        let mut command = if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--", "sh", "-c", &script]);
            command
        } else {
            let mut command = Command::new("sh");
            command.args(["-c", &script]);
            command
        };
        let status = command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("the server's reaper starts");
        assert!(status.success(), "the server's reaper did not start");
    }

    /// Stops the server (fast: open sessions are ended), keeping its data.
    pub fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    /// Starts the server on its data, port and settings (again, after
    /// [`Postgres::stop`]).
    pub fn start_again(&self) {
        let log = self.dir.path().join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &self.options,
                "-l",
                &log.display().to_string(),
                "-w",
                "start",
            ],
        );
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// A new, empty database; its URL.
    pub fn database(&self, name: &str) -> String {
        self.database_at(name, "127.0.0.1")
    }

    /// A new, empty database; its URL through `address`.
    pub fn database_at(&self, name: &str, address: &str) -> String {
        let admin = format!("postgres://postgres@127.0.0.1:{}/postgres", self.port);
        let mut client = postgres::Client::connect(&admin, postgres::NoTls).expect("connects");
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("database created");
        format!("postgres://postgres@{address}:{}/{name}", self.port)
    }

    /// The server's folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data();
        let path = self.bin.join("pg_ctl");
        let mut command = if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&path);
            command
        } else {
            Command::new(&path)
        };
        let _ = command
            .args(["-D", &data, "-m", "immediate", "stop"])
            .output();
    }
}
