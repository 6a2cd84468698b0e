/**
 * Audit lines (docs/OPERATIONS.md, "Audit lines"): one per user connection when it ends, one per
 * HTTP request of an http route, and one per WebSocket (or other upgrade) of an http route when
 * it closes. A stable shape for log pipelines: `audit` names the kind, every field is present in
 * every line (null when not known), and the message stays as it is. Changing a field is a
 * breaking change of OPERATIONS.md.
 */
import { clusterOfLabel } from '@cluster-tunnel/protocol';
import type { Logger } from '@cluster-tunnel/config';

/** How a user connection ended. */
export type AuditOutcome = 'closed' | 'reset' | 'refused';

/** The fields every audit line has. */
interface AuditBase {
  mode: string;
  route: string;
  /** The agent that carried it; null when none did (refused). */
  agentId: string | null;
  /** This replica. */
  serverId: string;
  /** The user's ip:port. */
  remoteAddress: string;
  /** Payload bytes from the user, and to the user. */
  bytesIn: number;
  bytesOut: number;
  durationMs: number;
  /** The TUN_ERR_* code (or socket errno) of a refusal or reset; null for a clean end. */
  code: string | null;
}

export interface ConnectionAudit extends AuditBase {
  outcome: AuditOutcome;
}

export interface HttpRequestAudit extends AuditBase {
  method: string;
  /** Without the query string (it may carry secrets). */
  path: string;
  status: number;
  /** From the session (link) or the password (basic); null on routes open to anyone. */
  user: string | null;
}

export interface HttpUpgradeAudit extends AuditBase {
  path: string;
  /** The upgrade asked for (websocket). */
  protocol: string;
  user: string | null;
  outcome: AuditOutcome;
}

/** Stable key order: the kind, where, who, how much, how it ended. */
function line<T extends AuditBase>(kind: string, a: T): object {
  return { audit: kind, ...a, cluster: clusterOfLabel(a.route) ?? null };
}

export function auditConnection(log: Logger, a: ConnectionAudit): void {
  log.info(
    line('connection', a),
    a.outcome === 'refused' ? 'user connection refused' : 'user connection closed',
  );
}

export function auditHttpRequest(log: Logger, a: HttpRequestAudit): void {
  log.info(line('http-request', a), 'http request');
}

export function auditHttpUpgrade(log: Logger, a: HttpUpgradeAudit): void {
  log.info(line('http-upgrade', a), 'http upgrade closed');
}
