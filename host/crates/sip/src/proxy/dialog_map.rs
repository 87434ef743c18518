//! Per-dialog state the proxy keeps after it changed something a dialog's
//! ends rely on (the CSeq numbering after answering a challenge, the caller's
//! identity after a caller-ID rewrite). Keyed by Call-ID and the caller's
//! From tag; an entry ends with the dialog's BYE, its INVITE's failure, or
//! `idle` without a request (dialogs that never say goodbye here).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::message::Message;

/// Call-ID and the caller's tag.
pub(crate) type DialogKey = (Bytes, Bytes);

/// The key of the dialog `msg` belongs to, as seen from the sender of its
/// From (`from_side`) or of its To.
pub(crate) fn dialog_key(msg: &Message, from_side: bool) -> Option<DialogKey> {
    let call_id = msg.call_id()?;
    let tag = if from_side {
        msg.from()?.ok()?.tag()?
    } else {
        msg.to()?.ok()?.tag()?
    };
    Some((Bytes::copy_from_slice(call_id), Bytes::copy_from_slice(tag)))
}

#[derive(Debug)]
pub(crate) struct DialogMap<V> {
    entries: HashMap<DialogKey, (V, Instant)>,
    idle: Duration,
    max: usize,
}

impl<V> DialogMap<V> {
    pub fn new(idle: Duration, max: usize) -> DialogMap<V> {
        DialogMap {
            entries: HashMap::new(),
            idle,
            max,
        }
    }

    /// Adds or replaces; false when the map is full of live dialogs.
    pub fn insert(&mut self, now: Instant, key: DialogKey, value: V) -> bool {
        if self.entries.len() >= self.max && !self.entries.contains_key(&key) {
            let idle = self.idle;
            self.entries
                .retain(|_, (_, used)| now.saturating_duration_since(*used) < idle);
            if self.entries.len() >= self.max {
                return false;
            }
        }
        self.entries.insert(key, (value, now));
        true
    }

    /// The entry for a request of the dialog, marked used now; an idle one is
    /// forgotten instead.
    pub fn touch(&mut self, now: Instant, key: &DialogKey) -> Option<&V> {
        let (_, used) = self.entries.get(key)?;
        if now.saturating_duration_since(*used) >= self.idle {
            self.entries.remove(key);
            return None;
        }
        let entry = self.entries.get_mut(key)?;
        entry.1 = now;
        Some(&entry.0)
    }

    pub fn get(&self, key: &DialogKey) -> Option<&V> {
        self.entries.get(key).map(|(v, _)| v)
    }

    pub fn remove(&mut self, key: &DialogKey) -> Option<V> {
        self.entries.remove(key).map(|(v, _)| v)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
