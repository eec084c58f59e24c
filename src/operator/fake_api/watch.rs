//! Watches as the API server serves them
//! (https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes):
//! a stream of `{"type", "object"}` lines; from a resourceVersion, every
//! change after it; from none (or "0"), the current objects as ADDED, then
//! changes; BOOKMARK events carrying the latest version when
//! `allowWatchBookmarks` is set; a version older than the retained history
//! is a single ERROR event with a 410 Expired status
//! (https://kubernetes.io/docs/reference/using-api/api-concepts/#410-gone-responses),
//! after which a client lists again. A watch ends at `timeoutSeconds` or
//! when the server restarts ([`FakeApi::end_watches`]).

use super::{FakeApi, Reply, lists, matches_fields, matches_labels, status_body};
use http::{Response, StatusCode};
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Counts a watch as open while it lives.
struct Open(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Watch {
    api: Arc<FakeApi>,
    collection: String,
    labels: String,
    fields: String,
    bookmarks: bool,
    /// The version up to which everything has been sent.
    after: u64,
    pending: VecDeque<String>,
    /// Ends after `pending` drains (a 410 was sent).
    done: bool,
    deadline: tokio::time::Instant,
    changed: tokio::sync::watch::Receiver<u64>,
    restarts: tokio::sync::watch::Receiver<u64>,
    _open: Open,
}

fn line(kind: &str, object: &Value) -> String {
    json!({"type": kind, "object": object}).to_string() + "\n"
}

impl Watch {
    fn wanted(&self, collection: &str, obj: &Value) -> bool {
        lists(&self.collection, collection)
            && matches_labels(obj, &self.labels)
            && matches_fields(obj, &self.fields)
    }

    /// Queues what happened since `after`; whether anything was.
    fn catch_up(&mut self) {
        let store = self.api.store.lock().unwrap();
        if self.after < store.compacted {
            let gone = status_body(
                StatusCode::GONE,
                "Expired",
                format!(
                    "too old resource version: {} ({})",
                    self.after, store.compacted
                ),
            );
            self.pending.push_back(line("ERROR", &gone));
            self.done = true;
            return;
        }
        let mut sent = false;
        for c in store.log.iter().filter(|c| c.version > self.after) {
            if self.wanted(&c.collection, &c.object) {
                self.pending.push_back(line(c.kind, &c.object));
                sent = true;
            }
        }
        if !sent && self.bookmarks && store.version > self.after {
            let kind = self.collection.rsplit('/').next().unwrap_or("");
            let mark = json!({"kind": kind, "apiVersion": "v1",
                "metadata": {"resourceVersion": store.version.to_string()}});
            self.pending.push_back(line("BOOKMARK", &mark));
        }
        self.after = store.version;
    }

    async fn next(mut self) -> Option<(Result<String, std::convert::Infallible>, Self)> {
        loop {
            if let Some(l) = self.pending.pop_front() {
                return Some((Ok(l), self));
            }
            if self.done {
                return None;
            }
            self.catch_up();
            if !self.pending.is_empty() {
                continue;
            }
            tokio::select! {
                r = self.changed.changed() => if r.is_err() { return None },
                _ = self.restarts.changed() => return None,
                _ = tokio::time::sleep_until(self.deadline) => return None,
            }
        }
    }
}

/// The streaming answer to a watch of `collection`.
pub(super) fn start(
    api: &Arc<FakeApi>,
    collection: &str,
    query: &BTreeMap<String, String>,
) -> Reply {
    let from = query
        .get("resourceVersion")
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|v| *v > 0);
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1800);
    api.watching.fetch_add(1, Ordering::SeqCst);
    let mut w = Watch {
        api: api.clone(),
        collection: collection.to_owned(),
        labels: query.get("labelSelector").cloned().unwrap_or_default(),
        fields: query.get("fieldSelector").cloned().unwrap_or_default(),
        bookmarks: query.get("allowWatchBookmarks").map(String::as_str) == Some("true"),
        after: 0,
        pending: VecDeque::new(),
        done: false,
        deadline: tokio::time::Instant::now() + Duration::from_secs(timeout),
        changed: api.changed.subscribe(),
        restarts: api.restarts.subscribe(),
        _open: Open(api.watching.clone()),
    };
    match from {
        Some(v) => w.after = v,
        None => {
            let store = api.store.lock().unwrap();
            for (c, objs) in &store.objects {
                let added: Vec<String> = objs
                    .values()
                    .filter(|o| w.wanted(c, o))
                    .map(|o| line("ADDED", o))
                    .collect();
                w.pending.extend(added);
            }
            w.after = store.version;
        }
    }
    let stream = futures_util::stream::unfold(w, Watch::next);
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(axum::body::Body::from_stream(stream))
        .unwrap()
}
