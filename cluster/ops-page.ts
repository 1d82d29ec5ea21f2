// The live page a node serves at / (ops-server.ts): one self-contained HTML file (no network
// beyond this node: the machines of a job often reach nothing else) that polls /api/state
// every 2 s and draws the job's plots as SVG: loss, per-position accuracy, accept length at
// each evaluation, samples/s, data time against compute time, queue depth; and the hosts,
// roles and ranks as tables. Each plot's line carries data-points (how many it drew), which
// the headless-browser test reads.
export const OPS_PAGE_HTML = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Draftwire</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">
<style>
body { font: 14px system-ui, sans-serif; margin: 16px; color: #222; }
h1 { font-size: 18px; margin: 0 0 4px; } #sub { color: #666; margin-bottom: 12px; }
#plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: 12px; }
.plot { border: 1px solid #ddd; border-radius: 4px; padding: 6px; } .plot h2 { font-size: 13px; margin: 0 0 4px; font-weight: 600; }
.plot svg { width: 100%; height: 160px; } .legend span { margin-right: 10px; font-size: 12px; }
table { border-collapse: collapse; margin: 8px 16px 8px 0; display: inline-table; vertical-align: top; }
td, th { border: 1px solid #ddd; padding: 3px 8px; font-size: 12px; text-align: left; } th { background: #f4f4f4; }
#error { color: #b00; }
</style></head>
<body>
<h1>Draftwire <span id="job"></span></h1><div id="sub">loading…</div><div id="error"></div>
<div id="plots"></div>
<div><table id="roles"></table><table id="nodes"></table><table id="ranks"></table></div>
<script>
const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b'];
const PLOTS = [
  ['loss', 'Loss', (s) => [{ name: 'loss', pts: s.steps.map((p) => [p.step, p.loss]) }]],
  ['acc', 'Accuracy per step (per TTT position)', (s) => {
    const n = Math.max(0, ...s.steps.map((p) => p.acc.length));
    return Array.from({ length: n }, (_, i) => ({ name: 'pos ' + i, pts: s.steps.map((p) => [p.step, p.acc[i]]) }));
  }],
  ['accept', 'Accept length at each evaluation', (s) => [{ name: 'accept length', pts: s.accept.map((p) => [p.step, p.value]) }]],
  ['throughput', 'Samples/s', (s) => [{ name: 'samples/s', pts: s.steps.map((p) => [p.step, p.samplesPerSec]) }]],
  ['time', 'Data time against compute time (ms per step)', (s) => [
    { name: 'data', pts: s.steps.map((p) => [p.step, p.dataMs]) }, { name: 'compute', pts: s.steps.map((p) => [p.step, p.computeMs]) }]],
  ['queue', 'Queue depth', (s) => {
    const t0 = s.queue.length ? s.queue[0].at : 0;
    return [{ name: 'depth', pts: s.queue.map((p) => [(p.at - t0) / 1000, p.depth]) }, { name: 'leased', pts: s.queue.map((p) => [(p.at - t0) / 1000, p.leased]) }];
  }],
];
const el = (tag, attrs, text) => { const e = document.createElementNS(tag === 'svg' || tag === 'polyline' || tag === 'text' || tag === 'line' ? 'http://www.w3.org/2000/svg' : 'http://www.w3.org/1999/xhtml', tag); for (const k in attrs || {}) e.setAttribute(k, attrs[k]); if (text !== undefined) e.textContent = text; return e; };
const fmt = (v) => (Math.abs(v) >= 1000 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toPrecision(3));
for (const [id, title] of PLOTS) {
  const box = el('div', { class: 'plot', id: 'plot-' + id });
  box.append(el('h2', {}, title), el('svg', { viewBox: '0 0 400 160', preserveAspectRatio: 'none' }), el('div', { class: 'legend' }));
  document.getElementById('plots').append(box);
}
function draw(id, lines) {
  const box = document.getElementById('plot-' + id), svg = box.querySelector('svg'), legend = box.querySelector('.legend');
  svg.replaceChildren(); legend.replaceChildren();
  const all = lines.flatMap((l) => l.pts).filter((p) => Number.isFinite(p[0]) && Number.isFinite(p[1]));
  if (all.length === 0) { svg.append(el('text', { x: 150, y: 85, fill: '#999' }, 'no data yet')); }
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(0, ...ys), y1 = Math.max(...ys);
  const X = (x) => 40 + (x1 > x0 ? (x - x0) / (x1 - x0) : 0.5) * 355, Y = (y) => 150 - (y1 > y0 ? (y - y0) / (y1 - y0) : 0.5) * 140;
  if (all.length) {
    svg.append(el('line', { x1: 40, y1: 150, x2: 395, y2: 150, stroke: '#ccc' }), el('line', { x1: 40, y1: 10, x2: 40, y2: 150, stroke: '#ccc' }));
    svg.append(el('text', { x: 2, y: 16, 'font-size': 10, fill: '#666' }, fmt(y1)), el('text', { x: 2, y: 150, 'font-size': 10, fill: '#666' }, fmt(y0)));
  }
  lines.forEach((l, i) => {
    const pts = l.pts.filter((p) => Number.isFinite(p[0]) && Number.isFinite(p[1]));
    svg.append(el('polyline', { class: 'series', 'data-series': l.name, 'data-points': pts.length, fill: 'none', stroke: COLORS[i % COLORS.length], 'stroke-width': 1.5, 'vector-effect': 'non-scaling-stroke', points: pts.map((p) => X(p[0]).toFixed(1) + ',' + Y(p[1]).toFixed(1)).join(' ') }));
    const last = pts.length ? fmt(pts[pts.length - 1][1]) : '–';
    legend.append(el('span', { style: 'color:' + COLORS[i % COLORS.length] }, l.name + ': ' + last));
  });
}
function table(id, head, rows) {
  const t = document.getElementById(id); t.replaceChildren();
  const tr = el('tr'); for (const h of head) tr.append(el('th', {}, h)); t.append(tr);
  for (const r of rows) { const x = el('tr'); for (const c of r) x.append(el('td', {}, c === null || c === undefined ? '–' : String(c))); t.append(x); }
}
async function tick() {
  try {
    const s = await (await fetch('api/state', { cache: 'no-store' })).json();
    document.getElementById('job').textContent = s.job;
    const last = s.series.steps[s.series.steps.length - 1];
    document.getElementById('sub').textContent = 'node ' + s.node + (s.epoch ? ' · epoch ' + s.epoch.epoch + ' · dp ' + s.epoch.partitions : '') + (last ? ' · step ' + last.step : '') + ' · ' + new Date(s.at).toLocaleTimeString();
    for (const [id, , lines] of PLOTS) draw(id, lines(s.series));
    table('roles', ['role', 'node', 'term', 'host'], s.roles.map((r) => [r.role, r.node, r.term, r.host]));
    table('nodes', ['host (node)', 'alive', 'ranks'], s.nodes.map((n) => [n.node, n.alive ? 'yes' : 'no', n.ranks.join(', ')]));
    table('ranks', ['rank', 'node', 'step', 'state', 'epoch', 'alive'], s.ranks.map((r) => [r.rank, r.node, r.step, r.state, r.epoch, r.alive ? 'yes' : 'no']));
    document.getElementById('error').textContent = '';
    document.body.dataset.updated = String(s.at);
  } catch (e) { document.getElementById('error').textContent = 'cannot reach this node: ' + e; }
}
tick(); setInterval(tick, 2000);
</script></body></html>
`;
