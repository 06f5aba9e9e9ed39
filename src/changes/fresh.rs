//! What a change source has just numbered in the log, committed, held for
//! the tracker's next reads so that it need not read those rows back.

use super::Change;

/// Committed changes with consecutive seqs, oldest first.
#[derive(Default)]
pub struct Fresh(Vec<Change>);

impl Fresh {
    /// Holds `changes` in place of what was held. Only changes whose seqs
    /// run without a gap are kept: [`Fresh::take`] counts on it.
    pub fn hold(&mut self, mut changes: Vec<Change>) {
        changes.sort_unstable_by_key(|change| change.seq);
        let consecutive = changes.windows(2).all(|w| w[1].seq == w[0].seq + 1);
        self.0 = if consecutive { changes } else { Vec::new() };
    }

    /// The changes after `cursor`, at most `limit`, when the held ones
    /// include the very next seq; `None` when the log must be read.
    pub fn take(&mut self, cursor: u64, limit: i64) -> Option<Vec<Change>> {
        let (first, last) = (self.0.first()?.seq, self.0.last()?.seq);
        if last <= cursor {
            self.0.clear();
            return None;
        }
        if first > cursor + 1 {
            return None;
        }
        let skip = (cursor + 1 - first) as usize;
        let take = usize::try_from(limit).unwrap_or(0).min(self.0.len() - skip);
        let mut taken: Vec<Change> = self.0.drain(..skip + take).collect();
        taken.drain(..skip);
        Some(taken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::Operation;

    fn change(seq: u64) -> Change {
        Change {
            seq,
            table: "t".into(),
            operation: Operation::Insert,
            new: None,
            old: None,
            at_ms: 0,
            repaired: false,
        }
    }

    fn seqs(changes: Option<Vec<Change>>) -> Option<Vec<u64>> {
        changes.map(|c| c.iter().map(|c| c.seq).collect())
    }

    #[test]
    fn held_changes_are_taken_from_the_cursor_on_in_pieces() {
        let mut fresh = Fresh::default();
        fresh.hold((11..=15).rev().map(change).collect());
        assert_eq!(seqs(fresh.take(5, 10)), None, "6 to 10 are not held");
        assert_eq!(seqs(fresh.take(12, 2)), Some(vec![13, 14]));
        assert_eq!(seqs(fresh.take(14, 10)), Some(vec![15]));
        assert_eq!(seqs(fresh.take(15, 10)), None, "all taken");
    }

    #[test]
    fn a_gap_or_a_cursor_past_them_drops_what_is_held() {
        let mut fresh = Fresh::default();
        fresh.hold(vec![change(1), change(2), change(4)]);
        assert_eq!(seqs(fresh.take(0, 10)), None);
        fresh.hold(vec![change(1), change(2)]);
        assert_eq!(seqs(fresh.take(7, 10)), None);
        assert_eq!(seqs(fresh.take(0, 10)), None, "dropped once passed");
    }
}
