//! File-system notifications (inotify, FSEvents, ... through the `notify` crate) turned into a
//! channel of paths to look at. What is watched follows a plan the scanner recomputes: each
//! existing notebooks directory recursively, the nearest existing parent of a missing one (so it
//! is picked up as soon as it appears), and the users file's directory.

use std::{collections::HashMap, path::PathBuf};

use notify::{
    Config, Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher as _,
    event::{AccessKind, AccessMode},
};
use tokio::sync::mpsc;

pub struct Watcher {
    inner: RecommendedWatcher,
    current: HashMap<PathBuf, RecursiveMode>,
}

impl Watcher {
    /// Starts watching nothing; changed paths go to `tx`. A `None` tells that events were lost
    /// (queue overflow): the receiver should scan everything.
    pub fn new(tx: mpsc::UnboundedSender<Option<PathBuf>>) -> notify::Result<Self> {
        let handler = move |result: notify::Result<Event>| match result {
            Ok(event) if is_change(&event.kind) => {
                if event.need_rescan() {
                    let _ = tx.send(None);
                }
                for path in event.paths {
                    let _ = tx.send(Some(path));
                }
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(error = %err, "file notifications failed; rescanning");
                let _ = tx.send(None);
            }
        };
        let inner =
            RecommendedWatcher::new(handler, Config::default().with_follow_symlinks(false))?;
        Ok(Self {
            inner,
            current: HashMap::new(),
        })
    }

    /// Watches exactly `plan`.
    pub fn sync(&mut self, plan: HashMap<PathBuf, RecursiveMode>) {
        let stale: Vec<PathBuf> = self
            .current
            .iter()
            .filter(|(path, mode)| plan.get(*path) != Some(mode))
            .map(|(path, _)| path.clone())
            .collect();
        for path in stale {
            let _ = self.inner.unwatch(&path);
            self.current.remove(&path);
        }
        for (path, mode) in plan {
            if self.current.contains_key(&path) {
                continue;
            }
            match self.inner.watch(&path, mode) {
                Ok(()) => {
                    self.current.insert(path, mode);
                }
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "cannot watch; the periodic scan still covers it")
                }
            }
        }
    }
}

fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Remove(_) => false,
        _ => true,
    }
}
