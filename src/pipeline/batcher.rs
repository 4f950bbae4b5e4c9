//! The batcher: jobs waiting to be sent, and the packing of them into calls.
//! Pure, no I/O. A call takes the oldest waiting job and, after it, the jobs
//! of the same merge key in arrival order for as long as the next one fits:
//! the byte cap, the job cap, and the service's rule of one `TIMCustomElem`
//! per message (a job that would add a second starts the next call; in
//! envelope mode, custom jobs with the same `Desc`, `Ext` and `Sound` share
//! one envelope). Its body and `Random` come from [`crate::tencent::body`].

use std::collections::{HashMap, VecDeque};

use serde_json::value::RawValue;

use crate::tencent::body::{call_body, call_overhead, call_random, content_digest, MergeKey};
use crate::tencent::envelope::{self, EnvelopeKey};

use super::config::CallRules;
use super::job::{Custom, Job};

/// A job in the batcher, with whatever the caller needs to settle it later
/// (its delivery from the broker, in the worker; a number, in tests).
#[derive(Debug)]
pub struct Queued<T> {
    pub job: Job,
    pub delivery: T,
    /// Arrival order across all keys.
    seq: u64,
}

impl<T> Queued<T> {
    /// A job outside any batcher (a call rebuilt from the ledger).
    pub fn new(job: Job, delivery: T) -> Self {
        Self {
            job,
            delivery,
            seq: 0,
        }
    }
}

/// The jobs waiting to be sent, grouped by merge key.
#[derive(Debug)]
pub struct Batcher<T> {
    /// One queue per merge key, each in arrival order. Few keys are live at a
    /// time, so a linear scan for the oldest head is cheap.
    queues: Vec<(MergeKey, VecDeque<Queued<T>>)>,
    next_seq: u64,
    len: usize,
    /// The waiting jobs' ids and body digests, so that asking whether a copy
    /// of a job waits costs a lookup, not a pass over everything waiting.
    ids: Counts,
    digests: Counts,
    /// How many waiting jobs have a deadline (none: nothing can expire).
    with_deadline: usize,
    /// The arrival order (`seq`) of the one waiting job of each latest-wins key.
    coalesced: HashMap<String, u64>,
}

impl<T> Default for Batcher<T> {
    fn default() -> Self {
        Self {
            queues: Vec::new(),
            next_seq: 0,
            len: 0,
            ids: Counts::default(),
            digests: Counts::default(),
            with_deadline: 0,
            coalesced: HashMap::new(),
        }
    }
}

/// How many waiting jobs carry each string (several jobs without
/// `message_id` can share a body's digest).
#[derive(Debug, Default)]
struct Counts(HashMap<String, usize>);

impl Counts {
    fn add(&mut self, key: &str) {
        match self.0.get_mut(key) {
            Some(n) => *n += 1,
            None => drop(self.0.insert(key.to_owned(), 1)),
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some(n) = self.0.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                self.0.remove(key);
            }
        }
    }

    fn contains(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }
}

/// One call: its jobs, in order, and the exact body that goes on the wire.
#[derive(Debug)]
pub struct Batch<T> {
    pub key: MergeKey,
    pub jobs: Vec<Queued<T>>,
    pub random: u32,
    pub body: Vec<u8>,
}

