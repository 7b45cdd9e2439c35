//! Programs the capture path reaches by tail call (the SERVER-context
//! reader, the HTTP/2 frame walker): loading them, placing them in the
//! tail-call tables, and the kernel feature they are built on.

use aya::{maps::ProgramArray, programs::Program, util::KernelVersion, Ebpf};

use super::BpfError;

/// `bpf_loop`, which the tail-called programs are built on, came in
/// Linux 5.17.
const BPF_LOOP_SINCE: (u8, u8) = (5, 17);

/// Whether this kernel has `bpf_loop`, and if not, why. (Distribution
/// kernels may backport it; a load that fails anyway is reported with the
/// verifier's reason.)
pub fn bpf_loop_supported() -> Result<(), BpfError> {
    let Ok(v) = KernelVersion::current() else {
        return Ok(());
    };
    if v < KernelVersion::new(BPF_LOOP_SINCE.0, BPF_LOOP_SINCE.1, 0) {
        return Err(BpfError::Unsupported(format!(
            "needs bpf_loop (Linux >= {}.{}); this kernel is {v}",
            BPF_LOOP_SINCE.0, BPF_LOOP_SINCE.1
        )));
    }
    Ok(())
}

/// Loads (verifies) a tracepoint- or uprobe-type program meant for a tail
/// call.
pub fn load(ebpf: &mut Ebpf, name: &'static str) -> Result<(), BpfError> {
    let prog = ebpf
        .program_mut(name)
        .ok_or(BpfError::MissingProgram(name))?;
    match prog {
        Program::TracePoint(p) => p.load(),
        Program::UProbe(p) => p.load(),
        _ => return Err(BpfError::MissingProgram(name)),
    }
    .map_err(BpfError::program(name))
}

/// Puts loaded program `name` at `index` of the tail-call table `map`.
pub fn set(
    ebpf: &mut Ebpf,
    name: &'static str,
    map: &'static str,
    index: u32,
) -> Result<(), BpfError> {
    let prog = ebpf
        .program_mut(name)
        .ok_or(BpfError::MissingProgram(name))?;
    let fd = prog
        .fd()
        .map_err(BpfError::program(name))?
        .try_clone()
        .map_err(BpfError::Fd)?;
    let map_err = BpfError::map(map);
    let mut tails = ProgramArray::try_from(ebpf.map_mut(map).ok_or(BpfError::MissingMap(map))?)
        .map_err(map_err)?;
    tails.set(index, &fd, 0).map_err(map_err)
}

/// Empties `index` of the tail-call table `map` (best effort: used to
/// undo a partial setup).
pub fn clear(ebpf: &mut Ebpf, map: &'static str, index: u32) {
    if let Some(Ok(mut tails)) = ebpf.map_mut(map).map(ProgramArray::try_from) {
        let _ = tails.clear_index(&index);
    }
}
