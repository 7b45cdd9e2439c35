//! Everything that talks to the kernel programs through aya: loading and
//! attaching them ([`loader`], [`injection`], [`h2walk`], with the
//! tail-call tables in [`tails`]), draining and recording the
//! ring ([`ring`], [`recording`]) and the maps the pipeline writes or reads
//! ([`kernel`]). One error type and one program lookup serve all.
pub mod h2walk;
pub mod injection;
pub mod kernel;
pub mod loader;
pub mod object_patch;
pub mod recording;
pub mod ring;
pub mod tails;

use std::path::PathBuf;

use aya::{
    programs::{Program, ProgramError},
    Ebpf,
};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum BpfError {
    #[error(
        "this agent was built without its kernel programs (AYA_BUILD_SKIP was set); \
         build it with `cargo xtask build`"
    )]
    NoObject,
    #[error("loading the BPF object failed (are you root? is BTF available?)")]
    Load(#[source] aya::EbpfError),
    #[error("program {0} is missing from the BPF object")]
    MissingProgram(&'static str),
    #[error("program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("required tracepoint {category}:{tracepoint} could not be attached")]
    RequiredAttach {
        category: &'static str,
        tracepoint: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("map {0} is missing from the BPF object")]
    MissingMap(&'static str),
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("no cgroup v2 mount found in /proc/self/mountinfo; mount one or pass --cgroup-path")]
    NoCgroup2,
    #[error("cannot open cgroup directory {0}")]
    Cgroup(PathBuf, #[source] std::io::Error),
    #[error("{0}")]
    Unsupported(String),
    #[error("duplicating a file descriptor")]
    Fd(#[source] std::io::Error),
}

impl BpfError {
    /// A closure mapping a program error of `name` into this type.
    pub fn program(name: &'static str) -> impl Fn(ProgramError) -> Self + Copy {
        move |source| Self::Program { name, source }
    }

    /// A closure mapping a map error of `name` into this type.
    pub fn map(name: &'static str) -> impl Fn(aya::maps::MapError) -> Self + Copy {
        move |source| Self::Map { name, source }
    }
}

/// Program `name` of the object, as its concrete type (`TracePoint`,
/// `UProbe`, `SkMsg`, ...).
pub fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, BpfError>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(BpfError::MissingProgram(name))?
        .try_into()
        .map_err(BpfError::program(name))
}
