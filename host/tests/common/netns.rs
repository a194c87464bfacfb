//! A network namespace of the test's own, joined to this one by a veth
//! pair on a link-local /30 (`169.254.X.1` here, `169.254.X.2` inside), so
//! a test can run a replica whose network it cuts (`ip link set … down`)
//! and brings back, as a switch port or a cable would. Needs root (CI runs
//! as root) and iproute2's `ip`. Everything is removed when dropped.

use std::process::Command;

/// The namespace and its link.
pub struct Netns {
    /// The namespace's name (`ip netns exec NAME …`).
    pub name: String,
    /// The veth end in this namespace.
    link: String,
    /// This side's address.
    pub host: String,
    /// The address inside the namespace.
    pub inside: String,
}

fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("`ip` (iproute2) is needed for this test: {e}"));
    assert!(
        output.status.success(),
        "ip {args:?} failed (this test needs root for network namespaces): {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Netns {
    /// Makes the namespace and its link, up.
    pub fn new() -> Netns {
        let id = std::process::id();
        // A /30 of its own per test process (169.254.0.0/16 is link-local:
        // nothing beyond this machine is ever addressed).
        let (third, fourth) = ((id / 64) % 250 + 1, (id % 64) * 4);
        let netns = Netns {
            name: format!("osc-{id}"),
            link: format!("osc{id}a"),
            host: format!("169.254.{third}.{}", fourth + 1),
            inside: format!("169.254.{third}.{}", fourth + 2),
        };
        let peer = format!("osc{id}b");
        let _ = Command::new("ip")
            .args(["netns", "del", &netns.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &netns.link])
            .output();
        ip(&["netns", "add", &netns.name]);
        ip(&[
            "link",
            "add",
            &netns.link,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ]);
        ip(&["link", "set", &peer, "netns", &netns.name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", netns.host),
            "dev",
            &netns.link,
        ]);
        ip(&["link", "set", &netns.link, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &netns.name, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["addr", "add", &format!("{}/30", netns.inside), "dev", &peer]);
        inside(&["link", "set", &peer, "up"]);
        inside(&["link", "set", "lo", "up"]);
        netns
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Cuts the link (both directions: nothing arrives, nothing is refused).
    pub fn cut(&self) {
        ip(&["link", "set", &self.link, "down"]);
    }

    /// Brings the link back.
    pub fn mend(&self) {
        ip(&["link", "set", &self.link, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.link])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
