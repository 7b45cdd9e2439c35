//! The verdict on one trace. Every problem found is listed; the code is
//! the gravest: a loop or a time inversion (422) before a broken chain
//! (409), else complete (200).

use std::collections::{HashMap, HashSet};

use super::CheckedSpan;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Code {
    /// One root, every parent present, children within their parents.
    Complete = 200,
    /// A parent id not in the trace, or more than one root.
    Broken = 409,
    /// A child outside its parent in time, or parent links that loop.
    Inverted = 422,
}

impl Code {
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    pub fn word(self) -> &'static str {
        match self {
            Code::Complete => "complete",
            Code::Broken => "broken",
            Code::Inverted => "inverted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub code: Code,
    /// What is wrong, one line each (empty when complete).
    pub problems: Vec<String>,
}

/// Problems listed per trace at most: a huge broken trace says enough
/// with the first few.
const MAX_PROBLEMS: usize = 8;

fn who(s: &CheckedSpan) -> String {
    if s.service.is_empty() {
        format!("span {} ({})", s.span_id, s.name)
    } else {
        format!("span {} ({} {})", s.span_id, s.service, s.name)
    }
}

/// Judges the spans of one trace. `tolerance_ns` absorbs clock skew
/// between the hosts that recorded a parent and its child.
pub fn judge(spans: &[CheckedSpan], tolerance_ns: u64) -> Verdict {
    let mut by_id: HashMap<&str, &CheckedSpan> = HashMap::with_capacity(spans.len());
    let mut duplicates = 0usize;
    for s in spans {
        if by_id.insert(s.span_id.as_str(), s).is_some() {
            duplicates += 1;
        }
    }
    let mut broken = Vec::new();
    let mut inverted = Vec::new();
    if duplicates > 0 {
        broken.push(format!("{duplicates} span id(s) appear more than once"));
    }
    let roots: Vec<&CheckedSpan> = by_id
        .values()
        .copied()
        .filter(|s| s.parent_id.is_none())
        .collect();
    if roots.len() > 1 {
        let mut names: Vec<String> = roots.iter().map(|s| who(s)).collect();
        names.sort();
        broken.push(format!("{} roots: {}", roots.len(), names.join(", ")));
    }
    let mut ids: Vec<&&str> = by_id.keys().collect();
    ids.sort();
    for id in ids {
        let s = by_id[*id];
        let Some(pid) = s.parent_id.as_deref() else {
            continue;
        };
        let Some(parent) = by_id.get(pid) else {
            broken.push(format!(
                "{} has parent {pid}, which is not in the trace",
                who(s)
            ));
            continue;
        };
        if s.start_ns.saturating_add(tolerance_ns) < parent.start_ns {
            inverted.push(format!(
                "{} starts {} ns before its parent {}",
                who(s),
                parent.start_ns - s.start_ns,
                who(parent)
            ));
        }
        if s.end_ns > parent.end_ns.saturating_add(tolerance_ns) {
            inverted.push(format!(
                "{} ends {} ns after its parent {}",
                who(s),
                s.end_ns - parent.end_ns,
                who(parent)
            ));
        }
    }
    // Loops: follow each span's parents; a span met twice on one walk is
    // on a cycle (each walk is at most the trace's length).
    let mut on_cycle: HashSet<&str> = HashSet::new();
    let mut done: HashSet<&str> = HashSet::new();
    for start in by_id.keys() {
        let mut path: Vec<&str> = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();
        let mut cur = Some(*start);
        while let Some(id) = cur {
            if done.contains(id) {
                break;
            }
            if !seen.insert(id) {
                on_cycle.insert(id);
                break;
            }
            path.push(id);
            cur = by_id.get(id).and_then(|s| s.parent_id.as_deref());
        }
        done.extend(path);
    }
    if !on_cycle.is_empty() {
        let mut ids: Vec<&str> = on_cycle.into_iter().collect();
        ids.sort();
        inverted.push(format!(
            "parent links loop through span(s) {}",
            ids.join(", ")
        ));
    } else if roots.is_empty() && !spans.is_empty() && broken.is_empty() {
        inverted.push("no root span".to_owned());
    }
    let code = if !inverted.is_empty() {
        Code::Inverted
    } else if !broken.is_empty() {
        Code::Broken
    } else {
        Code::Complete
    };
    let mut problems = inverted;
    problems.extend(broken);
    problems.truncate(MAX_PROBLEMS);
    Verdict { code, problems }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, parent: Option<&str>, start: u64, end: u64) -> CheckedSpan {
        CheckedSpan {
            trace_id: "t".into(),
            span_id: id.into(),
            parent_id: parent.map(str::to_owned),
            name: "GET /".into(),
            service: "svc".into(),
            start_ns: start,
            end_ns: end,
        }
    }

    #[test]
    fn a_chain_across_services_is_complete() {
        let t = [
            span("a", None, 0, 100),
            span("b", Some("a"), 10, 90),
            span("c", Some("b"), 20, 80),
        ];
        assert_eq!(
            judge(&t, 0),
            Verdict {
                code: Code::Complete,
                problems: vec![]
            }
        );
    }

    #[test]
    fn a_missing_parent_or_a_second_root_is_broken() {
        let v = judge(&[span("a", None, 0, 100), span("c", Some("zz"), 20, 80)], 0);
        assert_eq!(v.code, Code::Broken);
        assert!(v.problems[0].contains("parent zz"), "{v:?}");
        let v = judge(&[span("a", None, 0, 100), span("b", None, 20, 80)], 0);
        assert_eq!(v.code, Code::Broken);
        assert!(v.problems[0].starts_with("2 roots"), "{v:?}");
    }

    #[test]
    fn time_inversions_beyond_the_tolerance() {
        let t = [span("a", None, 100, 200), span("b", Some("a"), 90, 150)];
        assert_eq!(judge(&t, 0).code, Code::Inverted);
        assert_eq!(judge(&t, 10).code, Code::Complete);
        let t = [span("a", None, 100, 200), span("b", Some("a"), 150, 260)];
        let v = judge(&t, 50);
        assert_eq!(v.code, Code::Inverted);
        assert!(v.problems[0].contains("ends 60 ns after"), "{v:?}");
    }

    #[test]
    fn loops_are_found_and_not_followed_forever() {
        let t = [span("a", Some("b"), 0, 10), span("b", Some("a"), 0, 10)];
        let v = judge(&t, 0);
        assert_eq!(v.code, Code::Inverted);
        assert!(v.problems[0].contains("loop"), "{v:?}");
        let t = [span("a", Some("a"), 0, 10)];
        assert_eq!(judge(&t, 0).code, Code::Inverted);
        // A long chain is walked once, not once per span.
        let mut t = vec![span("0", None, 0, 1_000_000)];
        for i in 1..20_000u64 {
            t.push(span(
                &i.to_string(),
                Some(&(i - 1).to_string()),
                i,
                1_000_000 - i,
            ));
        }
        assert_eq!(judge(&t, 0).code, Code::Complete);
    }

    #[test]
    fn an_inversion_outranks_a_broken_chain() {
        let t = [
            span("a", None, 100, 200),
            span("b", Some("a"), 50, 150),
            span("c", Some("gone"), 0, 1),
        ];
        let v = judge(&t, 0);
        assert_eq!(v.code, Code::Inverted);
        assert_eq!(v.problems.len(), 2);
    }
}
