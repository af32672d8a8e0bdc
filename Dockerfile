# The one logmill image the manifests of deploy/ run (agent, consume, collect).
#
#   docker build -t logmill/logmill:0.1.0 .
#
# Build stage: the release binary from the locked dependencies. Runtime stage: Debian slim with
# that binary alone (TLS roots are compiled in: rustls with webpki-roots), as an unprivileged
# user. The agent's DaemonSet sets its own uid and groups (deploy/README.md, Permissions).
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin logmill \
 && cp target/release/logmill /logmill

FROM debian:bookworm-slim
COPY --from=build /logmill /usr/local/bin/logmill
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/logmill"]
