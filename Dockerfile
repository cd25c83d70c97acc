# syntax=docker/dockerfile:1

# Build: docker build --build-arg VERSION=v0.1.0 -t ackd:v0.1.0 .
# Run:   docker run -e ACKD_REDIS_URL=redis://redis:6379/0 -p 9466:9466 ackd:v0.1.0

# A patch release, not a floating tag: .ci/vulncheck checks this very release against the Go
# vulnerability database (docs/SECURITY.md).
FROM golang:1.26.11 AS build
ARG VERSION=dev
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /ackd ./cmd/ackd

FROM gcr.io/distroless/static-debian12:nonroot
# On PATH, so operators can run the commands in a running container:
#   docker exec <container> ackd queues
COPY --from=build /ackd /usr/local/bin/ackd
USER nonroot
EXPOSE 9466
# No shell or curl in the image: ackd checks its own /healthz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/ackd", "-healthcheck"]
ENTRYPOINT ["/usr/local/bin/ackd"]
