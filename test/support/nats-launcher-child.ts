// Child process for the launcher's reaping tests: starts a nats-server, prints
// {"pid":..,"url":..} on stdout, then behaves as argv[2] says:
//   hang   stay alive (the test kills us with a real signal)
//   exit   process.exit(0) without stopping the server (once a line arrives on stdin)
//   throw  die of an uncaught exception (once a line arrives on stdin)
import { startNatsServer } from '../../cluster/nats-launcher.ts';

const mode = process.argv[2] ?? 'hang';
const h = await startNatsServer({ port: -1 });
process.stdout.write(JSON.stringify({ pid: h.pid, url: h.url, storeDir: h.storeDir }) + '\n');
// Die only once the test says so (a line on stdin), after it has used the server.
const go = new Promise<void>((r) => process.stdin.once('data', () => r()));
if (mode === 'exit') void go.then(() => process.exit(0));
else if (mode === 'throw') void go.then(() => { setTimeout(() => { throw new Error('child dies of an uncaught exception'); }, 0); });
else setInterval(() => {}, 1 << 30);
