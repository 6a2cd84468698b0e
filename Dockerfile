# syntax=docker/dockerfile:1
# cluster-tunnel: one image, both CLIs on PATH.
#   tunnel-server start --config /etc/tunnel/config/server.yaml   (deploy/server)
#   tunnel-client --server wss://<domain>/connect ...              (deploy/client)
# Build: docker build -t registry.example/cluster-tunnel:0.1.0 .
#
# DECIDE: pin the base further by digest (node:20.20.2-bookworm-slim@sha256:...) if your
# registry policy asks for it; bump NODE_VERSION with Node 20 security releases.
ARG NODE_VERSION=20.20.2

# ---- build: all dependencies, TypeScript → packages/*/dist ----
FROM node:${NODE_VERSION}-bookworm-slim AS build
WORKDIR /src
# Manifests first, so the dependency layer is cached until they change.
COPY package.json package-lock.json ./
COPY packages/protocol/package.json packages/protocol/
COPY packages/config/package.json packages/config/
COPY packages/server/package.json packages/server/
COPY packages/client/package.json packages/client/
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.base.json tsconfig.json ./
COPY packages/protocol/tsconfig.json packages/protocol/
COPY packages/protocol/src packages/protocol/src
COPY packages/config/tsconfig.json packages/config/
COPY packages/config/src packages/config/src
COPY packages/server/tsconfig.json packages/server/
COPY packages/server/src packages/server/src
COPY packages/client/tsconfig.json packages/client/
COPY packages/client/src packages/client/src
RUN npm run build

# ---- runtime: production dependencies and the compiled output only ----
FROM node:${NODE_VERSION}-bookworm-slim AS runtime
ENV NODE_ENV=production \
    PATH=/app/node_modules/.bin:$PATH
WORKDIR /app
COPY package.json package-lock.json ./
COPY packages/protocol/package.json packages/protocol/
COPY packages/config/package.json packages/config/
COPY packages/server/package.json packages/server/
COPY packages/server/bin packages/server/bin
COPY packages/client/package.json packages/client/
COPY packages/client/bin packages/client/bin
COPY --from=build /src/packages/protocol/dist packages/protocol/dist
COPY --from=build /src/packages/config/dist packages/config/dist
COPY --from=build /src/packages/server/dist packages/server/dist
COPY --from=build /src/packages/client/dist packages/client/dist
# npm links the workspaces' bins (bin/tunnel-server.js, bin/tunnel-client.js, which load dist)
# into node_modules/.bin. No install scripts run:
# bufferutil loads its bundled prebuilt binary (WebSocket masking falls back to JS without it).
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund \
 && npm cache clean --force \
 && rm -f packages/*/dist/.tsbuildinfo
# The base image's `node` user. Numeric, so the kubelet can enforce runAsNonRoot.
USER 1000:1000
# 8443 the TLS port (server), 9090 the server's admin port, 8081 the agent's health port.
EXPOSE 8443 9090 8081
# Node runs as PID 1 and handles SIGTERM itself (both CLIs drain on it).
CMD ["tunnel-server", "--help"]
