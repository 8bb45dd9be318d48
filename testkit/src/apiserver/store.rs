//! The in-memory store: current objects, one global resourceVersion, a bounded event history.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use serde_json::Value;

use super::resources::ResIdx;

/// (type, namespace or `""`, name): objects sort like etcd keys, namespace then name.
pub(crate) type Key = (ResIdx, String, String);

/// Watch event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One write, as watches replay it.
pub(crate) struct Event {
    pub rv: u64,
    pub ty: EventType,
    pub key: Key,
    /// The object after the write (for deletes: its last state, stamped with the delete's RV).
    pub obj: Arc<Value>,
    /// The object before the write.
    pub prev: Option<Arc<Value>>,
}

pub(crate) struct Store {
    /// Last resourceVersion handed out.
    pub rv: u64,
    pub objects: BTreeMap<Key, Arc<Value>>,
    /// How many objects each (type, namespace or `""`) holds now, so that a paged list's
    /// `remainingItemCount` costs no walk over the rest of the list.
    counts: BTreeMap<(ResIdx, String), usize>,
    pub history: VecDeque<Event>,
    /// Every event with `rv > history_start` is still in `history`.
    pub history_start: u64,
    pub history_limit: usize,
}

pub(crate) fn set_rv(v: &mut Value, rv: u64) {
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

/// `metadata.resourceVersion` as a number (0 when missing or malformed).
pub(crate) fn rv_of(v: &Value) -> u64 {
    v.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

impl Store {
    pub(crate) fn new(history_limit: usize) -> Store {
        Store {
            rv: 0,
            objects: BTreeMap::new(),
            counts: BTreeMap::new(),
            history: VecDeque::new(),
            history_start: 0,
            history_limit: history_limit.max(1),
        }
    }

    /// Stores `new` under `key` (or deletes it when `None`), stamping the next resourceVersion,
    /// and records the event. Returns the object as the event carries it.
    pub(crate) fn commit(&mut self, key: Key, new: Option<Value>) -> Arc<Value> {
        self.rv += 1;
        let rv = self.rv;
        let (ty, obj, prev) = match new {
            Some(mut v) => {
                set_rv(&mut v, rv);
                let obj = Arc::new(v);
                let prev = self.objects.insert(key.clone(), obj.clone());
                let ty = if prev.is_some() {
                    EventType::Modified
                } else {
                    *self.counts.entry((key.0, key.1.clone())).or_default() += 1;
                    EventType::Added
                };
                (ty, obj, prev)
            }
            None => {
                let prev = self.objects.remove(&key).expect("commit: delete of a missing object");
                let scope = (key.0, key.1.clone());
                if let Some(n) = self.counts.get_mut(&scope) {
                    *n -= 1;
                    if *n == 0 {
                        self.counts.remove(&scope);
                    }
                }
                let mut v = (*prev).clone();
                set_rv(&mut v, rv);
                (EventType::Deleted, Arc::new(v), Some(prev))
            }
        };
        self.history.push_back(Event {
            rv,
            ty,
            key,
            obj: obj.clone(),
            prev,
        });
        self.trim();
        obj
    }

    fn trim(&mut self) {
        while self.history.len() > self.history_limit {
            if let Some(e) = self.history.pop_front() {
                self.history_start = e.rv;
            }
        }
    }

    pub(crate) fn set_history_limit(&mut self, limit: usize) {
        self.history_limit = limit.max(1);
        self.trim();
    }

    /// Drops the whole event history: reads and watches from before now get 410.
    pub(crate) fn compact(&mut self) {
        self.history.clear();
        self.history_start = self.rv;
    }

    /// The revision moves on without an event of ours (as other writers move a real etcd) and the
    /// history is compacted there: every resourceVersion handed out so far is too old to resume.
    pub(crate) fn expire(&mut self) {
        self.rv += 1;
        self.compact();
    }

    /// Whether everything after `rv` is still known.
    pub(crate) fn in_window(&self, rv: u64) -> bool {
        rv >= self.history_start
    }

    /// Events with a resourceVersion above `rv`, oldest first.
    pub(crate) fn events_after(&self, rv: u64) -> impl Iterator<Item = &Event> {
        let i = self.history.partition_point(|e| e.rv <= rv);
        self.history.range(i..)
    }

    /// Calls `f` for the objects of type `res` (in namespace `ns` when given) as they were at
    /// resourceVersion `at`, in key order, starting after `after`, until `f` returns false.
    /// `Err` when `at` is before the retained history. Costs the objects visited (plus, for a past
    /// `at`, the events since): a page of a long list does not walk the rest of it.
    pub(crate) fn scan_at(
        &self,
        res: ResIdx,
        ns: Option<&str>,
        at: u64,
        after: Option<&Key>,
        mut f: impl FnMut(&Key, &Arc<Value>) -> bool,
    ) -> Result<(), ()> {
        let in_scope = |k: &Key| k.0 == res && ns.is_none_or(|n| k.1 == n);
        let past_start = |k: &Key| after.is_none_or(|a| k > a);
        let start: Bound<Key> = match after {
            Some(a) => Bound::Excluded(a.clone()),
            None => Bound::Included((res, ns.unwrap_or("").to_owned(), String::new())),
        };
        let mut current = self
            .objects
            .range((start, Bound::Unbounded))
            .take_while(|(k, _)| in_scope(k))
            .peekable();
        if at >= self.rv {
            for (k, v) in current {
                if !f(k, v) {
                    break;
                }
            }
            return Ok(());
        }
        if !self.in_window(at) {
            return Err(());
        }
        // Undo the later writes: the first event after `at` for a key holds its state at `at`.
        let mut undo: BTreeMap<&Key, Option<&Arc<Value>>> = BTreeMap::new();
        for e in self.events_after(at) {
            if in_scope(&e.key) && past_start(&e.key) {
                undo.entry(&e.key).or_insert(e.prev.as_ref());
            }
        }
        // Both in key order, merged as they go: a key only in `undo` is gone now (every current key
        // in scope past the start comes through `current`).
        let mut undo = undo.into_iter().peekable();
        loop {
            let order = match (current.peek(), undo.peek()) {
                (None, None) => return Ok(()),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((k, _)), Some((u, _))) => (*k).cmp(*u),
            };
            let (k, v) = match order {
                Ordering::Less => current.next().map(|(k, v)| (k, Some(v))).expect("peeked"),
                // Written since `at`: its state then (`None`: it did not exist).
                Ordering::Equal => {
                    let (_, old) = undo.next().expect("peeked");
                    let (k, _) = current.next().expect("peeked");
                    (k, old)
                }
                Ordering::Greater => undo.next().expect("peeked"),
            };
            if let Some(v) = v
                && !f(k, v)
            {
                return Ok(());
            }
        }
    }

    /// How many objects of type `res` (in namespace `ns` when given) there were at resourceVersion
    /// `at`: the kept count, corrected by the events since. `Err` when `at` is before the retained
    /// history.
    pub(crate) fn count_at(&self, res: ResIdx, ns: Option<&str>, at: u64) -> Result<usize, ()> {
        let now: usize = match ns {
            Some(ns) => self.counts.get(&(res, ns.to_owned())).copied().unwrap_or(0),
            None => self
                .counts
                .range((res, String::new())..)
                .take_while(|((r, _), _)| *r == res)
                .map(|(_, n)| n)
                .sum(),
        };
        if at >= self.rv {
            return Ok(now);
        }
        if !self.in_window(at) {
            return Err(());
        }
        let mut seen: HashSet<&Key> = HashSet::new();
        let mut then = now;
        for e in self.events_after(at) {
            if e.key.0 == res && ns.is_none_or(|n| e.key.1 == n) && seen.insert(&e.key) {
                // The first write since `at`: the key existed then iff it had a previous state.
                then = then + usize::from(e.prev.is_some()) - usize::from(self.objects.contains_key(&e.key));
            }
        }
        Ok(then)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(name: &str, v: i32) -> Value {
        json!({ "metadata": { "name": name }, "spec": { "v": v } })
    }

    fn key(name: &str) -> Key {
        (0, String::new(), name.to_owned())
    }

    fn names_at(s: &Store, at: u64) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        s.scan_at(0, None, at, None, |k, v| {
            out.push((k.2.clone(), v["spec"]["v"].as_i64().unwrap()));
            true
        })
        .unwrap();
        out
    }

    #[test]
    fn history_and_snapshots() {
        let mut s = Store::new(100);
        s.commit(key("a"), Some(obj("a", 1)));
        s.commit(key("b"), Some(obj("b", 1)));
        let at = s.rv;
        s.commit(key("a"), Some(obj("a", 2)));
        s.commit(key("b"), None);
        s.commit(key("c"), Some(obj("c", 1)));
        assert_eq!(names_at(&s, at), vec![("a".into(), 1), ("b".into(), 1)]);
        assert_eq!(names_at(&s, s.rv), vec![("a".into(), 2), ("c".into(), 1)]);
        // From a key on, and counted without a walk: as they were, and as they are.
        let mut after_a = Vec::new();
        s.scan_at(0, None, at, Some(&key("a")), |k, _| {
            after_a.push(k.2.clone());
            true
        })
        .unwrap();
        assert_eq!(after_a, vec!["b"]);
        assert_eq!(s.count_at(0, None, at), Ok(2));
        assert_eq!(s.count_at(0, Some(""), s.rv), Ok(2));
        assert_eq!(s.count_at(0, Some("other"), at), Ok(0));
        assert_eq!(s.count_at(1, None, at), Ok(0));
        assert_eq!(s.events_after(at).count(), 3);
        let del = s.history.iter().find(|e| e.ty == EventType::Deleted).unwrap();
        assert_eq!(rv_of(&del.obj), 4);
        s.compact();
        assert!(s.scan_at(0, None, at, None, |_, _| true).is_err());
        assert!(s.count_at(0, None, at).is_err());
        assert!(s.in_window(s.rv));
    }

    #[test]
    fn bounded_history() {
        let mut s = Store::new(3);
        for i in 0..10 {
            s.commit(key("a"), Some(obj("a", i)));
        }
        assert_eq!(s.history.len(), 3);
        assert_eq!(s.history_start, 7);
        assert!(s.in_window(7));
        assert!(!s.in_window(6));
        assert_eq!(names_at(&s, 7), vec![("a".into(), 6)]);
    }
}
