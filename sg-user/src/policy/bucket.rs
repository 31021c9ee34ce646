//! Token buckets for messages and recipients, per key (a SASL user, a client address), held in
//! memory with a bound: when the table is full, the key whose bucket has been full the longest
//! goes (it holds no state worth keeping: a full bucket is what a new key gets).

use std::collections::HashMap;

use crate::domain::Rate;

/// A bucket's shape: `capacity` tokens, refilled at one per `rate.interval`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shape {
    pub rate: Rate,
    pub capacity: u32,
}

impl Shape {
    /// `rate` (like `60/min`) with `capacity` tokens; for tests.
    #[cfg(test)]
    pub fn of(rate: &str, capacity: u32) -> Shape {
        Shape {
            rate: rate.parse().expect("a rate"),
            capacity,
        }
    }

    fn per_second(&self) -> f64 {
        1.0 / self.rate.interval.as_secs_f64()
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    /// Seconds on the caller's clock when `tokens` was brought up to date.
    at: f64,
}

/// Buckets of one kind (messages, or recipients), per key.
pub struct Buckets {
    buckets: HashMap<Box<str>, Bucket>,
    max_keys: usize,
}

impl Buckets {
    pub fn new(max_keys: usize) -> Buckets {
        Buckets {
            buckets: HashMap::new(),
            max_keys,
        }
    }

    fn level(b: &Bucket, shape: &Shape, now: f64) -> f64 {
        (b.tokens + (now - b.at).max(0.0) * shape.per_second()).min(f64::from(shape.capacity))
    }

    /// The tokens `key` has now (a key never seen has a full bucket).
    pub fn tokens(&self, key: &str, shape: &Shape, now: f64) -> f64 {
        self.buckets
            .get(key)
            .map_or(f64::from(shape.capacity), |b| Buckets::level(b, shape, now))
    }

    /// Takes `n` tokens when there are that many; false (and nothing taken) otherwise.
    pub fn take(&mut self, key: &str, shape: &Shape, n: u32, now: f64) -> bool {
        let have = self.tokens(key, shape, now);
        if have < f64::from(n) {
            return false;
        }
        self.set(key, shape, have - f64::from(n), now);
        true
    }

    /// Takes `n` tokens, or as many as there are: what another host took from its copy of a
    /// shared bucket.
    pub fn drain(&mut self, key: &str, shape: &Shape, n: u32, now: f64) {
        let have = self.tokens(key, shape, now);
        self.set(key, shape, (have - f64::from(n)).max(0.0), now);
    }

    fn set(&mut self, key: &str, shape: &Shape, tokens: f64, now: f64) {
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.max_keys {
            self.evict(now, shape);
        }
        self.buckets.insert(key.into(), Bucket { tokens, at: now });
    }

    /// Makes room: every bucket that is full again goes; if none is, the fullest one.
    fn evict(&mut self, now: f64, shape: &Shape) {
        let capacity = f64::from(shape.capacity);
        self.buckets
            .retain(|_, b| Buckets::level(b, shape, now) < capacity);
        if self.buckets.len() >= self.max_keys
            && let Some(fullest) = self
                .buckets
                .iter()
                .max_by(|a, b| {
                    Buckets::level(a.1, shape, now).total_cmp(&Buckets::level(b.1, shape, now))
                })
                .map(|(k, _)| k.clone())
        {
            self.buckets.remove(&fullest);
        }
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_gives_its_capacity_then_refills_at_its_rate() {
        let mut b = Buckets::new(10);
        let s = Shape::of("60/min", 3);
        assert!(b.take("alice", &s, 1, 0.0));
        assert!(b.take("alice", &s, 2, 0.0));
        assert!(!b.take("alice", &s, 1, 0.0), "empty");
        assert!(!b.take("alice", &s, 1, 0.5));
        assert!(b.take("alice", &s, 1, 1.0), "one token a second");
        // Other keys are not affected; a refill never passes the capacity.
        assert!(b.take("bob", &s, 3, 1.0));
        assert!((b.tokens("alice", &s, 1000.0) - 3.0).abs() < 1e-9);
        // Asking for more than there is takes nothing.
        assert!(!b.take("carol", &s, 4, 0.0));
        assert!((b.tokens("carol", &s, 0.0) - 3.0).abs() < 1e-9);
        // Draining takes what there is, never below empty.
        b.drain("carol", &s, 2, 0.0);
        assert!((b.tokens("carol", &s, 0.0) - 1.0).abs() < 1e-9);
        b.drain("carol", &s, 5, 0.0);
        assert!(b.tokens("carol", &s, 0.0).abs() < 1e-9);
    }

    #[test]
    fn a_full_table_forgets_full_buckets_first() {
        let mut b = Buckets::new(2);
        let s = Shape::of("1/s", 2);
        assert!(b.take("a", &s, 2, 0.0));
        assert!(b.take("b", &s, 1, 9.0));
        // At 10 s, "a" is full again and goes; "b" (used at 9 s) stays.
        assert!(b.take("c", &s, 2, 9.5));
        assert_eq!(b.len(), 2);
        assert!(!b.take("c", &s, 1, 9.5), "c's bucket is kept empty");
        assert!((b.tokens("b", &s, 9.5) - 1.5).abs() < 1e-9);
    }
}
