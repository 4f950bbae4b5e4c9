//! The batcher: jobs waiting to be sent, and the packing of them into calls.
//! Pure, no I/O. A call takes the oldest waiting job and, after it, the jobs
//! of the same merge key in arrival order for as long as the next one fits the
//! byte cap. Its body and `Random` come from [`crate::tencent::body`].

use std::collections::VecDeque;

use crate::pipeline::job::Job;
use crate::tencent::body::{call_body, call_overhead, call_random, MergeKey};

/// A job in the batcher, with whatever the caller needs to settle it later
/// (the delivery's acker, in the worker; nothing, in tests).
#[derive(Debug)]
pub struct Queued<T> {
    pub job: Job,
    pub tag: T,
    /// Arrival order across all keys.
    seq: u64,
}

impl<T> Queued<T> {
    /// A job outside any batcher (a call rebuilt from the ledger).
    pub fn new(job: Job, tag: T) -> Self {
        Self { job, tag, seq: 0 }
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
}

impl<T> Default for Batcher<T> {
    fn default() -> Self {
        Self {
            queues: Vec::new(),
            next_seq: 0,
            len: 0,
        }
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

    pub fn push(&mut self, job: Job, tag: T) {
        let queued = Queued {
            job,
            tag,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        self.len += 1;
        match self
            .queues
            .iter_mut()
            .find(|(key, _)| *key == queued.job.key)
        {
            Some((_, queue)) => queue.push_back(queued),
            None => self
                .queues
                .push((queued.job.key.clone(), VecDeque::from([queued]))),
        }
    }

    /// The next call: the oldest job and the jobs of its key that follow it,
    /// as many as fit in `max_bytes` (and `max_jobs`). Every job passed
    /// decoding's size check, so the oldest job always fits alone.
    pub fn take_batch(&mut self, max_bytes: usize, max_jobs: usize) -> Option<Batch<T>> {
        let index = self
            .queues
            .iter()
            .enumerate()
            .filter_map(|(i, (_, q))| q.front().map(|head| (head.seq, i)))
            .min()?
            .1;
        let key = self.queues[index].0.clone();
        let queue = &mut self.queues[index].1;
        let mut size = call_overhead(&key);
        let mut jobs = Vec::new();
        while let Some(next) = queue.front() {
            let comma = usize::from(!jobs.is_empty());
            let added = comma + next.job.elements_bytes();
            if !jobs.is_empty() && (size + added > max_bytes || jobs.len() >= max_jobs) {
                break;
            }
            size += added;
            jobs.push(queue.pop_front().expect("front exists"));
        }
        if queue.is_empty() {
            self.queues.swap_remove(index);
        }
        self.len -= jobs.len();
        Some(Batch::new(key, jobs))
    }

    /// Every waiting job, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Queued<T>> {
        self.queues.iter().flat_map(|(_, queue)| queue.iter())
    }

    /// Removes and returns the jobs whose deadline has passed.
    pub fn take_expired(&mut self, now: std::time::SystemTime) -> Vec<Queued<T>> {
        let mut expired = Vec::new();
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
        expired
    }

    /// Everything still waiting, in arrival order (for shutdown).
    pub fn drain(&mut self) -> Vec<Queued<T>> {
        let mut all: Vec<Queued<T>> = self.queues.drain(..).flat_map(|(_, queue)| queue).collect();
        all.sort_by_key(|q| q.seq);
        self.len = 0;
        all
    }
}

impl<T> Batch<T> {
    /// A call of these jobs, in this order.
    pub fn new(key: MergeKey, jobs: Vec<Queued<T>>) -> Self {
        let random = call_random(jobs.iter().map(|q| q.job.id.as_str()));
        let body = call_body(
            &key,
            random,
            jobs.iter()
                .flat_map(|q| q.job.elements.iter().map(|e| &**e)),
        );
        Self {
            key,
            jobs,
            random,
            body,
        }
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

#[cfg(test)]
mod tests {
    use super::*;
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
            12_000,
            SystemTime::now(),
        )
        .unwrap()
    }

    #[test]
    fn body_matches_the_api_type() {
        let mut b = Batcher::new();
        b.push(job("a", Some("sys"), "one"), ());
        b.push(job("b", Some("sys"), "two"), ());
        let batch = b.take_batch(12_000, usize::MAX).unwrap();
        let parsed: BroadcastBody = serde_json::from_slice(&batch.body).unwrap();
        assert_eq!(parsed.random, batch.random);
        assert_eq!(parsed.from_account.as_deref(), Some("sys"));
        assert_eq!(parsed.msg_body.len(), 2);
        assert_eq!(parsed.to_bytes(), batch.body, "same bytes as the API type");
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
        while let Some(batch) = b.take_batch(12_000, usize::MAX) {
            assert!(batch.body.len() <= 12_000);
            let tags: Vec<i32> = batch.jobs.iter().map(|q| q.tag).collect();
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
        let both = b.take_batch(12_000, usize::MAX).unwrap();
        let widest = both.body.len() + (10 - both.random.to_string().len());
        for (cap, want) in [(widest, 2), (widest - 1, 1)] {
            let mut b = Batcher::new();
            b.push(job("a", None, "x"), ());
            b.push(job("b", None, "y"), ());
            assert_eq!(
                b.take_batch(cap, usize::MAX).unwrap().jobs.len(),
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
        let batch = b.take_batch(12_000, usize::MAX).unwrap();
        let random = batch.random;
        let (left, right) = batch.split();
        assert_eq!(left.jobs.iter().map(|q| q.tag).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(
            right.jobs.iter().map(|q| q.tag).collect::<Vec<_>>(),
            [2, 3, 4]
        );
        assert_ne!(left.random, random);
        assert_eq!(left.random, call_random(["j0", "j1"].into_iter()));
    }
}