impl<T> Batcher<T> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether a job with this id waits.
    pub fn holds_id(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    /// Whether a job of a body with this digest (one without `message_id`) waits.
    pub fn holds_digest(&self, digest: &str) -> bool {
        self.digests.contains(digest)
    }

    fn index(&mut self, job: &Job, seq: u64) {
        if let Some(key) = &job.coalesce {
            self.coalesced.insert(key.clone(), seq);
        }
        self.with_deadline += usize::from(job.deadline.is_some());
        self.ids.add(&job.id);
        if let Some(digest) = &job.digest {
            self.digests.add(digest);
        }
    }

    fn unindex(&mut self, job: &Job) {
        if let Some(key) = &job.coalesce {
            self.coalesced.remove(key);
        }
        self.with_deadline -= usize::from(job.deadline.is_some());
        self.ids.remove(&job.id);
        if let Some(digest) = &job.digest {
            self.digests.remove(digest);
        }
    }

    /// Adds a job to wait. A job with a latest-wins key that a waiting job
    /// has too takes that job's place in the order, and the one it
    /// supersedes is returned (to be settled as superseded).
    pub fn push(&mut self, job: Job, delivery: T) -> Option<Queued<T>> {
        let superseded = job
            .coalesce
            .as_ref()
            .and_then(|key| self.coalesced.get(key).copied())
            .and_then(|seq| self.remove_seq(seq));
        let seq = match &superseded {
            Some(older) => older.seq,
            None => {
                self.next_seq += 1;
                self.next_seq - 1
            }
        };
        self.index(&job, seq);
        self.len += 1;
        let queued = Queued { job, delivery, seq };
        match self
            .queues
            .iter_mut()
            .find(|(key, _)| *key == queued.job.key)
        {
            Some((_, queue)) => {
                // In arrival order: a job in a superseded one's place may
                // stand before others of its merge key.
                let at = queue.partition_point(|q| q.seq < seq);
                queue.insert(at, queued);
            }
            None => self
                .queues
                .push((queued.job.key.clone(), VecDeque::from([queued]))),
        }
        superseded
    }

    /// Takes the waiting job that arrived as `seq` out of its queue.
    fn remove_seq(&mut self, seq: u64) -> Option<Queued<T>> {
        let (index, at) = self.queues.iter().enumerate().find_map(|(i, (_, queue))| {
            let at = queue.partition_point(|q| q.seq < seq);
            (queue.get(at)?.seq == seq).then_some((i, at))
        })?;
        let removed = self.queues[index].1.remove(at)?;
        if self.queues[index].1.is_empty() {
            self.queues.swap_remove(index);
        }
        self.len -= 1;
        self.unindex(&removed.job);
        Some(removed)
    }

    /// The next call: the oldest job and the jobs of its key that follow it,
    /// as many as the rules allow. Every job passed decoding's size check,
    /// so the oldest job always fits alone.
    pub fn take_batch(&mut self, rules: &CallRules) -> Option<Batch<T>> {
        self.start_packing(rules).map(Packing::into_batch)
    }

    /// The next call of two lanes: this one's (the urgent lane's) call
    /// first, then as many of `then`'s jobs of the same merge key, in their
    /// order, as the rules still allow; `then`'s own call when this lane
    /// has none.
    pub fn take_batch_before(
        &mut self,
        then: &mut Batcher<T>,
        rules: &CallRules,
    ) -> Option<Batch<T>> {
        match self.start_packing(rules) {
            Some(mut packing) => {
                then.fill(&mut packing, rules);
                Some(packing.into_batch())
            }
            None => then.take_batch(rules),
        }
    }

    /// A call begun with the oldest waiting job, filled from its key.
    fn start_packing(&mut self, rules: &CallRules) -> Option<Packing<T>> {
        let index = self
            .queues
            .iter()
            .enumerate()
            .filter_map(|(i, (_, q))| q.front().map(|head| (head.seq, i)))
            .min()?
            .1;
        let key = self.queues[index].0.clone();
        let mut packing = Packing {
            size: call_overhead(&key),
            key,
            slot: CustomSlot::Free,
            jobs: Vec::new(),
        };
        self.fill(&mut packing, rules);
        Some(packing)
    }

    /// Adds the waiting jobs of the call's merge key, in order, for as long
    /// as the next one fits.
    fn fill(&mut self, packing: &mut Packing<T>, rules: &CallRules) {
        let Some(index) = self.queues.iter().position(|(key, _)| *key == packing.key) else {
            return;
        };
        let queue = &mut self.queues[index].1;
        let before = packing.jobs.len();
        while let Some(next) = queue.front() {
            if !packing.fits(&next.job, rules) {
                break;
            }
            packing.add(queue.pop_front().expect("front exists"));
        }
        if queue.is_empty() {
            self.queues.swap_remove(index);
        }
        self.len -= packing.jobs.len() - before;
        for queued in &packing.jobs[before..] {
            self.unindex(&queued.job);
        }
    }

    /// Every waiting job, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Queued<T>> {
        self.queues.iter().flat_map(|(_, queue)| queue.iter())
    }

    /// Removes and returns the jobs whose deadline has passed.
    pub fn take_expired(&mut self, now: std::time::SystemTime) -> Vec<Queued<T>> {
        let mut expired = Vec::new();
        if self.with_deadline == 0 {
            return expired;
        }
        for (_, queue) in &mut self.queues {
            if queue.iter().any(|q| q.job.is_expired(now)) {
                let (gone, kept): (VecDeque<_>, VecDeque<_>) =
                    queue.drain(..).partition(|q| q.job.is_expired(now));
                *queue = kept;
                expired.extend(gone);
            }
        }
        self.queues.retain(|(_, queue)| !queue.is_empty());
        self.len -= expired.len();
        for queued in &expired {
            self.unindex(&queued.job);
        }
        expired
    }

    /// Everything still waiting, in arrival order (for shutdown).
    pub fn drain(&mut self) -> Vec<Queued<T>> {
        let mut all: Vec<Queued<T>> = self.queues.drain(..).flat_map(|(_, queue)| queue).collect();
        all.sort_by_key(|q| q.seq);
        self.len = 0;
        self.ids = Counts::default();
        self.digests = Counts::default();
        self.with_deadline = 0;
        self.coalesced.clear();
        all
    }
}

