//! The fake Perun binary (`fake-perun`), started on a free port.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use reqwest::StatusCode;
use serde_json::{Value, json};

/// The fake Perun, on a free port.
pub struct FakePerun {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl FakePerun {
    /// Starts it on 127.0.0.1.
    pub fn start() -> FakePerun {
        FakePerun::start_on("127.0.0.1")
    }

    /// Starts it on `host`.
    pub fn start_on(host: &str) -> FakePerun {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fake-perun"))
            .args(["0", host])
            .stderr(Stdio::piped())
            .spawn()
            .expect("fake-perun starts");
        let stderr = child.stderr.take().expect("piped");
        let mut line = String::new();
        BufReader::new(stderr).read_line(&mut line).expect("a line");
        let address = line
            .trim()
            .strip_prefix("listening on ")
            .expect("the address")
            .to_owned();
        FakePerun {
            child,
            url: format!("http://{address}"),
        }
    }

    /// The service's environment to use it (sync every second).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("OS_CREDITS_PERUN_URL", format!("{}/krb/rpc/json", self.url)),
            ("OS_CREDITS_PERUN_LOGIN", "oscredits".into()),
            ("OS_CREDITS_PERUN_PASSWORD", "secret".into()),
            ("OS_CREDITS_PERUN_VO_ID", "201".into()),
            ("OS_CREDITS_PERUN_SYNC_INTERVAL", "1".into()),
        ]
    }

    /// Creates group `name` with granted credits.
    pub fn group(&self, name: &str, id: i64, granted: &str) {
        self.add_group(
            &json!({ "name": name, "id": id, "attributes": { "denbiCreditsGranted": granted } }),
        );
    }

    /// Creates or replaces a group from the fake's `/_fake/groups` body.
    pub fn add_group(&self, body: &Value) {
        let response = super::http()
            .post(format!("{}/_fake/groups", self.url))
            .json(body)
            .send()
            .unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
    }

    /// Sets the faults.
    pub fn faults(&self, faults: Value) {
        let response = super::http()
            .put(format!("{}/_fake/faults", self.url))
            .json(&faults)
            .send()
            .unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
    }

    /// Everything it holds.
    pub fn state(&self) -> Value {
        super::get_json(&format!("{}/_fake/state", self.url))
    }

    /// Each group's `denbiCreditsCurrent` as published (groups without one
    /// left out).
    pub fn published(&self) -> std::collections::BTreeMap<String, String> {
        self.state()["groups"]
            .as_object()
            .expect("groups")
            .iter()
            .filter_map(|(name, g)| {
                Some((
                    name.clone(),
                    g["attributes"]["denbiCreditsCurrent"].as_str()?.to_owned(),
                ))
            })
            .collect()
    }
}

impl Drop for FakePerun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
