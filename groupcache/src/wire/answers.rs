//! The replica's budget of bytes for batch answers in flight, and the answer's body that holds
//! its share until it has been written or dropped.
//!
//! A batch takes a slot like any request, yet its answer carries many values: without a bound
//! of their own, concurrent batches of large values held far more than the peer port's other
//! limits (four batches of 1,024 values of 256 KiB at once: +807 MiB resident, SECURITY.md). Each
//! answer takes its room from this budget before the owner loads anything, keeps the part its
//! values fill once they are in, and gives that back when its body is gone. The body is the
//! values themselves (views shared with the caches), not a copy of them.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use axum::body::HttpBody;
use bytes::Bytes;
use hyper::body::{Frame, SizeHint};

/// Bytes of values all batch answers being built or sent hold at once.
#[derive(Debug)]
pub(crate) struct AnswerBudget {
    limit: usize,
    held: AtomicUsize,
}

/// A share of the [`AnswerBudget`], given back when dropped.
#[must_use]
#[derive(Debug)]
pub(crate) struct Reserved {
    budget: Arc<AnswerBudget>,
    amount: usize,
}

impl AnswerBudget {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(AnswerBudget {
            limit,
            held: AtomicUsize::new(0),
        })
    }

    /// Up to `wanted` bytes, as many as are left of the budget now (possibly none).
    pub(crate) fn reserve(self: &Arc<Self>, wanted: usize) -> Reserved {
        let mut held = self.held.load(Ordering::Relaxed);
        loop {
            let amount = wanted.min(self.limit.saturating_sub(held));
            // A compare-and-swap, not an add then a check: two answers never both see the
            // same bytes free.
            match self.held.compare_exchange_weak(
                held,
                held + amount,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Reserved {
                        budget: self.clone(),
                        amount,
                    };
                }
                Err(now) => held = now,
            }
        }
    }

    /// Bytes held now.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

impl Reserved {
    pub(crate) fn amount(&self) -> usize {
        self.amount
    }

    /// Keeps only `used` bytes of the share (what the answer's values take), giving the rest
    /// back now.
    pub(crate) fn keep(&mut self, used: usize) {
        let used = used.min(self.amount);
        self.budget
            .held
            .fetch_sub(self.amount - used, Ordering::AcqRel);
        self.amount = used;
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.amount, Ordering::AcqRel);
    }
}

/// A batch answer's body: its parts in order (framing, and values shared with the caches),
/// with the share of the budget its values hold, given back when the body is dropped: once
/// written, or when the connection goes before that.
#[derive(Debug)]
pub(crate) struct AnswerBody {
    parts: VecDeque<Bytes>,
    remaining: u64,
    _reserved: Reserved,
}

impl AnswerBody {
    pub(crate) fn new(parts: Vec<Bytes>, reserved: Reserved) -> Self {
        let remaining = parts.iter().map(|part| part.len() as u64).sum();
        AnswerBody {
            parts: parts.into(),
            remaining,
            _reserved: reserved,
        }
    }
}

impl HttpBody for AnswerBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let part = self.parts.pop_front();
        if let Some(part) = &part {
            self.remaining -= part.len() as u64;
        }
        Poll::Ready(part.map(|part| Ok(Frame::data(part))))
    }

    fn is_end_stream(&self) -> bool {
        self.parts.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        // A known length: the answer goes with a `content-length`, as before.
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[test]
    fn shares_are_taken_as_far_as_the_budget_goes_and_given_back() {
        let budget = AnswerBudget::new(100);
        let first = budget.reserve(60);
        assert_eq!(first.amount(), 60);
        let second = budget.reserve(60);
        assert_eq!(second.amount(), 40, "what is left");
        assert_eq!(budget.reserve(1).amount(), 0, "nothing is left");
        drop(first);
        assert_eq!(budget.held(), 40);
        drop(second);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn what_an_answer_does_not_use_is_given_back_at_once() {
        let budget = AnswerBudget::new(100);
        let mut reserved = budget.reserve(100);
        reserved.keep(30);
        assert_eq!(budget.held(), 30);
        assert_eq!(budget.reserve(100).amount(), 70);
        reserved.keep(500);
        assert_eq!(reserved.amount(), 30, "never more than was taken");
        drop(reserved);
        assert_eq!(budget.held(), 0);
    }

    fn body(budget: &Arc<AnswerBudget>) -> AnswerBody {
        let mut reserved = budget.reserve(1000);
        reserved.keep(6);
        let parts = [&b"ab"[..], b"cd", b"ef"].map(Bytes::from_static).to_vec();
        AnswerBody::new(parts, reserved)
    }

    #[tokio::test]
    async fn a_body_written_to_the_end_gives_its_share_back() {
        let budget = AnswerBudget::new(1000);
        let body = body(&budget);
        assert_eq!(body.size_hint().exact(), Some(6));
        assert_eq!(budget.held(), 6);
        let written = body.collect().await.unwrap().to_bytes();
        assert_eq!(written, "abcdef");
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn a_body_dropped_halfway_gives_its_share_back() {
        let budget = AnswerBudget::new(1000);
        let mut body = body(&budget);
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "ab");
        assert_eq!(body.size_hint().exact(), Some(4));
        assert_eq!(budget.held(), 6, "held while the body is being written");
        drop(body);
        assert_eq!(budget.held(), 0);
    }
}
