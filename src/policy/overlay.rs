//! Files known before the kubelet writes them, watched through the
//! Kubernetes API: the policy ConfigMap's keys (Lua source, read before the
//! disk by the loader and `require`) and the routes Secret's keys (read
//! before the disk by `kumo.secret_load`). Shared by every policy version.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Where a relay pod finds the routes Secret's keys (mounted, or watched).
pub const DEFAULT_SECRETS_DIR: &str = "/etc/amqp-relay/routes";

/// The key of the routes Secret that keys the digests of the others.
pub const DIGEST_KEY: &str = "digest-key";

#[derive(Clone, Default)]
pub struct Overlay {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    files: HashMap<PathBuf, String>,
    secrets: HashMap<PathBuf, Vec<u8>>,
}

/// Replaces the entries under `dir` with `new`; whether that changed anything.
fn replace_under<V: PartialEq>(
    map: &mut HashMap<PathBuf, V>,
    dir: &Path,
    new: HashMap<PathBuf, V>,
) -> bool {
    let old: HashMap<PathBuf, V> = map.extract_if(|p, _| p.starts_with(dir)).collect();
    let changed = old != new;
    map.extend(new);
    changed
}

impl Overlay {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn file(&self, path: &Path) -> Option<String> {
        self.lock().files.get(path).cloned()
    }

    pub fn files(&self) -> HashMap<PathBuf, String> {
        self.lock().files.clone()
    }

    pub fn secret(&self, path: &Path) -> Option<Vec<u8>> {
        self.lock().secrets.get(path).cloned()
    }

    /// The ConfigMap mounted at `dir` now holds `files`.
    pub fn set_files(&self, dir: &Path, files: HashMap<PathBuf, String>) -> bool {
        replace_under(&mut self.lock().files, dir, files)
    }

    /// The Secret mounted at `dir` now holds `secrets`.
    pub fn set_secrets(&self, dir: &Path, secrets: HashMap<PathBuf, Vec<u8>>) -> bool {
        replace_under(&mut self.lock().secrets, dir, secrets)
    }

    /// A hash over every secret, for a policy version's identity: new
    /// credentials make a new version, so sessions reconnect with them.
    pub fn secrets_hash(&self) -> Option<String> {
        let inner = self.lock();
        if inner.secrets.is_empty() {
            return None;
        }
        let sorted: BTreeMap<&PathBuf, &Vec<u8>> = inner.secrets.iter().collect();
        let mut all = Vec::new();
        for (p, v) in sorted {
            all.extend_from_slice(p.to_string_lossy().as_bytes());
            all.push(0);
            all.extend_from_slice(&crate::model::digest::plain(v).into_bytes());
        }
        Some(crate::model::digest::plain(&all))
    }

    /// Each secret's digest keyed by the `digest-key` beside it, by file
    /// name: what the operator compares with what it wrote, without either
    /// side showing a value. `None` when no Secret is watched.
    pub fn secret_digests(&self) -> Option<BTreeMap<String, String>> {
        let inner = self.lock();
        if inner.secrets.is_empty() {
            return None;
        }
        let mut out = BTreeMap::new();
        for (p, v) in &inner.secrets {
            let (Some(dir), Some(name)) = (p.parent(), p.file_name()) else {
                continue;
            };
            let name = name.to_string_lossy();
            if name == DIGEST_KEY {
                continue;
            }
            if let Some(key) = inner.secrets.get(&dir.join(DIGEST_KEY)) {
                out.insert(name.into_owned(), crate::model::digest::keyed(key, v));
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_replaced_per_directory_and_changes_seen() {
        let o = Overlay::default();
        let a = PathBuf::from("/cm/a.lua");
        let b = PathBuf::from("/other/b.lua");
        assert!(o.set_files(Path::new("/cm"), [(a.clone(), "x".into())].into()));
        assert!(o.set_files(Path::new("/other"), [(b.clone(), "y".into())].into()));
        assert!(!o.set_files(Path::new("/cm"), [(a.clone(), "x".into())].into()));
        assert!(o.set_files(Path::new("/cm"), HashMap::new()));
        assert_eq!(o.file(&a), None);
        assert_eq!(o.file(&b).as_deref(), Some("y"));
    }

    #[test]
    fn secret_digests_are_keyed_and_change_with_the_value() {
        let o = Overlay::default();
        let dir = Path::new("/routes");
        assert_eq!(o.secret_digests(), None);
        let with = |url: &[u8], key: &[u8]| -> HashMap<PathBuf, Vec<u8>> {
            [
                (dir.join("team.r.url"), url.to_vec()),
                (dir.join(DIGEST_KEY), key.to_vec()),
            ]
            .into()
        };
        o.set_secrets(dir, with(b"amqp://u:p@h/", b"k1"));
        let first = o.secret_digests().unwrap();
        assert_eq!(first.keys().collect::<Vec<_>>(), ["team.r.url"]);
        assert!(!first["team.r.url"].contains("u:p"));
        let hash = o.secrets_hash();
        o.set_secrets(dir, with(b"amqp://u:q@h/", b"k1"));
        assert_ne!(o.secret_digests().unwrap(), first);
        assert_ne!(o.secrets_hash(), hash);
        o.set_secrets(dir, with(b"amqp://u:p@h/", b"k2"));
        assert_ne!(
            o.secret_digests().unwrap(),
            first,
            "another key, another digest"
        );
    }
}
