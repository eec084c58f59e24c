//! Whether the routes are in. An adapter outside the engine (the relay's
//! Kubernetes API watch) names the sources the routes come from, each a
//! bit, and says when each has been read, answered for, or served from a
//! local copy because its origin did not answer. Until every source has been
//! read the engine delivers nothing and defers new mail; an origin that
//! answers "no such object" is an answer: mail waits.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};

/// Each atomic holds source bits.
#[derive(Default)]
pub struct Sources {
    /// Every source's bit and name, as the adapter gave them.
    named: Mutex<Vec<(u8, &'static str)>>,
    /// Not read yet.
    waiting: AtomicU8,
    /// The API has answered for them (with the object or without).
    answered: AtomicU8,
    /// Served from the mounted copy because the API did not answer.
    mounted: AtomicU8,
}

impl Sources {
    /// The routes wait for each of `sources` (bit, name).
    pub fn wait_for(&self, sources: &[(u8, &'static str)]) {
        let mut named = self.named.lock().unwrap_or_else(|e| e.into_inner());
        for &(bit, name) in sources {
            named.retain(|(b, _)| *b != bit);
            named.push((bit, name));
            self.waiting.fetch_or(bit, Ordering::AcqRel);
        }
    }

    /// The names of `sources`, for logs and reports.
    pub fn names(&self, sources: u8) -> Vec<&'static str> {
        let named = self.named.lock().unwrap_or_else(|e| e.into_inner());
        named
            .iter()
            .filter(|(bit, _)| sources & bit != 0)
            .map(|(_, name)| *name)
            .collect()
    }

    /// `source` has been read; true when it was the last one waited for.
    pub fn read(&self, source: u8) -> bool {
        let was = self.waiting.fetch_and(!source, Ordering::AcqRel);
        was != 0 && was & !source == 0
    }

    pub fn ready(&self) -> bool {
        self.waiting.load(Ordering::Acquire) == 0
    }

    pub fn answered(&self, source: u8) {
        self.answered.fetch_or(source, Ordering::AcqRel);
    }

    /// Which of `sources` are still unread with no answer from the API.
    pub fn unanswered(&self, sources: u8) -> u8 {
        sources & self.waiting.load(Ordering::Acquire) & !self.answered.load(Ordering::Acquire)
    }

    /// `source` is served from its mounted copy.
    pub fn mounted(&self, source: u8) {
        self.mounted.fetch_or(source, Ordering::AcqRel);
    }

    /// `source` came through the API; true when it had been served from the mount.
    pub fn via_api(&self, source: u8) -> bool {
        self.mounted.fetch_and(!source, Ordering::AcqRel) & source != 0
    }

    /// Sources served from their mounted copies now.
    pub fn from_mount(&self) -> u8 {
        self.mounted.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIGMAP: u8 = 1;
    const SECRET: u8 = 2;
    const BOTH: [(u8, &str); 2] = [(CONFIGMAP, "policy ConfigMap"), (SECRET, "routes Secret")];

    #[test]
    fn a_source_the_api_answered_for_is_never_served_from_the_mount() {
        let s = Sources::default();
        s.wait_for(&BOTH);
        assert_eq!(s.unanswered(CONFIGMAP | SECRET), CONFIGMAP | SECRET);
        s.answered(CONFIGMAP);
        assert_eq!(s.unanswered(CONFIGMAP | SECRET), SECRET);
        assert!(!s.read(SECRET));
        assert!(!s.ready());
        assert_eq!(
            s.unanswered(CONFIGMAP | SECRET),
            0,
            "read is not unanswered"
        );
        assert!(s.read(CONFIGMAP));
        assert!(s.ready());
    }

    #[test]
    fn mounted_sources_are_told_and_cleared_by_the_api() {
        let s = Sources::default();
        s.wait_for(&BOTH);
        s.mounted(SECRET);
        assert_eq!(s.names(s.from_mount()), ["routes Secret"]);
        assert!(!s.via_api(CONFIGMAP));
        assert!(s.via_api(SECRET));
        assert!(!s.via_api(SECRET));
        assert_eq!(s.from_mount(), 0);
    }
}
