/**
 * The `passthrough` route mode: on the public TLS port, a ClientHello whose SNI is
 * `<label>.<domain>` is forwarded unread to an agent holding `<label>`. The server never holds
 * the keys to this traffic; TLS ends at the target (kube-apiserver), so client certificates work
 * end to end.
 */
import type { Socket } from 'node:net';
import type { ErrorCode } from '@cluster-tunnel/protocol';
import { TLS_ALERT } from './tls-alert.js';

export const passthroughMode = {
  name: 'passthrough',
  /** A fatal TLS alert: the user's client reports a TLS error, never a truncated stream. */
  refuse(socket: Socket, code: ErrorCode): void {
    socket.end(code === 'TUN_ERR_NO_ROUTE' ? TLS_ALERT.unrecognizedName : TLS_ALERT.internalError);
  },
} as const;

/** `cluster-u1.proxy.localhost` → `cluster-u1`: exactly one label under the domain. */
export function routeLabelOf(serverName: string, domain: string): string | undefined {
  const suffix = `.${domain}`;
  if (!serverName.endsWith(suffix)) return undefined;
  const label = serverName.slice(0, -suffix.length);
  return label.length > 0 && !label.includes('.') ? label : undefined;
}
