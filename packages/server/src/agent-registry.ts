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
  private turn = 0;

  add(agent: RegisteredAgent): void {
    this.agents.add(agent);
    for (const label of agent.labels) {
      const list = this.byLabel.get(label) ?? [];
      list.push(agent);
      this.byLabel.set(label, list);
    }
    this.emit('added', agent);
  }

  remove(agent: RegisteredAgent): void {
    if (!this.agents.delete(agent)) return;
    for (const label of agent.labels) {
      const list = this.byLabel.get(label)?.filter((a) => a !== agent) ?? [];
      if (list.length > 0) this.byLabel.set(label, list);
      else this.byLabel.delete(label);
    }
    this.emit('removed', agent);
  }

  /** Usable agents for a label, in the order to try them (rotated per call to spread load). */
  candidates(label: string): RegisteredAgent[] {
    const list = this.byLabel.get(label)?.filter((a) => a.usable) ?? [];
    if (list.length < 2) return list;
    const start = this.turn++ % list.length;
    return [...list.slice(start), ...list.slice(0, start)];
  }

  /**
   * The route mode the agents holding `label` registered it with, or undefined when none holds
   * it. Agents of one cluster run one configuration; should they differ, the first one counts.
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

  has(label: string): boolean {
    return this.candidates(label).length > 0;
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
