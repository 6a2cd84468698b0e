export { TunnelServer, type TunnelServerDeps } from './tunnel-server.js';
export { AgentRegistry } from './agent-registry.js';
export { RegisteredAgent, type AgentIdentity } from './registered-agent.js';
export { CertificateAuthority } from './certificate-authority.js';
export { TokenVerifier, type VerifiedToken } from './token-verifier.js';
export { createToken, loadOrCreateSigningKeyPair, SIGNING_KEY_FILES } from './token-issuer.js';
export { resolveServerConfig, SERVER_CONFIG_SCHEMA, type ServerConfig } from './config.js';
export { buildKubeconfig, type KubeconfigOptions } from './kubeconfig.js';
export { ClientHelloParser, parseClientHello, readClientHello } from './client-hello.js';
