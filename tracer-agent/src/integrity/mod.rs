//! Trace integrity: is each trace whole? `tracer check FILE` reads spans
//! (this agent's `--output json` lines, or the OTLP JSON a Collector's
//! file exporter writes) from any number of services and nodes, groups
//! them by trace and gives each trace a verdict, coded like HTTP:
//!
//! - `200` complete: one root, every parent present, children inside
//!   their parents in time;
//! - `409` broken chain: a parent id that is not in the trace, or more
//!   than one root;
//! - `422` time inversion or cycle: a child that starts before its parent
//!   or ends after it (beyond a tolerance for clock skew), or parent links
//!   that loop.
//!
//! [`input`] reads the files (hostile: bad lines are counted, not fatal),
//! [`verdict`] judges one trace, [`report`] prints the verdicts. [`live`]
//! gives the agent's own exported local traces the same verdicts, as
//! counters.
pub mod input;
pub mod live;
pub mod report;
pub mod verdict;

pub use input::{read_spans, CheckError, Input};
pub use report::{check, Summary};
pub use verdict::{judge, Code, Verdict};

/// One span as the checker sees it: ids in lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedSpan {
    pub trace_id: String,
    pub span_id: String,
    pub parent_id: Option<String>,
    pub name: String,
    pub service: String,
    pub start_ns: u64,
    pub end_ns: u64,
}
