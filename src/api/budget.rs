//! The byte budget of request bodies in flight (`http.max_in_flight_bytes`).
//!
//! Every ingest request holds its body's bytes from the moment it announces or delivers them
//! until its answer is written; what it decodes and spools from them lives just as long. The sum
//! over every request in the process is bounded: a request whose body does not fit is answered
//! 503 AUD-004 at once (with `Retry-After`), before its body is read, so a flood of large
//! batches costs a bounded amount of memory however many connections carry it. A request whose
//! `Content-Length` is known is charged in full before a byte is read; a chunked body is charged
//! chunk by chunk as it arrives.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The process-wide budget; cheap to clone.
#[derive(Clone)]
pub struct BodyBudget {
    sem: Arc<Semaphore>,
    total: usize,
    /// `audit_http_body_bytes_in_flight`, looked up once.
    gauge: metrics::Gauge,
}

/// Bytes held by one request; given back when dropped.
pub struct Held {
    permit: Option<OwnedSemaphorePermit>,
    budget: BodyBudget,
}

impl BodyBudget {
    pub fn new(total_bytes: u64) -> BodyBudget {
        let total = usize::try_from(total_bytes)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        BodyBudget {
            sem: Arc::new(Semaphore::new(total)),
            total,
            gauge: metrics::gauge!("audit_http_body_bytes_in_flight"),
        }
    }

    /// Nothing held yet (a request before its body).
    pub fn none(&self) -> Held {
        Held {
            permit: None,
            budget: self.clone(),
        }
    }

    /// Bytes currently held by requests.
    pub fn in_flight(&self) -> usize {
        self.total - self.sem.available_permits()
    }

    pub fn total(&self) -> usize {
        self.total
    }

    fn publish(&self) {
        self.gauge.set(self.in_flight() as f64);
    }
}

impl Held {
    /// Adds `bytes` to what this request holds; false (nothing added) when the budget has no
    /// room for them.
    pub fn take(&mut self, bytes: usize) -> bool {
        if bytes == 0 {
            return true;
        }
        let Ok(n) = u32::try_from(bytes) else {
            return false;
        };
        match self.budget.sem.clone().try_acquire_many_owned(n) {
            Ok(p) => {
                match &mut self.permit {
                    Some(held) => held.merge(p),
                    None => self.permit = Some(p),
                }
                self.budget.publish();
                true
            }
            Err(_) => false,
        }
    }

    /// Bytes this request holds.
    pub fn bytes(&self) -> usize {
        self.permit.as_ref().map_or(0, |p| p.num_permits())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.permit.take().is_some() {
            self.budget.publish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_up_to_the_budget_and_gives_back_on_drop() {
        let b = BodyBudget::new(100);
        let mut one = b.none();
        assert!(one.take(60));
        assert!(one.take(30));
        let mut two = b.none();
        assert!(!two.take(20), "90 + 20 > 100");
        assert!(two.take(10));
        assert_eq!(b.in_flight(), 100);
        assert_eq!(one.bytes(), 90);
        drop(one);
        assert_eq!(b.in_flight(), 10);
        assert!(two.take(90));
        drop(two);
        assert_eq!(b.in_flight(), 0);
    }
}
