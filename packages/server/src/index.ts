export {
  TunnelServer,
  type TunnelServerDeps,
  type TunnelServerEvents,
  type ServerStatus,
  type AgentEvent,
} from './tunnel-server.js';
export { runCli, type ServerCliIo, SERVER_VERSION, EXIT_OK, EXIT_FAILED, EXIT_USAGE } from './cli.js';
export { AgentRegistry } from './agent-registry.js';
export { RegisteredAgent, type AgentIdentity } from './registered-agent.js';
export { openRouteStream, type RouteStream, type RouteStreamRequest } from './open-route-stream.js';
export { UserForwarder, type UserConnectionEvent } from './user-forwarder.js';
export { ROUTE_MODES, type RouteModeName } from './modes/route-modes.js';
export type { RouteMode, RouteModeContext, RouteModeFactory } from './modes/route-mode.js';
export { CertificateAuthority } from './certificate-authority.js';
export { RouteCertificateAuthority, ROUTE_CA_FILES, MAX_CSR_BYTES } from './route-ca.js';
export { TokenVerifier, type VerifiedToken } from './token-verifier.js';
export { createToken, loadOrCreateSigningKeyPair, SIGNING_KEY_FILES } from './token-issuer.js';
export { resolveServerConfig, SERVER_CONFIG_SCHEMA, type ServerConfig } from './config.js';
export { buildKubeconfig, type KubeconfigOptions } from './kubeconfig.js';
export { ClientHelloParser, parseClientHello, readClientHello } from './client-hello.js';
export { createLink, LinkVerifier, type LinkSession } from './http-link.js';
export { LOGIN_PATH, LOGOUT_PATH } from './modes/http.js';
export { SESSION_COOKIE } from './http-access.js';