/// A call being packed: its key, size so far, custom slot and jobs.
struct Packing<T> {
    key: MergeKey,
    size: usize,
    slot: CustomSlot,
    jobs: Vec<Queued<T>>,
}

impl<T> Packing<T> {
    /// Whether `job` may join: the first always does (it passed decoding's
    /// size check alone); the next only within the caps and the one custom
    /// element.
    fn fits(&self, job: &Job, rules: &CallRules) -> bool {
        let Some(added) = self.slot.added_bytes(job, !self.jobs.is_empty()) else {
            return false;
        };
        self.jobs.is_empty()
            || (self.size + added <= rules.max_bytes && self.jobs.len() < rules.max_jobs)
    }

    fn add(&mut self, queued: Queued<T>) {
        let added = self.slot.added_bytes(&queued.job, !self.jobs.is_empty());
        self.size += added.unwrap_or_default();
        self.slot = std::mem::replace(&mut self.slot, CustomSlot::Free).after(&queued.job);
        self.jobs.push(queued);
    }

    fn into_batch(self) -> Batch<T> {
        Batch::new(self.key, self.jobs)
    }
}

/// The one custom element a call may hold, as packing goes.
#[derive(Debug, Clone, PartialEq)]
enum CustomSlot {
    Free,
    /// Taken by a custom element sent as written.
    Taken,
    /// Taken by an envelope that custom jobs with this key may still join.
    Envelope(EnvelopeKey),
}

impl CustomSlot {
    /// The bytes `job` would add to the call, or `None` if it would add a
    /// second custom element. `follows` says the call has elements already.
    fn added_bytes(&self, job: &Job, follows: bool) -> Option<usize> {
        let comma = usize::from(follows);
        match (&job.custom, self) {
            (Custom::None, _) | (Custom::Single, CustomSlot::Free) => {
                Some(comma + job.elements_bytes())
            }
            (Custom::Envelope(item), CustomSlot::Free) => {
                Some(comma + envelope::empty_bytes(&item.key) + item.escaped_bytes)
            }
            // Inside the envelope's `batch` array: the item and a comma.
            (Custom::Envelope(item), CustomSlot::Envelope(key)) if item.key == *key => {
                Some(item.escaped_bytes + 1)
            }
            _ => None,
        }
    }

    fn after(self, job: &Job) -> Self {
        match (&job.custom, self) {
            (Custom::Single, _) => CustomSlot::Taken,
            (Custom::Envelope(item), CustomSlot::Free) => CustomSlot::Envelope(item.key.clone()),
            (_, slot) => slot,
        }
    }
}

impl<T> Batch<T> {
    /// A call of these jobs, in this order, under its first `Random`.
    pub fn new(key: MergeKey, jobs: Vec<Queued<T>>) -> Self {
        let random = call_random(jobs.iter().map(|q| q.job.id.as_str()), 0);
        let body = body_of(&key, random, &jobs);
        Self {
            key,
            jobs,
            random,
            body,
        }
    }

    /// Puts the call under its `candidate`-th `Random`.
    pub fn use_random_candidate(&mut self, candidate: u32) {
        self.random = call_random(self.jobs.iter().map(|q| q.job.id.as_str()), candidate);
        self.body = body_of(&self.key, self.random, &self.jobs);
    }

