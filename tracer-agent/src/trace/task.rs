//! Who does the work of a request inside a process: the unit that parent
//! links are keyed by.

use tracer_common::DataHeader;

use crate::metadata::conn::ConnMeta;

/// The unit of execution a request was read or written on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskId {
    /// An OS thread: (tgid, tid).
    Thread { tgid: u32, tid: u32 },
    /// An OS thread of a process whose runtime runs many requests on each
    /// thread in turn (Go): the thread does not say which request, so
    /// nothing is linked through it.
    Shared { tgid: u32, tid: u32 },
}

impl TaskId {
    pub fn thread(tgid: u32, tid: u32) -> Self {
        Self::Thread { tgid, tid }
    }

    /// The task of a data event on `conn`.
    pub fn of(conn: &ConnMeta, hdr: &DataHeader) -> Self {
        if conn.thread_tasks {
            Self::thread(hdr.tgid, hdr.tid)
        } else {
            Self::Shared {
                tgid: hdr.tgid,
                tid: hdr.tid,
            }
        }
    }

    /// The process the task belongs to.
    pub fn tgid(self) -> u32 {
        match self {
            Self::Thread { tgid, .. } | Self::Shared { tgid, .. } => tgid,
        }
    }

    /// The OS thread the bytes went through.
    pub fn tid(self) -> u32 {
        match self {
            Self::Thread { tid, .. } | Self::Shared { tid, .. } => tid,
        }
    }

    /// Whether parent links may be keyed by this task.
    pub fn is_known(self) -> bool {
        matches!(self, Self::Thread { .. })
    }
}
