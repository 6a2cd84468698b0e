/**
 * Capabilities: optional features a peer announces in `register` (the agent) and `registered`
 * (the server), within one major protocol version. Each side uses a feature only when both
 * announced it (the intersection); a name a peer does not know is ignored, which is how older
 * and newer peers work together. A new feature is one line in CAPABILITIES and one row in
 * docs/PROTOCOL.md.
 */

/** Every capability this build speaks, by the name it has on the wire. */
export const CAPABILITIES = {
  /** Streams the server opens start with the v2 stream header: type, route, user address, metadata. */
  typedStreamHeader: 'typed-stream-header',
  /** `register` may carry `routeModes`; the server routes each of those labels by that mode. */
  routeModes: 'route-modes',
  /** The agent serves `probe` streams: it connects to a route's target and says how it went. */
  probeStreams: 'probe-streams',
  /** The agent may send `certificate-request` after registering; the server signs with its route CA. */
  routeCertificates: 'route-certificates',
} as const;

export type Capability = (typeof CAPABILITIES)[keyof typeof CAPABILITIES];

/** What a capability name looks like on the wire (a peer may send names we do not know). */
export const CAPABILITY_PATTERN = /^[a-z0-9][a-z0-9-]{0,31}$/;
/** The most names one `register` or `registered` may carry. */
export const MAX_CAPABILITIES = 32;

/** What this build announces: all of CAPABILITIES. */
export const SUPPORTED_CAPABILITIES: readonly Capability[] = Object.freeze(Object.values(CAPABILITIES));

const KNOWN: ReadonlySet<string> = new Set(SUPPORTED_CAPABILITIES);

/**
 * The capabilities both sides speak: ours that the peer announced. `theirs` absent (an older
 * peer) means none; names we do not know are ignored.
 */
export function negotiateCapabilities(theirs: readonly string[] | undefined): ReadonlySet<Capability> {
  return new Set((theirs ?? []).filter((name): name is Capability => KNOWN.has(name)));
}
