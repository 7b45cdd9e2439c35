//! What the pipeline tells the uprobe manager about processes: typed
//! notices, queued between two drains of the ring (bounded, drops counted).

use std::collections::HashSet;

use tracer_common::{EVENT_DLOPEN, EVENT_EXEC, EVENT_PROC_EXIT};

use crate::telemetry::Counters;

/// A process event the uprobe manager acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The process executed a new program: its libraries are about to be
    /// mapped.
    Exec(u32),
    /// The process returned from `dlopen`: it may have loaded a TLS library.
    Dlopen(u32),
    /// The process exited.
    Exit(u32),
    /// A TLS handshake from this process (and its command name).
    TlsHandshake { tgid: u32, comm: String },
    /// This process's TLS library produced plaintext: its TLS is visible.
    TlsPlaintext(u32),
}

impl Notice {
    /// The notice for a kernel process event kind (`EVENT_*`).
    pub fn from_process_event(kind: u8, tgid: u32) -> Option<Self> {
        match kind {
            EVENT_EXEC => Some(Self::Exec(tgid)),
            EVENT_DLOPEN => Some(Self::Dlopen(tgid)),
            EVENT_PROC_EXIT => Some(Self::Exit(tgid)),
            _ => None,
        }
    }
}

/// Process notices held between two drains of the ring.
const MAX_NOTICES: usize = 8192;
/// Processes remembered as producing TLS plaintext before the set resets.
const MAX_TLS_PROCESSES: usize = 65_536;

#[derive(Debug, Default)]
pub struct Notices {
    queue: Vec<Notice>,
    /// Processes already reported as producing TLS plaintext (bounded).
    tls_plaintext: HashSet<u32>,
}

impl Notices {
    pub fn push(&mut self, n: Notice, c: &Counters) {
        if self.queue.len() >= MAX_NOTICES {
            Counters::inc(&c.notices_dropped);
            return;
        }
        self.queue.push(n);
    }

    /// TLS plaintext from `tgid`: reported once per process.
    pub fn tls_plaintext(&mut self, tgid: u32, c: &Counters) {
        if self.tls_plaintext.contains(&tgid) {
            return;
        }
        if self.tls_plaintext.len() >= MAX_TLS_PROCESSES {
            self.tls_plaintext.clear();
        }
        self.tls_plaintext.insert(tgid);
        self.push(Notice::TlsPlaintext(tgid), c);
    }

    /// Moves the queued notices into `out`.
    pub fn take(&mut self, out: &mut Vec<Notice>) {
        out.append(&mut self.queue);
    }
}
