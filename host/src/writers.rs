//! Who may write measurements: the credentials of `/write` and
//! `/api/v1/write`, read from files an operator keeps, and the sites each
//! may bill.
//!
//! - **Users** (`OS_CREDITS_WRITE_USERS_FILE`): an htpasswd file with
//!   bcrypt hashes (`htpasswd -nbB user password` makes a line), as nginx
//!   and Prometheus' web config read it. Presented as HTTP Basic (an
//!   InfluxDB subscription's `http://user:password@host` URL, Prometheus'
//!   `basic_auth`) or as InfluxDB's `u`/`p` query parameters.
//! - **Tokens** (`OS_CREDITS_WRITE_TOKENS_FILE`): one per line, `TOKEN` or
//!   `NAME TOKEN`; the token as it is, as `sha256:HEX` (its SHA-256) or as
//!   a bcrypt hash. Presented as `Authorization: Bearer TOKEN`.
//! - **Scopes**: a comment line `# sites: 8676,8677` before a user or token
//!   limits it to those `location_id`s; without one it may bill every site.
//!
//! A bcrypt hash is verified once per credential and the answer kept (in
//! memory, bounded, keyed by a SHA-256 of the credential and the hash, so
//! an edited hash is verified again); plain and SHA-256 tokens are compared
//! in constant time. The files are re-read when they change; a file that
//! no longer reads keeps the last good credentials in force and says why
//! in `/stats` and the log.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::billing::scope::Scope;
use crate::sync::Locked;

/// Verified credentials remembered at most (then the memory starts over).
const REMEMBERED: usize = 4096;
/// How long the files must be quiet before they are read again.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Why the credential files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// A file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not what the format allows.
    #[error("{path}:{line}: {why}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: String,
    },
}

/// One who may write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Writer {
    /// The user, or the token's name.
    pub name: String,
    /// The sites it may bill; `None`: every site.
    pub scope: Option<Arc<Scope>>,
}

/// A credential as a request presents it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// HTTP Basic, or InfluxDB's `u` and `p`.
    Password {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
    /// `Authorization: Bearer`.
    Token(String),
}

impl Credential {
    /// The key its verification is remembered under: a digest of the
    /// credential and of the hash it was checked against.
    fn key(&self, hash: &str) -> [u8; 32] {
        let mut digest = Sha256::new();
        match self {
            Credential::Password { user, password } => {
                digest.update(b"password\0");
                digest.update(user.as_bytes());
                digest.update(b"\0");
                digest.update(password.as_bytes());
            }
            Credential::Token(token) => {
                digest.update(b"token\0");
                digest.update(token.as_bytes());
            }
        }
        digest.update(b"\0");
        digest.update(hash.as_bytes());
        digest.finalize().into()
    }
}

/// Why a request may not write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Denied {
    /// It presented no credential.
    Missing,
    /// Its credential is not (or no longer) one of the files'.
    Wrong,
}

impl Denied {
    /// The reason as `/stats` and `/metrics` name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Denied::Missing => "missing",
            Denied::Wrong => "wrong",
        }
    }
}

/// How a token is kept.
#[derive(Debug, Clone)]
enum Secret {
    Plain(Vec<u8>),
    Sha256([u8; 32]),
    Bcrypt(String),
}

/// The credentials as the files hold them.
#[derive(Debug, Default)]
struct Table {
    users: HashMap<String, (String, Arc<Writer>)>,
    tokens: Vec<(Secret, Arc<Writer>)>,
}

/// The outcome of a bcrypt verification, until the memory starts over.
#[derive(Default)]
struct Remembered {
    verified: HashMap<[u8; 32], bool>,
}

/// What `/stats` shows of the credentials.
#[derive(Debug, Clone, Serialize)]
pub struct WritersView {
    /// Whether writes require a credential.
    pub required: bool,
    /// Users in the users file.
    pub users: usize,
    /// Tokens in the tokens file.
    pub tokens: usize,
    /// Why the files last failed to read (the last good ones stay in force).
    pub error: Option<String>,
    /// Requests refused, per endpoint and reason.
    pub denied: BTreeMap<String, BTreeMap<String, u64>>,
    /// Points refused, per writer and reason.
    pub refused_points: BTreeMap<String, BTreeMap<String, u64>>,
}

