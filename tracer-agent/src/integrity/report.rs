//! `tracer check`: the verdict of every trace in the files, one line each,
//! then a summary line.

use std::{collections::BTreeMap, io::Write, path::PathBuf};

use super::{judge, read_spans, CheckError, CheckedSpan, Code};

/// Counts over all traces.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub traces: u64,
    pub complete: u64,
    pub broken: u64,
    pub inverted: u64,
    pub spans: u64,
    pub unreadable_lines: u64,
    pub skipped_spans: u64,
}

impl Summary {
    /// Every trace complete (and at least one read).
    pub fn all_complete(&self) -> bool {
        self.traces > 0 && self.complete == self.traces
    }
}

/// Checks the traces in `paths`, writing a line per trace (only the
/// incomplete ones when `quiet`) and the summary to `out`.
pub fn check(
    paths: &[PathBuf],
    tolerance_ns: u64,
    quiet: bool,
    out: &mut impl Write,
) -> Result<Summary, CheckError> {
    let input = read_spans(paths)?;
    let mut traces: BTreeMap<String, Vec<CheckedSpan>> = BTreeMap::new();
    let mut sum = Summary {
        spans: input.spans.len() as u64,
        unreadable_lines: input.unreadable_lines,
        skipped_spans: input.skipped_spans,
        ..Summary::default()
    };
    for s in input.spans {
        traces.entry(s.trace_id.clone()).or_default().push(s);
    }
    for (trace_id, spans) in &traces {
        let v = judge(spans, tolerance_ns);
        sum.traces += 1;
        match v.code {
            Code::Complete => sum.complete += 1,
            Code::Broken => sum.broken += 1,
            Code::Inverted => sum.inverted += 1,
        }
        if quiet && v.code == Code::Complete {
            continue;
        }
        let mut services: Vec<&str> = spans
            .iter()
            .map(|s| s.service.as_str())
            .filter(|s| !s.is_empty())
            .collect();
        services.sort_unstable();
        services.dedup();
        let _ = writeln!(
            out,
            "{} {:<8} {trace_id} spans={} services={}",
            v.code.as_u16(),
            v.code.word(),
            spans.len(),
            services.join(",")
        );
        for p in &v.problems {
            let _ = writeln!(out, "    {p}");
        }
    }
    let _ = writeln!(
        out,
        "traces={} complete(200)={} broken(409)={} inverted(422)={} spans={} unreadable_lines={} skipped_spans={}",
        sum.traces,
        sum.complete,
        sum.broken,
        sum.inverted,
        sum.spans,
        sum.unreadable_lines,
        sum.skipped_spans
    );
    Ok(sum)
}
