/**
 * Every error cluster-tunnel raises carries a stable `code` (callers branch on it, never on the
 * message) and a `retryable` flag (whether the same operation may succeed if tried again later).
 * docs/ERRORS.md documents every code in this table; a test keeps the two in step.
 */
export const ERROR_CODES = {
  // Wire protocol (yamux) — the session ends with GoAway(protocol error).
  TUN_ERR_BAD_VERSION: { retryable: false, summary: 'a frame header carried a yamux version other than 0' },
  TUN_ERR_BAD_FRAME_TYPE: { retryable: false, summary: 'a frame header carried an unknown type' },
  TUN_ERR_BAD_FLAGS: { retryable: false, summary: 'a frame carried flags that make no sense for its type' },
  TUN_ERR_FRAME_TOO_LARGE: { retryable: false, summary: 'a Data frame was longer than maxFrameBytes' },
  TUN_ERR_WINDOW_EXCEEDED: {
    retryable: false,
    summary: 'the peer sent more data than the advertised window',
  },
  TUN_ERR_BAD_STREAM_ID: {
    retryable: false,
    summary: 'a stream id of the wrong parity, zero where not allowed, or reused',
  },
  TUN_ERR_PROTOCOL: { retryable: false, summary: 'any other violation of the wire protocol' },
  // Session and stream lifecycle.
  TUN_ERR_SESSION_CLOSED: { retryable: true, summary: 'the session is closing or closed; open a new one' },
  TUN_ERR_REMOTE_GOAWAY: { retryable: true, summary: 'the peer ended the session with GoAway' },
  TUN_ERR_TRANSPORT_CLOSED: { retryable: true, summary: 'the underlying connection ended or failed' },
  TUN_ERR_TIMEOUT: { retryable: true, summary: 'the peer did not answer within the deadline' },
  TUN_ERR_STREAM_RESET: { retryable: true, summary: 'the peer reset the stream (RST)' },
  TUN_ERR_STREAMS_EXHAUSTED: { retryable: true, summary: 'no stream ids are left on this session' },
  TUN_ERR_BAD_CONTROL_MESSAGE: { retryable: false, summary: 'a control message was malformed or unexpected' },
  TUN_ERR_BAD_STREAM_HEADER: { retryable: false, summary: 'a stream header was malformed or too long' },
  TUN_ERR_LIMIT_EXCEEDED: {
    retryable: true,
    summary: 'a peer went over one of the limits in docs/SECURITY.md (`details.limit` names it)',
  },
  // Agent authentication and route ownership.
  TUN_ERR_AUTH_REQUIRED: { retryable: false, summary: 'the agent sent no bearer token' },
  TUN_ERR_TOKEN_INVALID: {
    retryable: false,
    summary: 'the token is malformed or its signature does not verify',
  },
  TUN_ERR_TOKEN_EXPIRED: { retryable: false, summary: 'the token is past its expiry' },
  TUN_ERR_TOKEN_REVOKED: { retryable: false, summary: 'the token id is in the revocation file' },
  TUN_ERR_UNKNOWN_KEY: { retryable: false, summary: 'the token names a key id the server does not trust' },
  TUN_ERR_ROUTE_FORBIDDEN: {
    retryable: false,
    summary: "a route hostname outside the agent's cluster was claimed",
  },
  TUN_ERR_UNSUPPORTED_VERSION: { retryable: false, summary: 'the peer speaks a protocol version we do not' },
  TUN_ERR_SERVER_FULL: { retryable: true, summary: 'the server holds maxAgents sessions already' },
  // Routing user connections.
  TUN_ERR_NO_ROUTE: { retryable: true, summary: 'no connected agent holds the requested hostname' },
  TUN_ERR_UNKNOWN_HOST: { retryable: false, summary: 'the SNI names no hostname this server serves' },
  TUN_ERR_CLIENT_HELLO: {
    retryable: false,
    summary: 'the first bytes of a connection were not a TLS ClientHello',
  },
  TUN_ERR_HANDSHAKE_TIMEOUT: {
    retryable: true,
    summary: 'the ClientHello did not arrive within the deadline',
  },
  TUN_ERR_UNKNOWN_ROUTE: {
    retryable: false,
    summary: 'the agent has no target configured for the route name',
  },
  TUN_ERR_DIAL_FAILED: { retryable: true, summary: 'the agent could not connect to the route target' },
  TUN_ERR_UNKNOWN_STREAM_TYPE: {
    retryable: false,
    summary: 'the agent does not know the stream type the server asked for',
  },
  // agent-tls route certificates (docs/ARCHITECTURE.md, "Route certificates").
  TUN_ERR_CSR_INVALID: {
    retryable: false,
    summary:
      'a certificate signing request was malformed, too large, unsigned by its key, or of a key type not accepted',
  },
  TUN_ERR_CERT_NAME_FORBIDDEN: {
    retryable: false,
    summary: "a certificate signing request named a hostname that is not one of the agent's agent-tls routes",
  },
  TUN_ERR_CERT_SIGNING_REFUSED: {
    retryable: true,
    summary: 'the server will not sign route certificates now (no shared route CA, or too many requests)',
  },
  TUN_ERR_ROUTE_CERT_PENDING: {
    retryable: true,
    summary: 'a user reached an agent-tls route before the agent held a valid route certificate',
  },
  TUN_ERR_ROUTE_CERT_RENEWAL: {
    retryable: true,
    summary:
      'the agent could not renew its route certificate (it retries, serving the old one until it expires)',
  },
  TUN_ERR_ACCESS_DENIED: {
    retryable: false,
    summary: 'an http route request without a valid session (or with a link for another route, or expired)',
  },
  // Configuration.
  TUN_ERR_CONFIG: { retryable: false, summary: 'the configuration is invalid (all problems are listed)' },
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export interface TunnelErrorOptions {
  /** Overrides the code's default. */
  retryable?: boolean;
  cause?: unknown;
  /** Extra structured facts for logs (never secrets). */
  details?: Record<string, unknown>;
}

export class TunnelError extends Error {
  readonly code: ErrorCode;
  readonly retryable: boolean;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, options: TunnelErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'TunnelError';
    this.code = code;
    this.retryable = options.retryable ?? ERROR_CODES[code].retryable;
    this.details = options.details;
  }
}

export function isTunnelError(err: unknown, code?: ErrorCode): err is TunnelError {
  return err instanceof TunnelError && (code === undefined || err.code === code);
}
