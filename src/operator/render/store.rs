//! The rendered Secret: each route's values (credentials, a CA) under keys
//! of its own that the API accepts, with the size the API limits counted.
//! Keys are per route, never shared by equal values: a key that moved when
//! another route went would make the remaining route a new version (and
//! would name one tenant's route in another's policy).

use std::collections::BTreeMap;

/// The API refuses a ConfigMap or Secret whose data (keys and values
/// together) is over 1 MiB.
pub const OBJECT_LIMIT: usize = 1024 * 1024;

/// Longest key the API accepts in a ConfigMap or Secret.
const MAX_KEY: usize = 253;

#[derive(Default)]
pub(super) struct Store {
    data: BTreeMap<String, Vec<u8>>,
    /// Keys added, newest last, so one route's additions can be undone.
    journal: Vec<String>,
    size: usize,
}

/// `namespace.name.what`, or with the name hashed when that is too long.
pub(super) fn key_for(namespace: &str, name: &str, what: &str) -> String {
    let key = format!("{namespace}.{name}.{what}");
    if key.len() <= MAX_KEY {
        return key;
    }
    let hashed = &crate::model::digest::plain(name.as_bytes())[..16];
    format!("{namespace}.{hashed}.{what}")
}

impl Store {
    /// Stores `value` under `key` (one route's own); returns the key.
    pub fn put(&mut self, key: String, value: &[u8]) -> String {
        if let Some(old) = self.data.insert(key.clone(), value.to_vec()) {
            self.size -= key.len() + old.len();
        } else {
            self.journal.push(key.clone());
        }
        self.size += key.len() + value.len();
        key
    }

    /// Keys and values, as the API counts them.
    pub fn size(&self) -> usize {
        self.size
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.data.keys()
    }

    pub fn mark(&self) -> usize {
        self.journal.len()
    }

    /// Removes what was put since `mark`.
    pub fn undo(&mut self, mark: usize) {
        for key in self.journal.drain(mark..) {
            if let Some(v) = self.data.remove(&key) {
                self.size -= key.len() + v.len();
            }
        }
    }

    pub fn into_data(self) -> BTreeMap<String, Vec<u8>> {
        self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_keep_their_own_keys_and_undo_takes_back_only_the_newest() {
        let mut s = Store::default();
        assert_eq!(s.put("ns.a.url".into(), b"amqp://u:p@h/"), "ns.a.url");
        let mark = s.mark();
        assert_eq!(s.put("ns.b.url".into(), b"amqp://u:p@h/"), "ns.b.url");
        assert_eq!(s.put("ns.c.ca".into(), b"PEM"), "ns.c.ca");
        assert_eq!(
            s.size(),
            "ns.a.url".len() + 13 + "ns.b.url".len() + 13 + "ns.c.ca".len() + 3
        );
        s.undo(mark);
        assert_eq!(s.size(), "ns.a.url".len() + 13);
        assert_eq!(s.into_data().keys().collect::<Vec<_>>(), ["ns.a.url"]);
    }

    #[test]
    fn keys_always_fit() {
        let long = "n".repeat(253);
        let k = key_for("team", &long, "url");
        assert!(k.len() <= MAX_KEY, "{}", k.len());
        assert!(k.starts_with("team.") && k.ends_with(".url"));
        assert_ne!(
            key_for("team", &long, "url"),
            key_for("team", &"m".repeat(253), "url")
        );
        assert_eq!(key_for("team", "r", "url"), "team.r.url");
    }
}
