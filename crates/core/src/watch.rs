//! Acting on changed files: a watcher on folders whose events, once the
//! folders have been quiet for a moment, call back on a thread of its own,
//! for as long as the owner lives. The policy folder and the write
//! credential files are re-read this way.

use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

/// Watches `folders` (not recursively); when a path for which `relevant`
/// holds changed and no further change came for `quiet`, calls `changed`
/// with the owner, on a thread named `name`. Stops once the owner is gone.
pub fn debounced<T: Send + Sync + 'static>(
    name: &str,
    folders: &[PathBuf],
    quiet: Duration,
    relevant: impl Fn(&Path) -> bool + Send + 'static,
    owner: Weak<T>,
    changed: impl Fn(&T) + Send + 'static,
) -> notify::Result<()> {
    let (events, changes) = channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && event.paths.iter().any(|p| relevant(p))
        {
            let _ = events.send(());
        }
    })?;
    for folder in folders {
        watcher.watch(folder, RecursiveMode::NonRecursive)?;
    }
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _watcher = watcher;
            while changes.recv().is_ok() {
                loop {
                    match changes.recv_timeout(quiet) {
                        Ok(()) => continue,
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
                match owner.upgrade() {
                    Some(owner) => changed(&owner),
                    None => return,
                }
            }
        })
        .map_err(|e| notify::Error::generic(&e.to_string()))?;
    Ok(())
}
