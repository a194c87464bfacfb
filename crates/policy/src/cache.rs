//! Compiled policies kept on disk, so that a restart, or a reload of a
//! module seen before, activates without compiling it again (a Python
//! policy takes seconds to compile, its cached code milliseconds to load).
//!
//! An entry is named by the module's SHA-256 and the engine's compatibility
//! hash (wasmtime version, target, settings): code compiled by another
//! engine is never looked up. It is written to a temporary file, synced and
//! renamed (never seen half-written), and carries the SHA-256 of its code:
//! an entry that does not match is removed and the module compiled again,
//! never loaded. Entries not used for [`MAX_AGE`] are pruned, and at most
//! [`MAX_ENTRIES`] are kept (the least recently used go first).

use std::hash::Hasher;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// What an entry starts with (format version 1).
const MAGIC: &[u8; 8] = b"OSCRCWM1";
/// Entries kept at most.
pub const MAX_ENTRIES: usize = 32;
/// Entries not used for this long are pruned.
pub const MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// A folder of compiled policies.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
    engine_hash: String,
}

/// Feeds `Hash` output into SHA-256 (stable across processes, unlike
/// `DefaultHasher`'s contract).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

impl CompileCache {
    /// The cache in `dir` (created if missing) for code of `engine`.
    pub fn new(dir: &Path, engine: &Engine) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut hasher = ShaHasher(Sha256::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
        let engine_hash = hex::encode(&hasher.0.finalize()[..8]);
        Ok(CompileCache {
            dir: dir.to_owned(),
            engine_hash,
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir
            .join(format!("{sha256}-{}.cwasm", self.engine_hash))
    }

    /// The compiled module whose bytes hash to `sha256`, if cached and
    /// intact; a damaged or unloadable entry is removed (and logged).
    pub fn load(&self, engine: &Engine, sha256: &str) -> Option<Component> {
        let path = self.path(sha256);
        let data = match std::fs::read(&path) {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot read a compiled policy: {e}");
                return None;
            }
        };
        let code = match verified(&data) {
            Ok(code) => code,
            Err(why) => {
                tracing::warn!(path = %path.display(), "compiled policy {why}: removed, compiling the module again");
                let _ = std::fs::remove_file(&path);
                return None;
            }
        };
        // SAFETY: `Component::deserialize` must only be given bytes that
        // `Component::serialize` of a compatible engine produced. This
        // entry is one this cache wrote (in its own folder under the data
        // directory), for this engine's compatibility hash, and its SHA-256
        // was checked just now, so it is those bytes unchanged.
        match unsafe { Component::deserialize(engine, code) } {
            Ok(component) => {
                // Used now: the last to be pruned.
                let _ = std::fs::File::options()
                    .append(true)
                    .open(&path)
                    .and_then(|f| f.set_modified(SystemTime::now()));
                Some(component)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), "compiled policy not loadable ({e:#}): removed, compiling the module again");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores `component` (compiled from bytes hashing to `sha256`), then
    /// prunes. Failures are logged: the cache only saves time.
    pub fn store(&self, sha256: &str, component: &Component) {
        let stored = component
            .serialize()
            .map_err(std::io::Error::other)
            .and_then(|code| self.write(sha256, &code));
        if let Err(e) = stored {
            tracing::warn!(dir = %self.dir.display(), "cannot cache the compiled policy: {e}");
        }
        self.prune();
    }

    fn write(&self, sha256: &str, code: &[u8]) -> std::io::Result<()> {
        let path = self.path(sha256);
        let temporary = self.dir.join(format!(
            ".{sha256}-{}.{}.tmp",
            self.engine_hash,
            std::process::id()
        ));
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(MAGIC)?;
        file.write_all(&Sha256::digest(code))?;
        file.write_all(code)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temporary, &path).inspect_err(|_| {
            let _ = std::fs::remove_file(&temporary);
        })
    }

    /// Removes entries older than [`MAX_AGE`], then the least recently used
    /// beyond [`MAX_ENTRIES`], and temporary files left by a crash.
    pub fn prune(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let now = SystemTime::now();
        let mut kept = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let modified = entry.metadata().and_then(|m| m.modified()).ok();
            let age = modified.and_then(|m| now.duration_since(m).ok());
            let stale_temporary =
                name.ends_with(".tmp") && age.is_some_and(|a| a > Duration::from_secs(3600));
            let old = name.ends_with(".cwasm") && age.is_some_and(|a| a > MAX_AGE);
            if stale_temporary || old {
                let _ = std::fs::remove_file(&path);
            } else if name.ends_with(".cwasm") {
                kept.push((modified.unwrap_or(SystemTime::UNIX_EPOCH), path));
            }
        }
        if kept.len() > MAX_ENTRIES {
            kept.sort();
            for (_, path) in &kept[..kept.len() - MAX_ENTRIES] {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// The code of an entry, if its header and checksum hold.
fn verified(data: &[u8]) -> Result<&[u8], &'static str> {
    let header = MAGIC.len() + 32;
    if data.len() < header || &data[..MAGIC.len()] != MAGIC {
        return Err("has no valid header");
    }
    let (sum, code) = data[MAGIC.len()..].split_at(32);
    if Sha256::digest(code).as_slice() != sum {
        return Err("does not match its checksum");
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_verifies_only_unchanged() {
        let code = b"compiled code".to_vec();
        let mut entry = MAGIC.to_vec();
        entry.extend_from_slice(&Sha256::digest(&code));
        entry.extend_from_slice(&code);
        assert_eq!(verified(&entry), Ok(&code[..]));
        let mut flipped = entry.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(verified(&flipped).is_err());
        assert!(verified(&entry[..20]).is_err());
        assert!(verified(b"OSCRCWM0xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx").is_err());
    }

    #[test]
    fn pruning_keeps_the_most_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::default();
        let cache = CompileCache::new(dir.path(), &engine).unwrap();
        let base = SystemTime::now() - Duration::from_secs(1000);
        for i in 0..MAX_ENTRIES + 3 {
            let path = dir.path().join(format!("{i:064x}-x.cwasm"));
            std::fs::write(&path, b"x").unwrap();
            let file = std::fs::File::options().append(true).open(&path).unwrap();
            file.set_modified(base + Duration::from_secs(i as u64))
                .unwrap();
        }
        let old = dir.path().join("old-x.cwasm");
        std::fs::write(&old, b"x").unwrap();
        std::fs::File::options()
            .append(true)
            .open(&old)
            .unwrap()
            .set_modified(SystemTime::now() - MAX_AGE - Duration::from_secs(1))
            .unwrap();
        cache.prune();
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left.len(), MAX_ENTRIES);
        assert!(!left.contains(&"old-x.cwasm".to_owned()));
        assert!(!left.contains(&format!("{:064x}-x.cwasm", 0)));
        assert!(left.contains(&format!("{:064x}-x.cwasm", MAX_ENTRIES + 2)));
    }
}
