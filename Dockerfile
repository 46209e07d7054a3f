# The operator image: a static binary on distroless, non-root, nothing else.
#   docker build -t resurgo .
# The binary is built by build/static-binary.sh, the same script a developer can run; a test
# (tests/tests/dockerfile.rs) checks that this file copies the path that script builds.

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN build/static-binary.sh

# distroless static: no shell, no package manager, no libc; the nonroot variant's user 65532.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/target/x86_64-unknown-linux-gnu/dist/resurgo /usr/local/bin/resurgo
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/resurgo"]
CMD ["run"]
