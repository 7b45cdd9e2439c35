//! Uprobes on user-space libraries: [`registry`] (attach per file,
//! reference-counted by the processes that map it), [`discover`] (which
//! files, from `/proc` and exec/dlopen notices), [`openssl`] (the OpenSSL
//! API probes and the visibility verdicts).
pub mod discover;
pub mod openssl;
pub mod registry;

pub use openssl::TlsProbes;
