//! The hand-off from span assembly to one consumer (local output, OTLP
//! export). Batches travel over an unbounded channel, but the number of
//! spans in flight is capped by `capacity` through `queued` (the consumer
//! decrements it when done with a span), so memory is bounded and the
//! event path never waits. Spans beyond the cap are dropped and counted.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use tokio::sync::mpsc;

use crate::{spans::Span, telemetry::Counters};

/// Which counter a sink's drops go to.
#[derive(Debug, Clone, Copy)]
pub enum DropCounter {
    Output,
    Otlp,
}

impl DropCounter {
    pub fn count(self, c: &Counters, n: u64) {
        let counter = match self {
            DropCounter::Output => &c.spans_dropped,
            DropCounter::Otlp => &c.otlp_dropped,
        };
        Counters::add(counter, n);
    }
}

pub struct Sink {
    pub tx: mpsc::UnboundedSender<Arc<Vec<Span>>>,
    pub queued: Arc<AtomicUsize>,
    pub capacity: usize,
    pub dropped: DropCounter,
}

impl Sink {
    /// A sink and the receiving end of its channel.
    pub fn channel(
        capacity: usize,
        dropped: DropCounter,
    ) -> (
        Self,
        mpsc::UnboundedReceiver<Arc<Vec<Span>>>,
        Arc<AtomicUsize>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        (
            Self {
                tx,
                queued: queued.clone(),
                capacity: capacity.max(1),
                dropped,
            },
            rx,
            queued,
        )
    }

    /// Spans the sink can still take.
    pub fn room(&self) -> usize {
        self.capacity
            .saturating_sub(self.queued.load(Ordering::Relaxed))
    }

    /// Sends what fits of `batch`; returns how many were dropped.
    pub fn offer(&self, batch: &Arc<Vec<Span>>, c: &Counters) -> usize {
        let n = batch.len();
        let room = self.room();
        let part = if room >= n {
            batch.clone()
        } else {
            self.dropped.count(c, (n - room) as u64);
            if room == 0 {
                return n;
            }
            Arc::new(batch[..room].to_vec())
        };
        self.queued.fetch_add(part.len(), Ordering::Relaxed);
        if let Err(e) = self.tx.send(part) {
            // The consumer is gone (shutdown): nothing to deliver to.
            self.queued.fetch_sub(e.0.len(), Ordering::Relaxed);
        }
        n.saturating_sub(room)
    }
}
