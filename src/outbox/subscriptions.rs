//! A connection's subscriptions by canonical topic. Most connections hold
//! one or a few, so they are a list sorted by topic (one allocation the
//! size of its entries) rather than a hash map (four buckets at least).

use std::sync::Arc;

use crate::changes::Filter;

/// One of the connection's subscriptions.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Frames carry the id of the subscription they belong to; older ones are dropped.
    pub id: u64,
    /// The topic as the client spelled it last.
    pub spelling: Arc<str>,
    /// Table topics: the client's own filter, to combine with a new token's.
    pub own_filter: Filter,
    /// The subscription this one replaces, kept until the topic admits or
    /// refuses this one: a refused re-subscribe leaves the earlier one as it
    /// was. Longer than one only while several re-subscribes are in flight.
    pub previous: Option<Box<Subscription>>,
}

impl Subscription {
    /// The topic admitted subscription `id`: what it replaced is gone for good.
    pub fn admitted(&mut self, id: u64) {
        let mut link = Some(self);
        while let Some(subscription) = link {
            if subscription.id == id {
                subscription.previous = None;
                return;
            }
            link = subscription.previous.as_deref_mut();
        }
    }

    /// Takes refused subscription `id` out of the chain below this one.
    pub fn unlink(&mut self, id: u64) {
        let mut link = self;
        loop {
            match link.previous.take() {
                Some(mut refused) if refused.id == id => {
                    link.previous = refused.previous.take();
                    return;
                }
                Some(other) => link = link.previous.insert(other),
                None => return,
            }
        }
    }
}

/// Subscriptions sorted by topic, found by binary search.
#[derive(Debug, Default)]
pub struct Subscriptions(Vec<(Arc<str>, Subscription)>);

impl Subscriptions {
    fn find(&self, topic: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(t, _)| t.as_ref().cmp(topic))
    }

    pub fn get(&self, topic: &str) -> Option<&Subscription> {
        self.find(topic).ok().map(|i| &self.0[i].1)
    }

    /// The topic admitted subscription `id`: what it replaced is gone for
    /// good, and the connection keeps the topic's own name string (`topic`)
    /// instead of its own copy, so a topic shared by many connections has
    /// its name stored once (and found by pointer when frames arrive).
    pub fn admitted(&mut self, topic: &Arc<str>, id: u64) {
        let Ok(i) = self.find(topic) else {
            return;
        };
        let (name, subscription) = &mut self.0[i];
        subscription.admitted(id);
        if !Arc::ptr_eq(name, topic) {
            if Arc::ptr_eq(&subscription.spelling, name) {
                subscription.spelling = topic.clone();
            }
            *name = topic.clone();
        }
    }

    pub fn get_mut(&mut self, topic: &str) -> Option<&mut Subscription> {
        self.find(topic).ok().map(|i| &mut self.0[i].1)
    }

    pub fn contains_key(&self, topic: &str) -> bool {
        self.find(topic).is_ok()
    }

    pub fn remove(&mut self, topic: &str) -> Option<Subscription> {
        self.find(topic).ok().map(|i| self.0.remove(i).1)
    }

    /// Adds or replaces `topic`'s subscription.
    pub fn insert(&mut self, topic: Arc<str>, subscription: Subscription) {
        match self.find(&topic) {
            Ok(i) => self.0[i].1 = subscription,
            Err(i) => {
                // Room for exactly one more while the list is short: the
                // usual connection keeps one or two.
                if self.0.len() == self.0.capacity() && self.0.len() < 4 {
                    self.0.reserve_exact(1);
                }
                self.0.insert(i, (topic, subscription));
            }
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Subscription)> {
        self.0.iter().map(|(topic, s)| (topic, s))
    }

    /// Ends every subscription; returns their topics.
    pub fn take_topics(&mut self) -> Vec<Arc<str>> {
        std::mem::take(&mut self.0)
            .into_iter()
            .map(|(topic, _)| topic)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscription(id: u64) -> Subscription {
        Subscription {
            id,
            spelling: "s".into(),
            own_filter: Filter::default(),
            previous: None,
        }
    }

    #[test]
    fn subscriptions_are_found_replaced_and_removed_by_topic() {
        let mut subscriptions = Subscriptions::default();
        for (topic, id) in [("b/1", 1), ("a/1", 2), ("c", 3), ("a/1", 4)] {
            subscriptions.insert(topic.into(), subscription(id));
        }
        assert_eq!(subscriptions.len(), 3);
        let topics: Vec<&str> = subscriptions.iter().map(|(t, _)| t.as_ref()).collect();
        assert_eq!(topics, ["a/1", "b/1", "c"]);
        assert_eq!(subscriptions.get("a/1").map(|s| s.id), Some(4));
        assert_eq!(subscriptions.remove("b/1").map(|s| s.id), Some(1));
        assert!(!subscriptions.contains_key("b/1"));
        assert!(subscriptions.contains_key("c"));
        assert_eq!(subscriptions.take_topics().len(), 2);
        assert!(subscriptions.is_empty());
    }

    #[test]
    fn an_admitted_subscription_keeps_the_topics_own_name_string() {
        let mut subscriptions = Subscriptions::default();
        let own: Arc<str> = "room/shared".into();
        let mut first = subscription(1);
        first.spelling = own.clone();
        subscriptions.insert(own.clone(), first);
        let topics: Arc<str> = "room/shared".into();
        subscriptions.admitted(&topics, 1);
        let (name, admitted) = subscriptions.iter().next().unwrap();
        assert!(Arc::ptr_eq(name, &topics));
        assert!(Arc::ptr_eq(&admitted.spelling, &topics));
        assert_eq!(Arc::strong_count(&own), 1, "the connection's copy is gone");
    }
}
