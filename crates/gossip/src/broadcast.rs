//! The transmit-limited broadcast queue (reference 2.16), used by memberlist for its own
//! alive/suspect/dead messages and by Serf for its intents, events and queries.
//!
//! Each message is sent at most `retransmit_mult * ceil(log10(n + 1))` times, `n` being the
//! cluster size the owner last told the queue. Selection prefers messages sent fewer times,
//! then longer ones, then newer ones, and only takes what fits in the caller's budget.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

/// Names one queued message for [`BroadcastQueue::is_queued`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BroadcastId(pub u64);

/// Selection order: fewest transmits, then longest, then newest.
type OrderKey = (u32, Reverse<usize>, Reverse<u64>);

#[derive(Debug, Clone)]
struct Item {
    key: Option<String>,
    message: Vec<u8>,
}

/// A queue of messages to piggyback on outgoing packets, each retransmitted a bounded number
/// of times.
#[derive(Debug, Clone)]
pub struct BroadcastQueue {
    retransmit_mult: u32,
    num_nodes: usize,
    next_id: u64,
    items: BTreeMap<OrderKey, Item>,
    by_id: HashMap<u64, OrderKey>,
    by_key: HashMap<String, u64>,
}

/// How many times a broadcast is sent in a cluster of `num_nodes`.
pub fn retransmit_limit(retransmit_mult: u32, num_nodes: usize) -> u32 {
    let scale = ((num_nodes as f64) + 1.0).log10().ceil();
    retransmit_mult.saturating_mul(scale as u32)
}

impl BroadcastQueue {
    /// An empty queue; `retransmit_mult` is the profile's `retransmit_mult`.
    pub fn new(retransmit_mult: u32) -> BroadcastQueue {
        BroadcastQueue {
            retransmit_mult,
            num_nodes: 1,
            next_id: 0,
            items: BTreeMap::new(),
            by_id: HashMap::new(),
            by_key: HashMap::new(),
        }
    }

    /// The cluster size the retransmit limit is computed from.
    pub fn set_num_nodes(&mut self, num_nodes: usize) {
        self.num_nodes = num_nodes;
    }

    /// Queues `message`. With a `key`, any queued message with the same key is dropped
    /// (memberlist keys its messages by node name; Serf's messages have none).
    pub fn queue(&mut self, key: Option<String>, message: Vec<u8>) -> BroadcastId {
        self.next_id += 1;
        let id = self.next_id;
        if let Some(key) = &key
            && let Some(old) = self.by_key.get(key).copied()
        {
            self.remove_id(old);
        }
        let order = (0, Reverse(message.len()), Reverse(id));
        if let Some(key) = &key {
            self.by_key.insert(key.clone(), id);
        }
        self.by_id.insert(id, order);
        self.items.insert(order, Item { key, message });
        BroadcastId(id)
    }

    /// Whether the message is still waiting to be sent (not yet sent its limit, not replaced).
    pub fn is_queued(&self, id: BroadcastId) -> bool {
        self.by_id.contains_key(&id.0)
    }

