import { EventEmitter } from 'node:events';
import type { RegisteredAgent } from './registered-agent.js';

export interface AgentRegistryEvents {
  /** An agent's routes became routable. */
  added: [agent: RegisteredAgent];
  /** An agent's routes are no longer routed to it. */
  removed: [agent: RegisteredAgent];
}

/**
 * Route label → the agents holding it. Several agents of one cluster may hold the same label:
 * new streams rotate over them, and an agent that leaves is skipped at once.
 */
export class AgentRegistry extends EventEmitter<AgentRegistryEvents> {
  private readonly byLabel = new Map<string, RegisteredAgent[]>();
  private readonly agents = new Set<RegisteredAgent>();
  /** Sessions per `cluster/agentId`: an agent holds one per replica, so more here is a duplicate. */
  private readonly sessionsOf = new Map<string, number>();
  /** Sessions per cluster: whether any agent of it is still here. */
  private readonly sessionsOfCluster = new Map<string, number>();
  /** Callers of whenHeld by label; at most one per pending connection (the pending limits bound them). */
  private readonly waiters = new Map<string, Set<() => void>>();
  private turn = 0;

  add(agent: RegisteredAgent): void {
    this.agents.add(agent);
    const key = agentKey(agent);
    this.sessionsOf.set(key, (this.sessionsOf.get(key) ?? 0) + 1);
    const cluster = agent.identity.clusterId;
    this.sessionsOfCluster.set(cluster, (this.sessionsOfCluster.get(cluster) ?? 0) + 1);
    for (const label of agent.labels) {
      const list = this.byLabel.get(label) ?? [];
      list.push(agent);
      this.byLabel.set(label, list);
    }
    this.emit('added', agent);
    for (const label of agent.labels) for (const wake of this.waiters.get(label) ?? []) wake();
  }

  /**
   * Resolves true as soon as a usable agent holds `label` (at once if one does), false after
   * `timeoutMs` or when `signal` aborts. For a replica that has just started, or whose agents are
   * moving in from a draining one: a user connection waits for its agent instead of being refused.
   */
  whenHeld(label: string, timeoutMs: number, signal?: AbortSignal): Promise<boolean> {
    if (this.has(label)) return Promise.resolve(true);
    if (timeoutMs <= 0 || signal?.aborted) return Promise.resolve(false);
    return new Promise((resolve) => {
      const set = this.waiters.get(label) ?? new Set<() => void>();
      this.waiters.set(label, set);
      const done = (held: boolean): void => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        set.delete(wake);
        if (set.size === 0 && this.waiters.get(label) === set) this.waiters.delete(label);
        resolve(held);
      };
      const wake = (): void => {
        if (this.has(label)) done(true);
      };
      const onAbort = (): void => done(false);
      const timer = setTimeout(() => done(false), timeoutMs);
      signal?.addEventListener('abort', onAbort, { once: true });
      set.add(wake);
    });
  }

  remove(agent: RegisteredAgent): void {
    if (!this.agents.delete(agent)) return;
    const key = agentKey(agent);
    const left = (this.sessionsOf.get(key) ?? 1) - 1;
    if (left > 0) this.sessionsOf.set(key, left);
    else this.sessionsOf.delete(key);
    const cluster = agent.identity.clusterId;
    const ofCluster = (this.sessionsOfCluster.get(cluster) ?? 1) - 1;
    if (ofCluster > 0) this.sessionsOfCluster.set(cluster, ofCluster);
    else this.sessionsOfCluster.delete(cluster);
    for (const label of agent.labels) {
      const list = this.byLabel.get(label)?.filter((a) => a !== agent) ?? [];
      if (list.length > 0) this.byLabel.set(label, list);
      else this.byLabel.delete(label);
    }
    this.emit('removed', agent);
  }

  /**
   * Usable agents for a label, in the order to try them (rotated per call to spread load); with
   * `mode`, only those that registered the label in that mode.
   */
  candidates(label: string, mode?: string): RegisteredAgent[] {
    const list =
      this.byLabel.get(label)?.filter((a) => a.usable && (mode === undefined || a.modeOf(label) === mode)) ??
      [];
    if (list.length < 2) return list;
    const start = this.turn++ % list.length;
    return [...list.slice(start), ...list.slice(0, start)];
  }

  /**
   * The route mode the agents holding `label` registered it with, or undefined when none holds
   * it. Agents of one cluster run one configuration; should they differ (a rollout from one mode
   * to another), the first one's claims the label, and candidates(label, mode) keeps its
   * connections to the agents of that mode.
   */
  modeOf(label: string): string | undefined {
    return this.firstUsable(label)?.modeOf(label);
  }

  /** The Host header the agents holding `label` asked its target to get (http routes). */
  hostHeaderOf(label: string): string | undefined {
    return this.firstUsable(label)?.hostHeaderOf(label);
  }

  /**
   * What a label's agents registered is read off the first usable one; not through
   * candidates(): asking must not take a turn of the rotation.
   */
  private firstUsable(label: string): RegisteredAgent | undefined {
    return this.byLabel.get(label)?.find((a) => a.usable);
  }

  /** Whether any agent of this cluster has a session here. */
  holdsCluster(clusterId: string): boolean {
    return this.sessionsOfCluster.has(clusterId);
  }

  /** Whether this agent (cluster and agent id) has a session here already. */
  holdsAgent(clusterId: string, agentId: string): boolean {
    return this.sessionsOf.has(`${clusterId}/${agentId}`);
  }

  /** Whether a usable agent holds `label`; asking takes no turn of the rotation. */
  has(label: string): boolean {
    return this.firstUsable(label) !== undefined;
  }

  get size(): number {
    return this.agents.size;
  }

  all(): RegisteredAgent[] {
    return [...this.agents];
  }

  labels(): string[] {
    return [...this.byLabel.keys()].sort();
  }
}

function agentKey(agent: RegisteredAgent): string {
  return `${agent.identity.clusterId}/${agent.identity.agentId}`;
}
