//! How a topic's subscribers spelled its name. Most spell it canonically
//! (spelling number 0, the topic's own name string); the few others
//! (`table/orders`, `chat/a/<projectId>`: at most two, see
//! `TopicName::parse`) are kept once each, so a subscriber names its
//! spelling with one byte and the fan-out encodes a batch once per spelling.

use std::sync::Arc;

use thin_vec::ThinVec;

/// The spellings other than the canonical name (a `ThinVec`: one pointer,
/// and no allocation for a topic everyone spells canonically).
#[derive(Debug, Default)]
pub struct Spellings {
    others: ThinVec<Arc<str>>,
}

/// A topic's spellings, with its canonical name: what a spelling number means.
#[derive(Debug, Clone, Copy)]
pub struct SpellingsOf<'a> {
    canonical: &'a Arc<str>,
    others: &'a [Arc<str>],
}

impl Spellings {
    /// The number of `spelling` for a topic named `canonical`, kept if new.
    pub fn number(&mut self, canonical: &str, spelling: &Arc<str>) -> u8 {
        if **spelling == *canonical {
            return 0;
        }
        let at = match self.others.iter().position(|s| s == spelling) {
            Some(at) => at,
            None => {
                self.others.reserve_exact(1);
                self.others.push(spelling.clone());
                self.others.len() - 1
            }
        };
        // At most two others exist; the saturation is never reached.
        u8::try_from(at + 1).unwrap_or(u8::MAX)
    }

    pub fn of<'a>(&'a self, canonical: &'a Arc<str>) -> SpellingsOf<'a> {
        SpellingsOf {
            canonical,
            others: &self.others,
        }
    }
}

impl<'a> SpellingsOf<'a> {
    /// The spelling numbered `number`.
    pub fn get(self, number: u8) -> &'a Arc<str> {
        match number {
            0 => self.canonical,
            n => self
                .others
                .get(usize::from(n) - 1)
                .unwrap_or(self.canonical),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canonical_spelling_is_number_zero_and_others_are_kept_once() {
        let canonical: Arc<str> = "orders".into();
        let mut spellings = Spellings::default();
        assert_eq!(spellings.number(&canonical, &"orders".into()), 0);
        assert_eq!(spellings.number(&canonical, &"table/orders".into()), 1);
        assert_eq!(spellings.number(&canonical, &"table/orders/p".into()), 2);
        assert_eq!(spellings.number(&canonical, &"table/orders".into()), 1);
        let of = spellings.of(&canonical);
        assert!(Arc::ptr_eq(of.get(0), &canonical));
        assert_eq!(&**of.get(2), "table/orders/p");
    }
}
