//! Reading an HTTP/1 request head in the kernel, for the SERVER-context
//! reader and the injector: [`head`] finds the lines, the trace headers and
//! the body framing; [`propagation`] decodes the B3 and Jaeger ids (W3C
//! `traceparent` is decoded in `head`).
pub mod head;
pub mod propagation;
