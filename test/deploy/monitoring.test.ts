// deploy/*/components/monitoring: rendered with the real `kubectl kustomize` onto the overlays,
// valid against the Prometheus Operator's schemas, scraping a port the pods declare, and every
// metric their alerts and the Grafana dashboard use is one docs/OPERATIONS.md documents (whose
// lists a test checks against what the server and agent export).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { validateObject } from './k8s-schema.js';
import { findObject, podTemplates, renderComposed, selectorMatches, type K8sObject } from './kustomize.js';

const ROOT = join(import.meta.dirname, '../..');
const OPERATIONS = readFileSync(join(ROOT, 'docs/OPERATIONS.md'), 'utf8');

/** The metric names in a PromQL expression, histogram series folded to their family. */
function metricsIn(expr: string): string[] {
  return [...expr.matchAll(/\btunnel_[a-z_]+/g)].map((m) => m[0].replace(/_(bucket|count|sum)$/, ''));
}

describe.each([
  {
    overlay: 'deploy/server/overlays/ha',
    component: 'deploy/server/components/monitoring',
    name: 'tunnel-server',
    port: 'admin',
  },
  {
    overlay: 'deploy/client/overlays/in-cluster',
    component: 'deploy/client/components/monitoring',
    name: 'tunnel-agent',
    port: 'health',
  },
])('$component', ({ overlay, component, name, port }) => {
  const objects = renderComposed([overlay], [component]);

  test('renders objects valid against their schemas', async () => {
    const problems: string[] = [];
    for (const o of objects)
      for (const p of await validateObject(o))
        problems.push(`${o.kind}/${o.metadata?.name}${p.path}: ${p.message}`);
    expect(problems).toEqual([]);
  });

  test('scrapes /metrics on a port the pods declare, selecting those pods', () => {
    const monitor = findObject(objects, 'PodMonitor', name)!;
    const t = podTemplates(objects).find((p) => p.name === `Deployment/${name}`)!;
    expect(selectorMatches(monitor.spec.selector.matchLabels, t.labels)).toBe(true);
    expect(monitor.spec.podMetricsEndpoints).toEqual([expect.objectContaining({ port, path: '/metrics' })]);
    expect(t.spec.containers[0].ports.map((p: K8sObject) => p.name)).toContain(port);
  });

  test('alerts on documented metrics only, each with a severity, a summary and a description', () => {
    const rule = findObject(objects, 'PrometheusRule', name)!;
    const alerts = rule.spec.groups.flatMap((g: K8sObject) => g.rules) as K8sObject[];
    expect(alerts.length).toBeGreaterThanOrEqual(3);
    for (const a of alerts) {
      expect(a.labels.severity, a.alert).toMatch(/^(info|warning|critical)$/);
      expect(a.annotations.summary, a.alert).toBeTruthy();
      expect(a.annotations.description, a.alert).toBeTruthy();
      const used = metricsIn(a.expr);
      expect(used.length, a.alert).toBeGreaterThan(0);
      for (const metric of used) expect(OPERATIONS, `${a.alert}: ${metric}`).toContain(`\`${metric}\``);
    }
  });
});

test('the Grafana dashboard is a ConfigMap the sidecar picks up, and charts documented metrics only', () => {
  const objects = renderComposed(['deploy/server/overlays/ha'], ['deploy/server/components/monitoring']);
  const map = findObject(objects, 'ConfigMap', 'tunnel-server-grafana-dashboard')!;
  expect(map.metadata.labels.grafana_dashboard).toBe('1');
  const dashboard = JSON.parse(map.data['tunnel-server.json'] as string) as {
    uid: string;
    panels: { title: string; targets: { expr: string }[] }[];
  };
  expect(dashboard.uid).toBe('cluster-tunnel-server');
  expect(dashboard.panels.length).toBeGreaterThanOrEqual(10);
  const used = new Set(dashboard.panels.flatMap((p) => p.targets.flatMap((t) => metricsIn(t.expr))));
  for (const metric of used) expect(OPERATIONS, metric).toContain(`\`${metric}\``);
  // The questions the operator asks, each answered by a panel.
  for (const metric of [
    'tunnel_streams_blocked',
    'tunnel_stream_open_seconds',
    'tunnel_route_probe_success',
    'tunnel_session_rtt_seconds',
  ])
    expect(used).toContain(metric);
});
