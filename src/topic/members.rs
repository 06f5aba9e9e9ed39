//! A topic's subscribers by connection. Most topics are one user's own and
//! hold one or two subscribers, so up to [`FEW`] live in a list of exactly
//! their size (a hash map starts at four buckets); past that, a hash map,
//! boxed so that the list's topics do not pay for its size.

use std::collections::HashMap;
use std::collections::hash_map;

use crate::outbox::messages::ConnId;

/// The most subscribers kept in a list.
const FEW: usize = 8;

pub enum Members<V> {
    Few(Vec<(ConnId, V)>),
    Many(Box<HashMap<ConnId, V>>),
}

impl<V> Default for Members<V> {
    fn default() -> Self {
        Members::Few(Vec::new())
    }
}

impl<V> Members<V> {
    pub fn len(&self) -> usize {
        match self {
            Members::Few(few) => few.len(),
            Members::Many(many) => many.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, conn: &ConnId) -> Option<&V> {
        match self {
            Members::Few(few) => few.iter().find(|(c, _)| c == conn).map(|(_, v)| v),
            Members::Many(many) => many.get(conn),
        }
    }

    pub fn get_mut(&mut self, conn: &ConnId) -> Option<&mut V> {
        match self {
            Members::Few(few) => few.iter_mut().find(|(c, _)| c == conn).map(|(_, v)| v),
            Members::Many(many) => many.get_mut(conn),
        }
    }

    pub fn contains_key(&self, conn: &ConnId) -> bool {
        self.get(conn).is_some()
    }

    /// Adds or replaces `conn`'s entry; returns the one it replaced.
    pub fn insert(&mut self, conn: ConnId, value: V) -> Option<V> {
        match self {
            Members::Few(few) => {
                if let Some((_, old)) = few.iter_mut().find(|(c, _)| *c == conn) {
                    return Some(std::mem::replace(old, value));
                }
                if few.len() < FEW {
                    few.reserve_exact(1);
                    few.push((conn, value));
                } else {
                    let mut many: HashMap<ConnId, V> = std::mem::take(few).into_iter().collect();
                    many.insert(conn, value);
                    *self = Members::Many(Box::new(many));
                }
                None
            }
            Members::Many(many) => many.insert(conn, value),
        }
    }

    pub fn remove(&mut self, conn: &ConnId) -> Option<V> {
        match self {
            Members::Few(few) => {
                let at = few.iter().position(|(c, _)| c == conn)?;
                let (_, value) = few.swap_remove(at);
                few.shrink_to_fit();
                Some(value)
            }
            Members::Many(many) => many.remove(conn),
        }
    }

    pub fn iter(&self) -> Iter<'_, V> {
        match self {
            Members::Few(few) => Iter::Few(few.iter()),
            Members::Many(many) => Iter::Many(many.iter()),
        }
    }
}

pub enum Iter<'a, V> {
    Few(std::slice::Iter<'a, (ConnId, V)>),
    Many(hash_map::Iter<'a, ConnId, V>),
}

impl<'a, V> Iterator for Iter<'a, V> {
    type Item = (&'a ConnId, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Few(few) => few.next().map(|(c, v)| (c, v)),
            Iter::Many(many) => many.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Iter::Few(few) => few.size_hint(),
            Iter::Many(many) => many.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_move_to_a_map_past_a_few_and_stay_found() {
        let mut members = Members::default();
        for n in 0..20u64 {
            assert_eq!(members.insert(ConnId(n), n), None);
            assert!(matches!(members, Members::Few(_)) == (n < FEW as u64));
        }
        assert_eq!(members.insert(ConnId(3), 33), Some(3));
        assert_eq!(members.len(), 20);
        assert_eq!(members.remove(&ConnId(4)), Some(4));
        assert_eq!(members.get(&ConnId(3)), Some(&33));
        assert!(!members.contains_key(&ConnId(4)));
        let mut seen: Vec<u64> = members.iter().map(|(c, _)| c.0).collect();
        seen.sort_unstable();
        assert_eq!(seen.len(), 19);
    }

    #[test]
    fn a_few_members_are_replaced_removed_and_listed() {
        let mut members = Members::default();
        members.insert(ConnId(1), "a");
        members.insert(ConnId(2), "b");
        assert_eq!(members.insert(ConnId(1), "c"), Some("a"));
        *members.get_mut(&ConnId(2)).unwrap() = "d";
        assert_eq!(members.remove(&ConnId(1)), Some("c"));
        assert_eq!(members.remove(&ConnId(1)), None);
        let all: Vec<(u64, &str)> = members.iter().map(|(c, v)| (c.0, *v)).collect();
        assert_eq!(all, [(2, "d")]);
        assert!(!members.is_empty());
    }
}
