//! Uprobes on user-space libraries: [`registry`] (attach per file,
//! reference-counted by the processes that map it), [`discover`] (which
//! files, from `/proc` and exec/dlopen notices), [`openssl`] (the OpenSSL
//! API probes and the visibility verdicts), [`golang`] (Go's crypto/tls).
pub mod discover;
pub mod golang;
pub mod openssl;
pub mod registry;

pub use openssl::TlsProbes;
