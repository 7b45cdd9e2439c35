//! The HTTP/2 frame walker (`probes/h2.rs` in the kernel crate): every
//! frame header and non-DATA frame copied whole, DATA payloads sent as
//! gaps, so trailers behind a large DATA frame are never cut off. Without
//! it (no `bpf_loop`) HTTP/2 is copied like HTTP/1, up to the capture cap
//! per call.

use aya::Ebpf;
use tracer_common::{
    MAP_TAIL_PROGS, MAP_TLS_TAIL_PROGS, PROG_H2_WALK, PROG_TLS_H2_WALK, TAIL_H2_WALK,
};

use super::{tails, BpfError};

/// Loads both walkers, then places them in the capture path's tail-call
/// tables; a failure leaves neither in place.
pub fn attach(ebpf: &mut Ebpf) -> Result<(), BpfError> {
    tails::bpf_loop_supported()?;
    tails::load(ebpf, PROG_H2_WALK)?;
    tails::load(ebpf, PROG_TLS_H2_WALK)?;
    let res = tails::set(ebpf, PROG_H2_WALK, MAP_TAIL_PROGS, TAIL_H2_WALK)
        .and_then(|()| tails::set(ebpf, PROG_TLS_H2_WALK, MAP_TLS_TAIL_PROGS, TAIL_H2_WALK));
    if res.is_err() {
        tails::clear(ebpf, MAP_TAIL_PROGS, TAIL_H2_WALK);
        tails::clear(ebpf, MAP_TLS_TAIL_PROGS, TAIL_H2_WALK);
    }
    res
}