    pub fn num_queued(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// How many messages were ever queued: it changes whenever something new is queued.
    pub fn generation(&self) -> u64 {
        self.next_id
    }

    /// Takes messages for one packet: each costs `overhead` bytes besides its length, all
    /// together at most `limit` bytes. Every message returned counts one transmission.
    pub fn get_broadcasts(&mut self, overhead: usize, limit: usize) -> Vec<Vec<u8>> {
        let (Some(first), Some(last)) = (self.items.first_key_value(), self.items.last_key_value())
        else {
            return Vec::new();
        };
        let (min_transmits, max_transmits) = (first.0.0, last.0.0);
        let transmit_limit = retransmit_limit(self.retransmit_mult, self.num_nodes);
        let mut used = 0usize;
        let mut out = Vec::new();
        let mut reinsert = Vec::new();
        let mut transmits = min_transmits;
        while transmits <= max_transmits {
            let Some(free) = limit
                .checked_sub(used)
                .and_then(|rest| rest.checked_sub(overhead))
                .filter(|free| *free > 0)
            else {
                break;
            };
            // The first entry of this tier whose length fits: the longest, then the newest.
            let low = (transmits, Reverse(free), Reverse(u64::MAX));
            let high = (transmits + 1, Reverse(usize::MAX), Reverse(u64::MAX));
            let Some(order) = self.items.range(low..high).next().map(|(order, _)| *order) else {
                transmits += 1;
                continue;
            };
            let Some(item) = self.items.remove(&order) else {
                break;
            };
            used += overhead + item.message.len();
            out.push(item.message.clone());
            let id = order.2.0;
            if order.0 + 1 >= transmit_limit {
                self.by_id.remove(&id);
                if let Some(key) = &item.key
                    && self.by_key.get(key) == Some(&id)
                {
                    self.by_key.remove(key);
                }
            } else {
                reinsert.push(((order.0 + 1, order.1, order.2), item));
            }
        }
        for (order, item) in reinsert {
            self.by_id.insert(order.2.0, order);
            self.items.insert(order, item);
        }
        out
    }

    /// Keeps at most `max` messages, dropping the most-sent (then shortest, oldest) first.
    pub fn prune(&mut self, max: usize) {
        while self.items.len() > max {
            let Some((order, _)) = self.items.last_key_value() else {
                break;
            };
            let id = order.2.0;
            self.remove_id(id);
        }
    }

    fn remove_id(&mut self, id: u64) {
        let Some(order) = self.by_id.remove(&id) else {
            return;
        };
        if let Some(item) = self.items.remove(&order)
            && let Some(key) = item.key
            && self.by_key.get(&key) == Some(&id)
        {
            self.by_key.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retransmit_limit_grows_with_the_log_of_the_cluster() {
        assert_eq!(retransmit_limit(4, 1), 4);
        assert_eq!(retransmit_limit(4, 2), 4);
        assert_eq!(retransmit_limit(4, 9), 4);
        assert_eq!(retransmit_limit(4, 10), 8);
        assert_eq!(retransmit_limit(4, 100), 12);
    }

    #[test]
    fn fewest_transmits_then_longest_then_newest_goes_first() {
        let mut queue = BroadcastQueue::new(4);
        queue.queue(None, b"aa".to_vec());
        queue.queue(None, b"bbbb".to_vec());
        queue.queue(None, b"cc".to_vec());
        let first = queue.get_broadcasts(0, 6);
        assert_eq!(first, vec![b"bbbb".to_vec(), b"cc".to_vec()]);
        // "aa" has not been sent yet, so it comes before the others.
        let second = queue.get_broadcasts(0, 4);
        assert_eq!(second, vec![b"aa".to_vec(), b"cc".to_vec()]);
    }

    #[test]
    fn a_message_is_dropped_after_its_transmit_limit() {
        let mut queue = BroadcastQueue::new(2);
        queue.set_num_nodes(3);
        let id = queue.queue(None, b"hello".to_vec());
        assert_eq!(queue.get_broadcasts(2, 100).len(), 1);
        assert!(queue.is_queued(id));
        assert_eq!(queue.get_broadcasts(2, 100).len(), 1);
        assert!(!queue.is_queued(id));
        assert!(queue.get_broadcasts(2, 100).is_empty());
    }

    #[test]
    fn a_keyed_message_replaces_the_queued_one_with_the_same_key() {
        let mut queue = BroadcastQueue::new(4);
        let old = queue.queue(Some("node".into()), b"old".to_vec());
        queue.queue(Some("other".into()), b"x".to_vec());
        let new = queue.queue(Some("node".into()), b"new".to_vec());
        assert!(!queue.is_queued(old));
        assert!(queue.is_queued(new));
        assert_eq!(queue.num_queued(), 2);
        assert_eq!(
            queue.get_broadcasts(0, 100),
            vec![b"new".to_vec(), b"x".to_vec()]
        );
    }

    #[test]
    fn messages_that_do_not_fit_stay_queued() {
        let mut queue = BroadcastQueue::new(4);
        queue.queue(None, vec![1; 10]);
        queue.queue(None, vec![2; 3]);
        assert_eq!(queue.get_broadcasts(2, 6), vec![vec![2; 3]]);
        assert!(queue.get_broadcasts(2, 2).is_empty());
        assert_eq!(queue.num_queued(), 2);
    }

    #[test]
    fn prune_keeps_the_least_sent_messages() {
        let mut queue = BroadcastQueue::new(10);
        queue.queue(None, b"sent".to_vec());
        queue.get_broadcasts(0, 100);
        queue.queue(None, b"fresh".to_vec());
        queue.prune(1);
        assert_eq!(queue.num_queued(), 1);
        assert_eq!(queue.get_broadcasts(0, 100), vec![b"fresh".to_vec()]);
    }
}
