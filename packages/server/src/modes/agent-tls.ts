/**
 * The `agent-tls` route mode: on the public port it forwards like passthrough (the server never
 * decrypts), for labels agents registered as `agent-tls`. TLS ends at the agent, inside the
 * cluster, with a certificate from the route CA (route-ca.ts, signed over the control stream);
 * the agent opens its own TLS to the target. So that the two TLS legs agree on the application
 * protocol, the agent is told which ALPN protocols the user offered (stream metadata `alpn`):
 * it offers the target those and answers the user with the target's choice.
 */
import { createSniForwardingMode } from './passthrough.js';
import type { RouteMode, RouteModeContext } from './route-mode.js';

/** What an ALPN id may be to travel in the metadata: printable ASCII without a comma. */
const ALPN_ID = /^[\x21-\x2b\x2d-\x7e]{1,32}$/;
/** The most characters of the `alpn` metadata value (a browser offers 2 or 3 ids). */
export const MAX_ALPN_METADATA_CHARS = 128;

/** The user's ALPN offer as `h2,http/1.1`: ids that cannot travel, and those past the limit, left out. */
export function alpnMetadata(alpn: readonly string[]): Readonly<Record<string, string>> | undefined {
  const ids: string[] = [];
  let chars = 0;
  for (const id of alpn) {
    if (!ALPN_ID.test(id) || chars + id.length + 1 > MAX_ALPN_METADATA_CHARS) continue;
    ids.push(id);
    chars += id.length + 1;
  }
  return ids.length === 0 ? undefined : { alpn: ids.join(',') };
}

export function createAgentTlsMode(context: RouteModeContext): RouteMode {
  return createSniForwardingMode(context, {
    name: 'agent-tls',
    claims: (mode) => mode === 'agent-tls',
    metadata: alpnMetadata,
  });
}
