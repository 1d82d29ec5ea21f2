// Prints the job's subject table (src/wire/protocol.ts) as markdown, for docs/wire.md:
//   node --import tsx scripts/wire-table.ts
import { PROTOCOL, STORAGE, type Endpoint, type EndpointName } from '../src/wire/protocol.ts';

const cell = (s: string) => s.replace(/\|/g, '\\|').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const code = (s: string) => '`' + s.replace(/\|/g, '\\|') + '`';

export function wireTable(): string {
  const rows = ['| subject | kind | publisher → subscriber | request fields | reply fields | idempotency key | timeout |', '|---|---|---|---|---|---|---|'];
  for (const name of Object.keys(PROTOCOL) as EndpointName[]) {
    const e = PROTOCOL[name] as unknown as Endpoint<unknown, unknown, unknown[]>;
    const timeout = e.kind === 'request' ? `${e.timeoutMs} ms × ${e.retries + 1}${e.retryErrors ? ' (retryable errors too)' : ''}` : '—';
    const terms = [e.roles?.from ? `${e.roles.from}'s term on the ${e.kind === 'request' ? 'request' : 'message'}` : '', e.roles?.to ? `${e.roles.to}'s term on the reply` : ''].filter(Boolean);
    const fence = terms.length ? `<br>(${terms.join('; ')})` : '';
    rows.push(`| ${code(`dw.<job>.${e.pattern}`)} | ${e.kind} | ${cell(e.publisher)} → ${cell(e.subscriber)}${fence} | ${e.fields.request.map(cell).join('<br>') || '—'} | ${e.fields.reply.map(cell).join('<br>') || '—'} | ${e.key ? code(e.keyRule) : cell(e.keyRule)} | ${timeout} |`);
  }
  const p = STORAGE.patterns;
  rows.push('', `KV bucket ${code(p.kvBucket)}, key ${code(STORAGE.epochKey)} (the epoch record), keys ${code(p.roleKey)} (the roles' leader leases); ledger write-ahead log: JetStream stream ${code(p.walStream)}, subject ${code(p.walSubject)}; rank checkpoints (\`checkpointStore: nats\`): object store bucket ${code(p.ckptBucket)} (weights and AdamW moments, MAC'd safetensors objects), the manifest at key ${code(STORAGE.ckptLatestKey)} of ${code(p.kvBucket)} (the commit point, compare-and-set), window parts at keys ${code(p.ckptPartKey)}.`);
  return rows.join('\n') + '\n';
}

if (import.meta.url === `file://${process.argv[1]}`) process.stdout.write(wireTable());
