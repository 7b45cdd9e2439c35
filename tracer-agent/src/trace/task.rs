//! Who does the work of a request inside a process: the unit that parent
//! links are keyed by.

/// The unit of execution a request was read or written on.
///
/// Today only OS threads are known. Go goroutines and async tasks become
/// further variants, so a runtime that moves work between threads can be
/// linked by the task that really served the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskId {
    /// An OS thread: (tgid, tid).
    Thread { tgid: u32, tid: u32 },
}

impl TaskId {
    pub fn thread(tgid: u32, tid: u32) -> Self {
        Self::Thread { tgid, tid }
    }

    /// The process the task belongs to.
    pub fn tgid(self) -> u32 {
        match self {
            Self::Thread { tgid, .. } => tgid,
        }
    }

    /// The OS thread, where the task is one.
    pub fn tid(self) -> u32 {
        match self {
            Self::Thread { tid, .. } => tid,
        }
    }
}
