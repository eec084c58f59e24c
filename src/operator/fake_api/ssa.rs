//! Server-side apply as the API server does it
//! (https://kubernetes.io/docs/reference/using-api/server-side-apply/):
//! each field has owners (field managers); an apply by a manager sets the
//! fields it sends, removes those it sent before and no longer sends
//! unless another manager owns them too, keeps the fields others own, and
//! merges list-type maps (`conditions`, keyed by `type`) by key. With
//! `force` it takes ownership of fields another manager set; without, a
//! field another manager set to a different value is a 409 Conflict.

use super::{Reply, Store, conflict, not_found, stale, status};
use http::StatusCode;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// Field manager → the fields it owns (`data.k`, `status.conditions[Ready]`, …).
pub type Owners = BTreeMap<String, BTreeSet<String>>;

/// The fields an applied object sets: map entries by path, `conditions` by
/// their `type`, other lists whole. `metadata` other than labels and
/// annotations is the object's identity, not a field.
fn fields(v: &Value, at: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                if at.is_empty() && matches!(k.as_str(), "apiVersion" | "kind") {
                    continue;
                }
                if at == "metadata" && !matches!(k.as_str(), "labels" | "annotations") {
                    continue;
                }
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                // A map is a field of its own too (SSA's `.`): removed with
                // its last owner, not left empty behind its children.
                if child.is_object() && path != "metadata" && path != "status" {
                    out.insert(path.clone());
                }
                fields(child, &path, out);
            }
        }
        Value::Array(items) if at.ends_with("conditions") => {
            out.insert(at.to_owned());
            for c in items {
                out.insert(format!("{at}[{}]", c["type"].as_str().unwrap_or("")));
            }
        }
        _ => {
            out.insert(at.to_owned());
        }
    }
}

fn keyed(field: &str) -> Option<(&str, &str)> {
    field.strip_suffix(']').and_then(|f| f.split_once('['))
}

fn pointer_mut<'a>(obj: &'a mut Value, dotted: &str) -> Option<&'a mut Value> {
    dotted
        .split('.')
        .try_fold(obj, |v, k| v.as_object_mut()?.get_mut(k))
}

/// The value of `field` in `obj`, if set.
fn value_of<'a>(obj: &'a Value, field: &str) -> Option<&'a Value> {
    let walk = |dotted: &str| dotted.split('.').try_fold(obj, |v, k| v.get(k));
    match keyed(field) {
        Some((list, key)) => walk(list)?.as_array()?.iter().find(|c| c["type"] == key),
        None => walk(field),
    }
}

/// Removes `field` from `obj`.
fn remove_field(obj: &mut Value, field: &str) {
    if let Some((list, key)) = keyed(field) {
        if let Some(items) = pointer_mut(obj, list).and_then(|v| v.as_array_mut()) {
            items.retain(|c| c["type"] != key);
        }
        return;
    }
    let (parent, leaf) = field.rsplit_once('.').unwrap_or(("", field));
    let target = if parent.is_empty() {
        Some(obj)
    } else {
        pointer_mut(obj, parent)
    };
    if let Some(Value::Object(m)) = target {
        m.remove(leaf);
    }
}

/// Merges an applied object in: maps by key, `conditions` by `type`, the rest replaced.
fn apply_merge(into: &mut Value, patch: &Value, at: &str) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                apply_merge(a.entry(k.clone()).or_insert(Value::Null), v, &path);
            }
        }
        (Value::Array(a), Value::Array(b)) if at.ends_with("conditions") => {
            for c in b {
                match a.iter_mut().find(|x| x["type"] == c["type"]) {
                    Some(slot) => *slot = c.clone(),
                    None => a.push(c.clone()),
                }
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

/// What an apply to the object or to its status sends.
fn part_of(patch: &Value, status_write: bool) -> Value {
    if status_write {
        return json!({"status": patch["status"].clone()});
    }
    let mut p = patch.clone();
    if let Some(m) = p.as_object_mut() {
        m.remove("status");
    }
    p
}

/// The fields `manager` would take from another manager that set them
/// differently, as the API's conflict message names them.
fn conflicts(
    owners: &Owners,
    manager: &str,
    applied: &BTreeSet<String>,
    obj: &Value,
    body: &Value,
) -> Vec<String> {
    let leaf = |f: &String| {
        !applied
            .iter()
            .any(|a| a.len() > f.len() && a.starts_with(f.as_str()))
    };
    owners
        .iter()
        .filter(|(m, _)| *m != manager)
        .flat_map(|(m, owned)| {
            owned
                .intersection(applied)
                .filter(|f| leaf(f) && value_of(obj, f) != value_of(body, f))
                .map(move |f| format!("conflict with {m:?}: .{f}"))
        })
        .collect()
}

/// Server-side apply of `patch` by `manager` to `coll/name` (its status
/// subresource when `status_write`): the object after it, or the API's
/// refusal.
pub(super) fn apply(
    store: &mut Store,
    coll: &str,
    name: &str,
    manager: &str,
    patch: &Value,
    status_write: bool,
    force: bool,
) -> Result<Value, Box<Reply>> {
    let existing = store.get(coll, name).cloned();
    let mut obj = match &existing {
        None if status_write => return Err(Box::new(not_found(coll, name))),
        None => json!({"apiVersion": patch["apiVersion"], "kind": patch["kind"],
            "metadata": {"name": name}}),
        Some(old) if stale(patch, old) => return Err(Box::new(conflict(coll, name))),
        Some(old) => old.clone(),
    };
    let body = part_of(patch, status_write);
    let mut applied = BTreeSet::new();
    fields(&body, "", &mut applied);
    let path = format!("{coll}/{name}");
    let mut owners = store.owners.get(&path).cloned().unwrap_or_default();
    let refused = conflicts(&owners, manager, &applied, &obj, &body);
    if !force && !refused.is_empty() {
        return Err(Box::new(status(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Apply failed with {} conflicts: {}",
                refused.len(),
                refused.join(", ")
            ),
        )));
    }
    let in_part = |f: &String| status_write == f.starts_with("status");
    let before = owners.get(manager).cloned().unwrap_or_default();
    // Deepest first: a map's children before the map.
    let mut gone: Vec<&String> = before.difference(&applied).filter(|f| in_part(f)).collect();
    gone.sort_by_key(|f| std::cmp::Reverse(f.len()));
    for f in gone {
        if !owners.iter().any(|(m, o)| m != manager && o.contains(f)) {
            remove_field(&mut obj, f);
        }
    }
    // The values it applied become its alone; maps and lists holding them
    // stay shared with whoever else has fields inside.
    let container = |x: &String| {
        applied
            .iter()
            .any(|a| a.starts_with(&format!("{x}.")) || a.starts_with(&format!("{x}[")))
    };
    for (m, owned) in owners.iter_mut() {
        if m != manager {
            owned.retain(|x| !applied.contains(x) || container(x));
        }
    }
    apply_merge(&mut obj, &body, "");
    let mine = owners.entry(manager.to_owned()).or_default();
    mine.retain(|f| !in_part(f));
    mine.extend(applied);
    store.owners.insert(path, owners);
    Ok(match existing {
        None => store.create(coll, obj),
        Some(_) => store.update(coll, name, obj, status_write),
    })
}
