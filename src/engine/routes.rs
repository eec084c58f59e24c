//! Where the routes come from. With `--policy-configmap` (and
//! `--routes-secret`) the relay reads them through the Kubernetes API and,
//! until it has, delivers nothing and defers new mail. When the API does not
//! answer at all (control plane down, RBAC broken) the kubelet's mounted
//! copies are served after a bounded wait instead, until the API answers.
//! An API that answers "no such object" is an answer: mail waits.

use std::sync::atomic::{AtomicU8, Ordering};

/// The policy ConfigMap, a source of the routes.
pub const CONFIGMAP: u8 = 1;
/// The routes Secret, the other.
pub const SECRET: u8 = 2;

/// The sources' names, for logs and reports.
pub fn names(sources: u8) -> Vec<&'static str> {
    [(CONFIGMAP, "policy ConfigMap"), (SECRET, "routes Secret")]
        .into_iter()
        .filter(|(bit, _)| sources & bit != 0)
        .map(|(_, name)| name)
        .collect()
}

/// Each field holds `CONFIGMAP`/`SECRET` bits.
#[derive(Default)]
pub struct Sources {
    /// Not read yet.
    waiting: AtomicU8,
    /// The API has answered for them (with the object or without).
    answered: AtomicU8,
    /// Served from the mounted copy because the API did not answer.
    mounted: AtomicU8,
}

impl Sources {
    pub fn wait_for(&self, sources: u8) {
        self.waiting.fetch_or(sources, Ordering::AcqRel);
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

    #[test]
    fn a_source_the_api_answered_for_is_never_served_from_the_mount() {
        let s = Sources::default();
        s.wait_for(CONFIGMAP | SECRET);
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
        s.mounted(SECRET);
        assert_eq!(names(s.from_mount()), ["routes Secret"]);
        assert!(!s.via_api(CONFIGMAP));
        assert!(s.via_api(SECRET));
        assert!(!s.via_api(SECRET));
        assert_eq!(s.from_mount(), 0);
    }
}