/// The write credentials in force, and what they refused.
pub struct Writers {
    users_file: Option<PathBuf>,
    tokens_file: Option<PathBuf>,
    table: ArcSwap<Table>,
    remembered: Mutex<Remembered>,
    error: Mutex<Option<String>>,
    denied: Mutex<BTreeMap<(&'static str, Denied), u64>>,
    refused: Mutex<BTreeMap<(String, &'static str), u64>>,
}

impl Writers {
    /// The credentials of these files (either may be `None`; both `None`:
    /// writes are open). Fails when a named file does not read.
    pub fn open(
        users_file: Option<PathBuf>,
        tokens_file: Option<PathBuf>,
    ) -> Result<Writers, CredentialsError> {
        let table = read(users_file.as_deref(), tokens_file.as_deref())?;
        Ok(Writers::with(users_file, tokens_file, table))
    }

    /// Open writes: no credential files.
    pub fn open_to_all() -> Writers {
        Writers::with(None, None, Table::default())
    }

    fn with(users_file: Option<PathBuf>, tokens_file: Option<PathBuf>, table: Table) -> Writers {
        Writers {
            users_file,
            tokens_file,
            table: ArcSwap::from_pointee(table),
            remembered: Mutex::default(),
            error: Mutex::default(),
            denied: Mutex::default(),
            refused: Mutex::default(),
        }
    }

    /// Whether writes require a credential.
    pub fn required(&self) -> bool {
        self.users_file.is_some() || self.tokens_file.is_some()
    }

    /// Reads the files again; on failure the credentials in force stay and
    /// the error is kept for `/stats`.
    pub fn reload(&self) -> Result<(), CredentialsError> {
        match read(self.users_file.as_deref(), self.tokens_file.as_deref()) {
            Ok(table) => {
                let (users, tokens) = (table.users.len(), table.tokens.len());
                self.table.store(Arc::new(table));
                *self.error.locked() = None;
                tracing::info!(users, tokens, "write credentials read");
                Ok(())
            }
            Err(e) => {
                tracing::error!("write credentials not changed: {e}");
                *self.error.locked() = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// The writer `credential` stands for, if the answer is known without
    /// a bcrypt verification (`Some`); `None`: call [`Writers::verify`]
    /// (slow: off the async threads).
    pub fn known(&self, credential: Option<&Credential>) -> Option<Result<Arc<Writer>, Denied>> {
        let table = self.table.load();
        if !self.required() {
            return Some(Ok(open_writer()));
        }
        let Some(credential) = credential else {
            return Some(Err(Denied::Missing));
        };
        match credential {
            Credential::Password { user, .. } => {
                // An unknown user is verified against a stand-in hash: it
                // takes as long as a known user's wrong password.
                // (Made once, slowly: not here, on an async thread.)
                let (hash, writer) = match table.users.get(user) {
                    Some((hash, writer)) => (hash.as_str(), Some(writer)),
                    None => (STAND_IN.get()?.as_str(), None),
                };
                let verified = self
                    .remembered
                    .locked()
                    .verified
                    .get(&credential.key(hash))
                    .copied()?;
                Some(match writer {
                    Some(writer) if verified => Ok(writer.clone()),
                    _ => Err(Denied::Wrong),
                })
            }
            Credential::Token(token) => {
                let mut found = None;
                let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
                let mut hashed = false;
                // Every token is compared, whichever matches: no early exit.
                for (secret, writer) in &table.tokens {
                    let matches = match secret {
                        Secret::Plain(plain) => bool::from(plain.ct_eq(token.as_bytes())),
                        Secret::Sha256(sha) => bool::from(sha.ct_eq(&digest)),
                        Secret::Bcrypt(hash) => {
                            match self.remembered.locked().verified.get(&credential.key(hash)) {
                                Some(true) => true,
                                Some(false) => false,
                                None => {
                                    hashed = true;
                                    false
                                }
                            }
                        }
                    };
                    if matches && found.is_none() {
                        found = Some(writer.clone());
                    }
                }
                match found {
                    Some(writer) => Some(Ok(writer)),
                    None if hashed => None,
                    None => Some(Err(Denied::Wrong)),
                }
            }
        }
    }

    /// The writer `credential` stands for, verifying bcrypt hashes not yet
    /// verified (tens of milliseconds each) and remembering the answers.
    pub fn verify(&self, credential: Option<&Credential>) -> Result<Arc<Writer>, Denied> {
        if let Some(known) = self.known(credential) {
            return known;
        }
        let Some(credential) = credential else {
            return Err(Denied::Missing);
        };
        let table = self.table.load();
        let (candidates, secret): (Vec<(&str, &Arc<Writer>)>, &str) = match credential {
            Credential::Password { user, password } => match table.users.get(user) {
                Some((hash, writer)) => (vec![(hash.as_str(), writer)], password.as_str()),
                None => {
                    self.remember(credential, stand_in(), password);
                    return Err(Denied::Wrong);
                }
            },
            Credential::Token(token) => (
                table
                    .tokens
                    .iter()
                    .filter_map(|(secret, writer)| match secret {
                        Secret::Bcrypt(hash) => Some((hash.as_str(), writer)),
                        _ => None,
                    })
                    .collect(),
                token.as_str(),
            ),
        };
        let mut found = None;
        for (hash, writer) in candidates {
            if self.remember(credential, hash, secret) && found.is_none() {
                found = Some(writer.clone());
            }
        }
        found.ok_or(Denied::Wrong)
    }

    /// Whether `secret` matches `hash`, verified once per credential and
    /// hash, then remembered.
    fn remember(&self, credential: &Credential, hash: &str, secret: &str) -> bool {
        let key = credential.key(hash);
        if let Some(verified) = self.remembered.locked().verified.get(&key).copied() {
            return verified;
        }
        let verified = bcrypt::verify(secret, hash).unwrap_or(false);
        let mut memory = self.remembered.locked();
        if memory.verified.len() >= REMEMBERED {
            memory.verified.clear();
        }
        memory.verified.insert(key, verified);
        verified
    }

    /// Counts a refused request.
    pub fn count_denied(&self, endpoint: &'static str, why: Denied) {
        *self.denied.locked().entry((endpoint, why)).or_default() += 1;
    }

    /// Counts points refused from `writer`.
    pub fn count_refused(&self, writer: &str, reason: &'static str, points: usize) {
        if points > 0 {
            *self
                .refused
                .locked()
                .entry((writer.to_owned(), reason))
                .or_default() += points as u64;
        }
    }

    /// Requests refused, per endpoint and reason.
    pub fn denied(&self) -> Vec<(&'static str, Denied, u64)> {
        self.denied
            .locked()
            .iter()
            .map(|((endpoint, why), n)| (*endpoint, *why, *n))
            .collect()
    }

    /// Points refused, per writer and reason.
    pub fn refused(&self) -> Vec<(String, &'static str, u64)> {
        self.refused
            .locked()
            .iter()
            .map(|((writer, reason), n)| (writer.clone(), *reason, *n))
            .collect()
    }

    /// What `/stats` shows.
    pub fn view(&self) -> WritersView {
        let table = self.table.load();
        let mut denied: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for (endpoint, why, n) in self.denied() {
            denied
                .entry(endpoint.to_owned())
                .or_default()
                .insert(why.as_str().to_owned(), n);
        }
        let mut refused_points: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for (writer, reason, n) in self.refused() {
            refused_points
                .entry(writer)
                .or_default()
                .insert(reason.to_owned(), n);
        }
        WritersView {
            required: self.required(),
            users: table.users.len(),
            tokens: table.tokens.len(),
            error: self.error.locked().clone(),
            denied,
            refused_points,
        }
    }

    /// Re-reads the files when they change, on a thread of its own, for as
    /// long as `self` lives. Watches the folders that hold them (an editor
    /// or `mv` replaces a file rather than writing it).
    pub fn watch(self: &Arc<Self>) -> notify::Result<()> {
        let files: Vec<PathBuf> = [&self.users_file, &self.tokens_file]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        if files.is_empty() {
            return Ok(());
        }
        let names: BTreeSet<std::ffi::OsString> = files
            .iter()
            .filter_map(|f| f.file_name().map(ToOwned::to_owned))
            .collect();
        let folders: Vec<PathBuf> = files
            .iter()
            .map(|f| match f.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
                _ => PathBuf::from("."),
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        crate::watch::debounced(
            "credentials-watch",
            &folders,
            DEBOUNCE,
            move |path| path.file_name().is_some_and(|n| names.contains(n)),
            Arc::downgrade(self),
            |writers: &Writers| {
                let _ = writers.reload();
            },
        )
    }
}

/// A bcrypt hash no password is checked against but to take the time a
/// real one takes (for users not in the file).
static STAND_IN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// [`STAND_IN`], made on first use (a bcrypt hash: slow, off the async
/// threads).
fn stand_in() -> &'static str {
    STAND_IN.get_or_init(|| {
        bcrypt::hash("not a password of anyone", bcrypt::DEFAULT_COST).unwrap_or_default()
    })
}

/// The writer of open writes.
fn open_writer() -> Arc<Writer> {
    Arc::new(Writer {
        name: "anonymous".into(),
        scope: None,
    })
}

/// Both files into one table.
fn read(users: Option<&Path>, tokens: Option<&Path>) -> Result<Table, CredentialsError> {
    let mut table = Table::default();
    if let Some(path) = users {
        for (line, sites, text) in lines(path)? {
            let error = |why: String| CredentialsError::Line {
                path: path.to_owned(),
                line,
                why,
            };
            let Some((user, hash)) = text.split_once(':') else {
                return Err(error(
                    "expected user:hash (htpasswd -nbB user password)".into(),
                ));
            };
            if user.is_empty() {
                return Err(error("empty user name".into()));
            }
            if !is_bcrypt(hash) {
                return Err(error(format!(
                    "the hash of {user:?} is not bcrypt ($2y$…): make it with htpasswd -nbB"
                )));
            }
            let writer = Arc::new(Writer {
                name: user.to_owned(),
                scope: sites.map(|sites| Arc::new(Scope::from_text(user, &sites))),
            });
            if table
                .users
                .insert(user.to_owned(), (hash.to_owned(), writer))
                .is_some()
            {
                return Err(error(format!("user {user:?} appears twice")));
            }
        }
    }
    if let Some(path) = tokens {
        let mut names = BTreeSet::new();
        for (line, sites, text) in lines(path)? {
            let error = |why: String| CredentialsError::Line {
                path: path.to_owned(),
                line,
                why,
            };
            let mut words = text.split_whitespace();
            let (name, secret) = match (words.next(), words.next(), words.next()) {
                (Some(secret), None, None) => (format!("token-{}", table.tokens.len() + 1), secret),
                (Some(name), Some(secret), None) => (name.to_owned(), secret),
                _ => return Err(error("expected TOKEN or NAME TOKEN".into())),
            };
            let secret = if let Some(hex) = secret.strip_prefix("sha256:") {
                let mut digest = [0u8; 32];
                hex::decode_to_slice(hex, &mut digest)
                    .map_err(|_| error("sha256: needs 64 hexadecimal digits".into()))?;
                Secret::Sha256(digest)
            } else if is_bcrypt(secret) {
                Secret::Bcrypt(secret.to_owned())
            } else if secret.len() < 16 {
                return Err(error(format!(
                    "token {name:?} is shorter than 16 characters: too easy to guess"
                )));
            } else {
                Secret::Plain(secret.as_bytes().to_vec())
            };
            if !names.insert(name.clone()) {
                return Err(error(format!("token name {name:?} appears twice")));
            }
            let writer = Arc::new(Writer {
                scope: sites.map(|sites| Arc::new(Scope::from_text(&name, &sites))),
                name,
            });
            table.tokens.push((secret, writer));
        }
    }
    Ok(table)
}

fn is_bcrypt(hash: &str) -> bool {
    ["$2a$", "$2b$", "$2x$", "$2y$"]
        .iter()
        .any(|prefix| hash.starts_with(prefix))
        && hash.parse::<bcrypt::HashParts>().is_ok()
}

/// The credential lines of a file: (line number, the `# sites:` before
/// it, the line), blank lines and other comments skipped.
fn lines(path: &Path) -> Result<Vec<(usize, Option<String>, String)>, CredentialsError> {
    let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut out = Vec::new();
    let mut sites: Option<String> = None;
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            if let Some(list) = comment.trim().strip_prefix("sites:") {
                let list = list.trim();
                if list.is_empty() {
                    return Err(CredentialsError::Line {
                        path: path.to_owned(),
                        line: index + 1,
                        why: "`# sites:` names no site (leave the line out for every site)".into(),
                    });
                }
                sites = Some(list.to_owned());
            }
            continue;
        }
        out.push((index + 1, sites.take(), line.to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(password: &str) -> String {
        bcrypt::hash(password, 4).unwrap()
    }

    fn password(user: &str, password: &str) -> Credential {
        Credential::Password {
            user: user.into(),
            password: password.into(),
        }
    }

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new(users: &str, tokens: &str) -> Files {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("users"), users).unwrap();
            std::fs::write(dir.path().join("tokens"), tokens).unwrap();
            Files { dir }
        }
        fn users(&self) -> PathBuf {
            self.dir.path().join("users")
        }
        fn tokens(&self) -> PathBuf {
            self.dir.path().join("tokens")
        }
        fn open(&self) -> Result<Writers, CredentialsError> {
            Writers::open(Some(self.users()), Some(self.tokens()))
        }
    }

    #[test]
    fn users_and_tokens_with_scopes() {
        let sha = hex::encode(Sha256::digest(b"hashed-token-0123456789"));
        let files = Files::new(
            &format!(
                "# the site exporters\n# sites: 8676, 8677\nexporter:{}\n\nadmin:{}\n",
                hash("secret"),
                hash("root")
            ),
            &format!(
                "prometheus plain-token-0123456789\n# sites: 8678\nsha256:{sha}\nbcrypted {}\n",
                hash("bcrypt-token-0123456789")
            ),
        );
        let writers = files.open().unwrap();
        assert!(writers.required());
        let exporter = writers
            .verify(Some(&password("exporter", "secret")))
            .unwrap();
        assert_eq!(exporter.name, "exporter");
        let scope = exporter.scope.as_ref().unwrap();
        assert!(scope.allows("8676") && scope.allows("8677") && !scope.allows("8678"));
        // the scope applies to the next user only
        let admin = writers.verify(Some(&password("admin", "root"))).unwrap();
        assert_eq!(admin.scope, None);
        let token = |t: &str| writers.verify(Some(&Credential::Token(t.into())));
        assert_eq!(token("plain-token-0123456789").unwrap().name, "prometheus");
        let hashed = token("hashed-token-0123456789").unwrap();
        assert_eq!(hashed.name, "token-2");
        assert_eq!(hashed.scope.as_ref().unwrap().sites_text(), "8678");
        assert_eq!(token("bcrypt-token-0123456789").unwrap().name, "bcrypted");
        assert_eq!(token("plain-token-012345678"), Err(Denied::Wrong));
        assert_eq!(
            writers.verify(Some(&password("exporter", "Secret"))),
            Err(Denied::Wrong)
        );
        assert_eq!(
            writers.verify(Some(&password("nobody", "secret"))),
            Err(Denied::Wrong)
        );
        assert_eq!(writers.verify(None), Err(Denied::Missing));
    }

    #[test]
    fn a_bcrypt_verification_is_remembered() {
        let files = Files::new(&format!("exporter:{}\n", hash("secret")), "");
        let writers = files.open().unwrap();
        let right = password("exporter", "secret");
        let wrong = password("exporter", "guess");
        assert_eq!(writers.known(Some(&right)), None, "not verified yet");
        assert!(writers.verify(Some(&right)).is_ok());
        assert!(matches!(writers.known(Some(&right)), Some(Ok(_))));
        assert_eq!(writers.known(Some(&wrong)), None);
        assert_eq!(writers.verify(Some(&wrong)), Err(Denied::Wrong));
        assert_eq!(writers.known(Some(&wrong)), Some(Err(Denied::Wrong)));
        // an unknown user takes the stand-in's verification, then is remembered
        let stranger = password("stranger", "secret");
        assert_eq!(writers.known(Some(&stranger)), None);
        assert_eq!(writers.verify(Some(&stranger)), Err(Denied::Wrong));
        assert_eq!(writers.known(Some(&stranger)), Some(Err(Denied::Wrong)));
    }

    #[test]
    fn a_changed_file_revokes_and_a_broken_one_keeps_the_last_good() {
        let files = Files::new(&format!("a:{}\nb:{}\n", hash("pa"), hash("pb")), "");
        let writers = files.open().unwrap();
        assert!(writers.verify(Some(&password("b", "pb"))).is_ok());
        std::fs::write(files.users(), format!("a:{}\n", hash("pa"))).unwrap();
        writers.reload().unwrap();
        assert_eq!(
            writers.verify(Some(&password("b", "pb"))),
            Err(Denied::Wrong)
        );
        assert!(writers.verify(Some(&password("a", "pa"))).is_ok());
        // a new hash for a: the remembered answer does not apply to it
        std::fs::write(files.users(), format!("a:{}\n", hash("new"))).unwrap();
        writers.reload().unwrap();
        assert_eq!(
            writers.verify(Some(&password("a", "pa"))),
            Err(Denied::Wrong)
        );
        assert!(writers.verify(Some(&password("a", "new"))).is_ok());
        std::fs::write(files.users(), "a:{SHA}x\n").unwrap();
        let e = writers.reload().unwrap_err().to_string();
        assert!(e.contains("users:1") && e.contains("bcrypt"), "{e}");
        assert!(writers.verify(Some(&password("a", "new"))).is_ok());
        assert!(writers.view().error.unwrap().contains("bcrypt"));
    }

    #[test]
    fn bad_lines_are_named() {
        let cases = [
            ("nocolon\n", "", "users:1", "user:hash"),
            ("a:$apr1$x$y\n", "", "users:1", "bcrypt"),
            ("# sites:\na:x\n", "", "users:1", "names no site"),
            ("", "short\n", "tokens:1", "16 characters"),
            ("", "a b c\n", "tokens:1", "NAME TOKEN"),
            ("", "sha256:zz\n", "tokens:1", "64 hexadecimal"),
            (
                "",
                "x token-0123456789abcdef\nx token-0123456789abcdeg\n",
                "tokens:2",
                "twice",
            ),
        ];
        for (users, tokens, place, why) in cases {
            let files = Files::new(users, tokens);
            let e = files.open().err().unwrap().to_string();
            assert!(
                e.contains(place) && e.contains(why),
                "{users:?} {tokens:?}: {e}"
            );
        }
        let user = hash("p");
        let files = Files::new(&format!("a:{user}\na:{user}\n"), "");
        assert!(files.open().err().unwrap().to_string().contains("twice"));
        assert!(
            Writers::open(Some(PathBuf::from("/nonexistent/users")), None)
                .err()
                .unwrap()
                .to_string()
                .contains("/nonexistent/users")
        );
    }

    #[test]
    fn open_writes_need_nothing() {
        let writers = Writers::open_to_all();
        assert!(!writers.required());
        assert_eq!(writers.verify(None).unwrap().scope, None);
        assert!(writers.view().users == 0 && !writers.view().required);
    }
}
