//! The maps the agent reads and writes while it runs: the connection map
//! (the pipeline's veto, behind [`KernelControl`]) and the per-CPU
//! counters (read by the telemetry registry).

use std::sync::Mutex;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray};
use tracer_common::{conn_key, ConnState, NO_LINK_RUNTIME, PROTO_IGNORED, STAT_COUNT};

use crate::{pipeline::filter::KernelControl, telemetry::KernelCounters};

/// The kernel's connection map (`tracer_common::MAP_CONNS`), and the
/// processes whose threads key no link (`tracer_common::MAP_NO_THREAD_LINK`,
/// present when injection is on: only the injector links in the kernel).
pub struct KernelMaps {
    pub conns: BpfHashMap<MapData, u64, ConnState>,
    pub no_thread_link: Option<BpfHashMap<MapData, u32, u8>>,
}

impl KernelControl for KernelMaps {
    fn ignore_conn(&mut self, tgid: u32, fd: u32, conn_id: u64) {
        let key = conn_key(tgid, fd);
        if let Ok(mut st) = self.conns.get(&key, 0) {
            // Only the same connection: the fd may have been reused.
            if st.conn_id == conn_id {
                st.proto = PROTO_IGNORED;
                let _ = self.conns.insert(key, st, 0);
            }
        }
    }

    fn forget_conn(&mut self, tgid: u32, fd: u32) {
        let _ = self.conns.remove(&conn_key(tgid, fd));
    }

    fn thread_linking(&mut self, tgid: u32, allowed: bool) {
        let Some(m) = self.no_thread_link.as_mut() else {
            return;
        };
        let r = if allowed {
            m.remove(&tgid)
        } else {
            m.insert(tgid, NO_LINK_RUNTIME, 0)
        };
        if let Err(e) = r {
            // Removing what the exec hook could not insert is no error.
            if !allowed {
                tracing::debug!(tgid, "marking a process as not linkable by thread: {e}");
            }
        }
    }
}

/// The kernel's per-CPU counters (`tracer_common::MAP_STATS`).
pub struct StatsMap(pub Mutex<PerCpuArray<MapData, u64>>);

impl KernelCounters for StatsMap {
    fn read(&self) -> [u64; STAT_COUNT as usize] {
        let mut out = [0; STAT_COUNT as usize];
        let Ok(map) = self.0.lock() else {
            return out;
        };
        for (i, v) in out.iter_mut().enumerate() {
            *v = map
                .get(&(i as u32), 0)
                .map(|vals| vals.iter().sum::<u64>())
                .unwrap_or(0);
        }
        out
    }
}
