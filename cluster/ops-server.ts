// The node's operator endpoint (`--metrics HOST:PORT`): Prometheus metrics at /metrics, the
// live page at / and the JSON it polls at /api/state (the job's series, hosts, roles, ranks).
// Read-only and unauthenticated, like most exporters: it carries figures, never samples or
// keys, and binds loopback unless told otherwise. Its own server, not the data plane's:
// scrapers and browsers need no store token or client certificate.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { OPS_PAGE_HTML } from './ops-page.ts';
import type { NodeMetrics, PageSeries } from './node-metrics.ts';

export interface OpsState {
  job: string; node: string; at: number; series: PageSeries;
  roles: { role: string; node: string | null; term: number | null; host: string | null }[];
  nodes: { node: string; alive: boolean; ranks: number[] }[];
  ranks: { rank: number; node: string | null; step: number; state: string; epoch: number; alive: boolean }[];
  epoch: { epoch: number; partitions: number } | null;
}

export class OpsServer {
  private constructor(readonly server: Server, readonly host: string, readonly port: number) {}

  static async start(o: { host: string; port: number; metrics: NodeMetrics; state: () => Promise<OpsState> }): Promise<OpsServer> {
    const send = (res: ServerResponse, status: number, type: string, body: string) => {
      res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(body), 'Cache-Control': 'no-store' });
      res.end(body);
    };
    const handle = async (req: IncomingMessage, res: ServerResponse) => {
      const path = (req.url ?? '/').split('?')[0];
      if (req.method !== 'GET' && req.method !== 'HEAD') { res.setHeader('Allow', 'GET, HEAD'); return send(res, 405, 'text/plain; charset=utf-8', 'method not allowed\n'); }
      if (path === '/metrics') return send(res, 200, o.metrics.contentType, await o.metrics.text());
      if (path === '/api/state') return send(res, 200, 'application/json', JSON.stringify(await o.state()));
      if (path === '/' || path === '/index.html') return send(res, 200, 'text/html; charset=utf-8', OPS_PAGE_HTML);
      return send(res, 404, 'text/plain; charset=utf-8', 'not found: /metrics, /api/state and / are served here\n');
    };
    const server = createServer((req, res) => {
      handle(req, res).catch((e: unknown) => { if (!res.headersSent) send(res, 500, 'text/plain; charset=utf-8', `${(e as Error).message}\n`); else res.destroy(); });
    });
    server.keepAliveTimeout = 10_000;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(o.port, o.host, () => { server.off('error', reject); resolve(); });
    });
    const a = server.address() as AddressInfo;
    return new OpsServer(server, a.family === 'IPv6' ? `[${a.address}]` : a.address, a.port);
  }

  get address(): string { return `${this.host}:${this.port}`; }

  close(): Promise<void> {
    return new Promise((resolve) => { this.server.close(() => resolve()); this.server.closeAllConnections(); });
  }
}