    /// What the call says, whatever its `Random`.
    pub fn content_digest(&self) -> [u8; 32] {
        content_digest(&self.body, self.random)
    }

    /// Splits a call of several jobs into two halves, each its own call.
    pub fn split(self) -> (Batch<T>, Batch<T>) {
        let mut first = self.jobs;
        let second = first.split_off(first.len() / 2);
        (
            Batch::new(self.key.clone(), first),
            Batch::new(self.key, second),
        )
    }

    pub fn job_ids(&self) -> impl Iterator<Item = &str> {
        self.jobs.iter().map(|q| q.job.id.as_str())
    }
}

/// The exact body of a call of `jobs`: each job's elements in order, and
/// the envelope (if any) where its first payload stands.
fn body_of<T>(key: &MergeKey, random: u32, jobs: &[Queued<T>]) -> Vec<u8> {
    let mut items = jobs.iter().filter_map(|q| match &q.job.custom {
        Custom::Envelope(item) => Some(item),
        Custom::None | Custom::Single => None,
    });
    let envelope = items.next().map(|first| {
        debug_assert!(items.clone().all(|item| item.key == first.key));
        let all = std::iter::once(first).chain(items);
        envelope::element(&first.key, all.map(|item| item.item.as_str()))
    });
    let mut elements: Vec<&RawValue> = Vec::new();
    let mut envelope_placed = false;
    for queued in jobs {
        match (&queued.job.custom, &envelope) {
            (Custom::Envelope(_), Some(envelope)) => {
                if !std::mem::replace(&mut envelope_placed, true) {
                    elements.push(envelope);
                }
            }
            _ => elements.extend(queued.job.elements.iter().map(|e| &**e)),
        }
    }
    call_body(key, random, elements.into_iter())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::config::CustomMerge;
    use crate::tencent::body::BroadcastBody;
    use std::time::SystemTime;

    fn job(id: &str, from: Option<&str>, text: &str) -> Job {
        let mut body = serde_json::json!({"MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": text}}]});
        if let Some(from) = from {
            body["From_Account"] = from.into();
        }
        crate::pipeline::job::decode(
            body.to_string().as_bytes(),
            Some(id),
            None,
            &CallRules::default(),
            SystemTime::now(),
        )
        .unwrap()
    }

    #[test]
    fn body_matches_the_api_type() {
        let mut b = Batcher::new();
        b.push(job("a", Some("sys"), "one"), ());
        b.push(job("b", Some("sys"), "two"), ());
        let batch = b.take_batch(&CallRules::default()).unwrap();
        let parsed: BroadcastBody = serde_json::from_slice(&batch.body).unwrap();
        assert_eq!(parsed.random, batch.random);
        assert_eq!(parsed.from_account.as_deref(), Some("sys"));
        assert_eq!(parsed.msg_body.len(), 2);
        assert_eq!(parsed.to_bytes(), batch.body, "same bytes as the API type");
    }

    fn keyed(id: &str, from: Option<&str>, key: &str) -> Job {
        Job {
            coalesce: Some(key.into()),
            ..job(id, from, id)
        }
    }

    fn ids(batch: &Batch<()>) -> Vec<&str> {
        batch.job_ids().collect()
    }

    #[test]
    fn the_urgent_lane_goes_first_and_the_ordinary_one_fills_the_room_left() {
        let (mut urgent, mut ordinary) = (Batcher::new(), Batcher::new());
        for (id, from) in [("o1", Some("sys")), ("o2", None), ("o3", Some("sys"))] {
            ordinary.push(job(id, from, id), ());
        }
        urgent.push(job("u1", None, "u1"), ());
        urgent.push(job("u2", Some("sys"), "u2"), ());
        urgent.push(job("u3", None, "u3"), ());
        let rules = CallRules::default();
        // The oldest urgent job's key first, its urgent jobs in order, then
        // the ordinary jobs of that key.
        let first = urgent.take_batch_before(&mut ordinary, &rules).unwrap();
        assert_eq!(ids(&first), ["u1", "u3", "o2"]);
        let second = urgent.take_batch_before(&mut ordinary, &rules).unwrap();
        assert_eq!(ids(&second), ["u2", "o1", "o3"]);
        assert!(urgent.is_empty() && ordinary.is_empty());
        assert!(!ordinary.holds_id("o1"), "the filling jobs left the index");
        // No urgent job: the ordinary lane's own call.
        ordinary.push(job("o4", None, "o4"), ());
        let third = urgent.take_batch_before(&mut ordinary, &rules).unwrap();
        assert_eq!(ids(&third), ["o4"]);
        assert!(urgent.take_batch_before(&mut ordinary, &rules).is_none());
        // The caps hold across the lanes.
        let capped = CallRules {
            max_jobs: 2,
            ..CallRules::default()
        };
        for id in ["o5", "o6"] {
            ordinary.push(job(id, None, id), ());
        }
        urgent.push(job("u4", None, "u4"), ());
        let fourth = urgent.take_batch_before(&mut ordinary, &capped).unwrap();
        assert_eq!(ids(&fourth), ["u4", "o5"]);
        assert_eq!(ordinary.len(), 1);
    }

    #[test]
    fn a_later_job_of_a_key_takes_the_waiting_ones_place() {
        let rules = CallRules::default();
        let mut b = Batcher::new();
        assert!(b.push(keyed("a", None, "score"), ()).is_none());
        assert!(b.push(job("b", None, "b"), ()).is_none());
        let older = b.push(keyed("c", None, "score"), ()).expect("a superseded");
        assert_eq!(older.job.id, "a");
        assert_eq!(b.len(), 2);
        assert!(!b.holds_id("a") && b.holds_id("c"));
        // c stands where a stood: before b.
        assert_eq!(ids(&b.take_batch(&rules).unwrap()), ["c", "b"]);
        assert!(b.is_empty());
    }

    #[test]
    fn the_place_is_kept_across_merge_keys() {
        let rules = CallRules::default();
        let mut b = Batcher::new();
        b.push(keyed("a", Some("x"), "k"), ());
        b.push(job("b", Some("y"), "b"), ());
        b.push(job("d", Some("x"), "d"), ());
        let older = b
            .push(keyed("c", Some("y"), "k"), ())
            .expect("a superseded");
        assert_eq!(older.job.id, "a");
        // c (from y) is now the oldest: its call leads, b after it.
        assert_eq!(ids(&b.take_batch(&rules).unwrap()), ["c", "b"]);
        assert_eq!(ids(&b.take_batch(&rules).unwrap()), ["d"]);
    }

    #[test]
    fn a_job_in_a_call_or_gone_is_never_superseded() {
        let rules = CallRules::default();
        let mut b = Batcher::new();
        b.push(keyed("a", None, "k"), ());
        assert_eq!(ids(&b.take_batch(&rules).unwrap()), ["a"]);
        assert!(
            b.push(keyed("c", None, "k"), ()).is_none(),
            "a is in a call"
        );
        let mut late = keyed("e", None, "k2");
        late.deadline = Some(SystemTime::now() - std::time::Duration::from_secs(1));
        b.push(late, ());
        assert_eq!(b.take_expired(SystemTime::now()).len(), 1);
        assert!(b.push(keyed("f", None, "k2"), ()).is_none(), "e expired");
        assert!(b.push(job("g", None, "no key"), ()).is_none());
        // Each key keeps one waiting job, whatever came before.
        let older = b.push(keyed("h", None, "k"), ()).expect("c superseded");
        assert_eq!(older.job.id, "c");
        assert_eq!(ids(&b.take_batch(&rules).unwrap()), ["h", "f", "g"]);
    }

    #[test]
    fn knows_what_waits_by_id_and_digest_as_jobs_come_and_go() {
        let rules = CallRules::default();
        let id_less = |text: &str| {
            let body = serde_json::json!({"MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": text}}]});
            crate::pipeline::job::decode(
                body.to_string().as_bytes(),
                None,
                None,
                &rules,
                SystemTime::now(),
            )
            .unwrap()
        };
        let mut b = Batcher::new();
        let (first, second) = (id_less("same"), id_less("same"));
        let digest = first.digest.clone().unwrap();
        let mut late = job("late", None, "gone soon");
        late.deadline = Some(SystemTime::now() - std::time::Duration::from_secs(1));
        b.push(first, 0);
        b.push(second, 1);
        b.push(job("a", None, "x"), 2);
        b.push(late, 3);
        assert!(b.holds_id("a") && b.holds_id("late") && b.holds_digest(&digest));
        assert!(!b.holds_id("b"));
        assert_eq!(b.take_expired(SystemTime::now()).len(), 1);
        assert!(!b.holds_id("late"), "an expired job no longer waits");
        let one = CallRules {
            max_jobs: 1,
            ..rules
        };
        b.take_batch(&one).unwrap();
        assert!(b.holds_digest(&digest), "one job of that body still waits");
        b.take_batch(&one).unwrap();
        assert!(!b.holds_digest(&digest), "neither waits");
        assert!(b.holds_id("a"));
        b.drain();
        assert!(!b.holds_id("a"));
    }

    #[test]
    fn fills_to_the_cap_in_order_and_keeps_keys_apart() {
        let mut b = Batcher::new();
        for i in 0..300 {
            let from = if i % 3 == 0 { Some("other") } else { None };
            b.push(job(&format!("j{i}"), from, &format!("{i:0>90}")), i);
        }
        let mut seen = Vec::new();
        let mut prev_first = None;
        while let Some(batch) = b.take_batch(&CallRules::default()) {
            assert!(batch.body.len() <= 12_000);
            let tags: Vec<i32> = batch.jobs.iter().map(|q| q.delivery).collect();
            assert!(tags.windows(2).all(|w| w[0] < w[1]), "arrival order kept");
            assert!(batch.jobs.iter().all(|q| q.job.key == batch.key));
            // The oldest waiting job always leads the next call.
            if let Some(prev) = prev_first {
                assert!(tags[0] > prev || batch.key.from_account.is_some());
            }
            prev_first = Some(tags[0]);
            seen.extend(tags);
        }
        seen.sort();
        assert_eq!(seen, (0..300).collect::<Vec<_>>());
        assert!(b.is_empty());
    }

    #[test]
    fn the_size_check_is_exact() {
        // Pack with a cap equal to the body of two jobs: both must fit, and a
        // cap one byte smaller must split them.
        let mut b = Batcher::new();
        b.push(job("a", None, "x"), ());
        b.push(job("b", None, "y"), ());
        let both = b.take_batch(&CallRules::default()).unwrap();
        let widest = both.body.len() + (10 - both.random.to_string().len());
        for (cap, want) in [(widest, 2), (widest - 1, 1)] {
            let mut b = Batcher::new();
            b.push(job("a", None, "x"), ());
            b.push(job("b", None, "y"), ());
            assert_eq!(
                b.take_batch(&CallRules {
                    max_bytes: cap,
                    ..CallRules::default()
                })
                .unwrap()
                .jobs
                .len(),
                want,
                "cap {cap}"
            );
        }
    }

    #[test]
    fn split_halves_and_derives_new_randoms() {
        let mut b = Batcher::new();
        for i in 0..5 {
            b.push(job(&format!("j{i}"), None, "t"), i);
        }
        let batch = b.take_batch(&CallRules::default()).unwrap();
        let random = batch.random;
        let (left, right) = batch.split();
        assert_eq!(
            left.jobs.iter().map(|q| q.delivery).collect::<Vec<_>>(),
            [0, 1]
        );
        assert_eq!(
            right.jobs.iter().map(|q| q.delivery).collect::<Vec<_>>(),
            [2, 3, 4]
        );
        assert_ne!(left.random, random);
        assert_eq!(left.random, call_random(["j0", "j1"].into_iter(), 0));
    }

    fn decoded(id: &str, body: serde_json::Value, rules: &CallRules) -> Job {
        crate::pipeline::job::decode(
            body.to_string().as_bytes(),
            Some(id),
            None,
            rules,
            SystemTime::now(),
        )
        .unwrap()
    }

    fn custom(data: &str, desc: Option<&str>) -> serde_json::Value {
        let mut content = serde_json::json!({"Data": data});
        if let Some(desc) = desc {
            content["Desc"] = desc.into();
        }
        serde_json::json!({"MsgBody": [{"MsgType": "TIMCustomElem", "MsgContent": content}]})
    }

    fn text(t: &str) -> serde_json::Value {
        serde_json::json!({"MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": t}}]})
    }

    fn custom_elements(batch: &Batch<usize>) -> usize {
        let parsed: BroadcastBody = serde_json::from_slice(&batch.body).unwrap();
        parsed
            .msg_body
            .iter()
            .filter(|e| e["MsgType"] == "TIMCustomElem")
            .count()
    }

    #[test]
    fn a_second_custom_element_starts_the_next_call_and_text_fills_around() {
        let rules = CallRules::default();
        let mut b = Batcher::new();
        let kinds = ["c", "t", "c", "t", "t", "c", "c"];
        for (i, kind) in kinds.iter().enumerate() {
            let body = if *kind == "c" {
                custom(&format!("d{i}"), None)
            } else {
                text(&format!("t{i}"))
            };
            b.push(decoded(&format!("j{i}"), body, &rules), i);
        }
        let mut calls = Vec::new();
        while let Some(batch) = b.take_batch(&rules) {
            assert!(custom_elements(&batch) <= 1);
            calls.push(batch.jobs.iter().map(|q| q.delivery).collect::<Vec<_>>());
        }
        assert_eq!(calls, [vec![0, 1], vec![2, 3, 4], vec![5], vec![6]]);
    }

    #[test]
    fn envelopes_merge_custom_jobs_with_the_same_desc_to_the_exact_cap() {
        let rules = CallRules {
            custom_merge: CustomMerge::Envelope,
            ..CallRules::default()
        };
        let mut b = Batcher::new();
        for i in 0..400 {
            let data = format!(r#"{{"gift":"rose \"{i}\"","n":{i}}}"#);
            b.push(
                decoded(&format!("j{i}"), custom(&data, Some("gift")), &rules),
                i,
            );
        }
        b.push(decoded("other", custom("x", Some("other")), &rules), 400);
        b.push(decoded("t", text("after"), &rules), 401);
        let mut seen = Vec::new();
        while let Some(batch) = b.take_batch(&rules) {
            assert!(batch.body.len() <= rules.max_bytes);
            assert_eq!(custom_elements(&batch), 1);
            let parsed: BroadcastBody = serde_json::from_slice(&batch.body).unwrap();
            let envelope = parsed
                .msg_body
                .iter()
                .find(|e| e["MsgType"] == "TIMCustomElem")
                .unwrap();
            let data: serde_json::Value =
                serde_json::from_str(envelope["MsgContent"]["Data"].as_str().unwrap()).unwrap();
            let tags: Vec<usize> = batch.jobs.iter().map(|q| q.delivery).collect();
            for (item, tag) in data["batch"].as_array().unwrap().iter().zip(&tags) {
                if *tag < 400 {
                    assert_eq!(item["n"], *tag as u64, "payloads in order");
                }
            }
            seen.push(tags);
        }
        // Full calls until the other Desc, which starts its own envelope
        // (the text job fills around it).
        assert!(seen.len() < 12, "{} calls", seen.len());
        assert_eq!(seen.last().unwrap(), &vec![400, 401]);
        assert_eq!(seen.iter().map(Vec::len).sum::<usize>(), 402);
        // The cap is exact: one more payload would not have fitted.
        let first = &seen[0];
        assert!(first.len() > 50);
    }

    #[test]
    fn envelope_size_accounting_is_exact() {
        let rules = CallRules {
            custom_merge: CustomMerge::Envelope,
            ..CallRules::default()
        };
        let jobs: Vec<Job> = (0..6)
            .map(|i| {
                decoded(
                    &format!("j{i}"),
                    custom(&format!("payload é \"{i}\"\n"), Some("d")),
                    &rules,
                )
            })
            .collect();
        let mut full = Batcher::new();
        for (i, job) in jobs.iter().enumerate() {
            full.push(job.clone(), i);
        }
        let all = full.take_batch(&rules).unwrap();
        assert_eq!(all.jobs.len(), 6);
        let widest = all.body.len() + (10 - all.random.to_string().len());
        for (cap, want) in [(widest, 6), (widest - 1, 5)] {
            let mut b = Batcher::new();
            for (i, job) in jobs.iter().enumerate() {
                b.push(job.clone(), i);
            }
            let capped = CallRules {
                max_bytes: cap,
                ..rules
            };
            assert_eq!(b.take_batch(&capped).unwrap().jobs.len(), want, "cap {cap}");
        }
    }
}
