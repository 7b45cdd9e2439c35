//! In-process parent links: which SERVER spans each task is serving right
//! now, so a CLIENT request the task makes can become a child of the one
//! it serves. Keyed by [`TaskId`]; completing or abandoning a SERVER span
//! is a keyed removal (by task, or through the connection index).
//!
//! A task serving several requests at once (event loops, pools) cannot
//! tell which one caused a CLIENT request: the caller leaves such a span
//! as a counted root. A wrong link is worse than none.

use std::collections::HashMap;

use super::{ids::SpanIds, task::TaskId};
use crate::telemetry::Counters;

/// Active SERVER spans tracked at once; beyond this the table is reset
/// (and counted) rather than grown.
const MAX_ACTIVE: usize = 65_536;

#[derive(Debug)]
struct Active {
    ids: SpanIds,
    conn_id: u64,
    /// CLIENT spans linked to this SERVER span so far.
    children: u64,
}

/// What a task is serving, as seen by a CLIENT request it makes.
#[derive(Debug, PartialEq, Eq)]
pub enum Serving<'a> {
    Nothing,
    /// Exactly one request: the CLIENT request is its child.
    One(&'a SpanIds),
    /// Several at once: unknowable.
    Several,
    /// The task is not one the table can key (see [`TaskId::is_known`]).
    Unfollowable,
}

#[derive(Default)]
pub struct Parents {
    active: HashMap<TaskId, Vec<Active>>,
    /// Tasks with an active SERVER span on each connection (by conn_id).
    by_conn: HashMap<u64, Vec<TaskId>>,
    len: usize,
}

impl Parents {
    /// A SERVER request started on `task`.
    pub fn start_server(&mut self, task: TaskId, conn_id: u64, ids: &SpanIds, c: &Counters) {
        if !task.is_known() {
            return;
        }
        if self.len >= MAX_ACTIVE {
            self.active.clear();
            self.by_conn.clear();
            self.len = 0;
            Counters::inc(&c.link_table_resets);
        }
        self.active.entry(task).or_default().push(Active {
            ids: ids.clone(),
            conn_id,
            children: 0,
        });
        self.by_conn.entry(conn_id).or_default().push(task);
        self.len += 1;
    }

    /// What `task` serves; a single SERVER span gains a child.
    pub fn adopt(&mut self, task: TaskId) -> Serving<'_> {
        if !task.is_known() {
            return Serving::Unfollowable;
        }
        match self.active.get_mut(&task).map(Vec::as_mut_slice) {
            Some([only]) => {
                only.children += 1;
                Serving::One(&only.ids)
            }
            Some(several) if !several.is_empty() => Serving::Several,
            _ => Serving::Nothing,
        }
    }

    /// SERVER spans `task` is serving now.
    pub fn serving(&self, task: TaskId) -> usize {
        self.active.get(&task).map_or(0, Vec::len)
    }

    /// Whether `task` is serving the SERVER span `span_id`.
    pub fn serves(&self, task: TaskId, span_id: [u8; 8]) -> bool {
        self.active
            .get(&task)
            .is_some_and(|l| l.iter().any(|a| a.ids.span_id == span_id))
    }

    /// `tracestate` of the SERVER span `parent` that `task` serves.
    pub fn tracestate(&self, task: TaskId, parent: [u8; 8]) -> Option<String> {
        self.active
            .get(&task)?
            .iter()
            .find(|a| a.ids.span_id == parent)?
            .ids
            .tracestate
            .clone()
    }

    fn unindex(&mut self, conn_id: u64, task: TaskId) {
        if let Some(tasks) = self.by_conn.get_mut(&conn_id) {
            if let Some(i) = tasks.iter().position(|t| *t == task) {
                tasks.swap_remove(i);
            }
            if tasks.is_empty() {
                self.by_conn.remove(&conn_id);
            }
        }
    }

    /// The SERVER span `span_id` on `task` completed: the task is free of it.
    pub fn server_done(&mut self, task: TaskId, span_id: [u8; 8]) {
        let Some(list) = self.active.get_mut(&task) else {
            return;
        };
        let Some(i) = list.iter().position(|a| a.ids.span_id == span_id) else {
            return;
        };
        let a = list.swap_remove(i);
        if list.is_empty() {
            self.active.remove(&task);
        }
        self.len = self.len.saturating_sub(1);
        self.unindex(a.conn_id, task);
    }

    /// Removes `task`'s entries matching `gone`; children of those never
    /// completed are orphans (their parent will never be exported).
    fn drop_where(&mut self, task: TaskId, gone: impl Fn(&Active) -> bool) -> (usize, u64) {
        let Some(list) = self.active.get_mut(&task) else {
            return (0, 0);
        };
        let before = list.len();
        let mut orphans = 0;
        list.retain(|a| {
            let g = gone(a);
            if g {
                orphans += a.children;
            }
            !g
        });
        let removed = before - list.len();
        if list.is_empty() {
            self.active.remove(&task);
        }
        self.len = self.len.saturating_sub(removed);
        (removed, orphans)
    }

    /// A connection closed: SERVER requests on it that never completed
    /// are gone.
    pub fn forget_conn(&mut self, conn_id: u64, c: &Counters) {
        let Some(tasks) = self.by_conn.remove(&conn_id) else {
            return;
        };
        for task in tasks {
            let (_, orphans) = self.drop_where(task, |a| a.conn_id == conn_id);
            Counters::add(&c.orphan_spans, orphans);
        }
    }

    /// A process exited (rare: the only walk over the table).
    pub fn forget_process(&mut self, tgid: u32, c: &Counters) {
        let tasks: Vec<TaskId> = self
            .active
            .keys()
            .filter(|t| t.tgid() == tgid)
            .copied()
            .collect();
        for task in tasks {
            let (_, orphans) = self.drop_where(task, |_| true);
            Counters::add(&c.orphan_spans, orphans);
        }
        self.by_conn.retain(|_, tasks| {
            tasks.retain(|t| t.tgid() != tgid);
            !tasks.is_empty()
        });
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
