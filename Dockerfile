# The tracer agent as a container image, built from source.
#
#   docker build -t REGISTRY/tracer:TAG .
#
# The builder stage runs the same commands as a developer machine:
# `cargo xtask build` sets up the nightly toolchain and bpf-linker (built
# against the nightly's own libLLVM) and builds the release agent with
# its kernel programs embedded; `cargo xtask image --rootfs` then lays out
# the binary and the shared libraries `ldd` lists for it. The final image
# is those files on an empty root: no shell, no package manager.
#
# Without a registry, `cargo xtask image` assembles the same root on the
# machine itself and imports it into the local docker.

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo xtask build \
 && cargo xtask image --rootfs /out

FROM scratch
COPY --from=builder /out/ /
# The agent needs the host's PID namespace, tracefs and cgroupfs, and the
# capabilities listed in README.md ("Deploy on Kubernetes"); the manifests
# under deploy/kubernetes set them.
ENV PATH=/bin
LABEL org.opencontainers.image.title="tracer"
ENTRYPOINT ["/bin/tracer"]
