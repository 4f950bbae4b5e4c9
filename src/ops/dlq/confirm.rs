//! What an operator confirmed of a selection of dead letters, checked
//! before a replay or a purge acts on it. A count alone is not enough: a
//! dead letter that left and another that arrived meanwhile keep the count
//! and change the set. So a confirmation names the set by a digest of its
//! ids: SHA-256 over the sorted ids, each with its length, so it does not
//! depend on the order the queue gives them back in. Dead letters without
//! `message_id` share their body's digest as id, so an id may be selected
//! more than once: the set is a multiset, and each copy counts.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// The ids of selected dead letters, each with how many carry it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SelectedIds {
    counts: BTreeMap<String, usize>,
    len: usize,
}

impl SelectedIds {
    pub fn of<'a>(ids: impl IntoIterator<Item = &'a str>) -> Self {
        let mut selected = Self::default();
        for id in ids {
            selected.push(id);
        }
        selected
    }

    pub fn push(&mut self, id: &str) {
        *self.counts.entry(id.to_string()).or_insert(0) += 1;
        self.len += 1;
    }

    /// Dead letters selected, every copy of an id counted.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The set's digest: 64 hex digits.
    pub fn digest(&self) -> String {
        let mut hash = Sha256::new();
        // A BTreeMap is sorted by the ids' bytes.
        for (id, copies) in &self.counts {
            for _ in 0..*copies {
                hash.update((id.len() as u64).to_be_bytes());
                hash.update(id.as_bytes());
            }
        }
        hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Takes one dead letter with this id out of the set: whether one was
    /// left to take (an action acts on no more than it confirmed).
    pub fn take(&mut self, id: &str) -> bool {
        match self.counts.get_mut(id) {
            Some(copies) if *copies > 0 => {
                *copies -= 1;
                self.len -= 1;
                if *copies == 0 {
                    self.counts.remove(id);
                }
                true
            }
            _ => false,
        }
    }
}

/// The digest of dead letters with these ids (order-independent; each
/// copy of an id counts).
pub fn selection_digest<'a>(ids: impl IntoIterator<Item = &'a str>) -> String {
    SelectedIds::of(ids).digest()
}

/// What an operator confirmed: how many dead letters, which ones, or both.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Confirmation {
    pub count: Option<usize>,
    /// A [`SelectedIds::digest`], from a dry run or a confirmation page.
    pub digest: Option<String>,
}

/// The dead letters a selection matches are not those confirmed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SelectionChanged {
    #[error("the selection matches {matching} dead letter(s) now, not the {expected} confirmed: nothing was done; look again and confirm again")]
    Count { matching: usize, expected: usize },
    #[error("the selection matches {matching} dead letter(s) now, as many as confirmed but not the same ones (some left, others arrived; digest {now} now, {confirmed} confirmed): nothing was done; look again and confirm again")]
    Digest {
        matching: usize,
        now: String,
        confirmed: String,
    },
}

impl Confirmation {
    /// Confirmed by a digest: the set itself is named, not only its size.
    pub fn by_digest(digest: impl Into<String>) -> Self {
        Self {
            count: None,
            digest: Some(digest.into()),
        }
    }

    /// Whether `selected` is what was confirmed.
    pub fn check(&self, selected: &SelectedIds) -> Result<(), SelectionChanged> {
        let matching = selected.len();
        if let Some(expected) = self.count.filter(|n| *n != matching) {
            return Err(SelectionChanged::Count { matching, expected });
        }
        if let Some(confirmed) = &self.digest {
            let now = selected.digest();
            if !now.eq_ignore_ascii_case(confirmed.trim()) {
                return Err(SelectionChanged::Digest {
                    matching,
                    now,
                    confirmed: confirmed.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_names_the_multiset_of_ids() {
        let digest = |ids: &[&str]| selection_digest(ids.iter().copied());
        assert_eq!(
            digest(&["a", "b"]),
            digest(&["b", "a"]),
            "order-independent"
        );
        assert_ne!(
            digest(&["a", "a", "b"]),
            digest(&["a", "b"]),
            "copies count"
        );
        assert_ne!(digest(&["a", "a", "b"]), digest(&["a", "b", "b"]));
        assert_ne!(digest(&["ab"]), digest(&["a", "b"]), "ids are kept apart");
        assert_ne!(digest(&["a\0"]), digest(&["a"]));
        assert_eq!(digest(&[]).len(), 64);
    }

    #[test]
    fn a_confirmation_holds_for_that_set_only() {
        let selected = SelectedIds::of(["x", "y", "y"]);
        let digest = selected.digest();
        assert_eq!(Confirmation::by_digest(&digest).check(&selected), Ok(()));
        let upper = Confirmation::by_digest(digest.to_uppercase());
        assert_eq!(upper.check(&selected), Ok(()));
        let swapped = SelectedIds::of(["x", "x", "y"]);
        assert!(matches!(
            Confirmation::by_digest(&digest).check(&swapped),
            Err(SelectionChanged::Digest { matching: 3, .. })
        ));
        let counted = Confirmation {
            count: Some(2),
            digest: None,
        };
        let err = counted.check(&selected).unwrap_err();
        assert_eq!(
            err,
            SelectionChanged::Count {
                matching: 3,
                expected: 2
            }
        );
        assert!(err.to_string().contains("nothing was done"));
        assert_eq!(Confirmation::default().check(&selected), Ok(()));
    }

    #[test]
    fn taking_acts_on_no_more_copies_than_confirmed() {
        let mut selected = SelectedIds::of(["x", "y", "y"]);
        assert!(selected.take("y") && selected.take("y"));
        assert!(!selected.take("y"), "only two were confirmed");
        assert!(!selected.take("z"));
        assert_eq!(selected.len(), 1);
        assert!(selected.take("x") && selected.is_empty());
    }
}
