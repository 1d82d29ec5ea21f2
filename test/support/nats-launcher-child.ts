// Child process for the launcher's reaping tests: starts a nats-server, prints
// {"pid":..,"url":..} on stdout, then behaves as argv[2] says:
//   hang   stay alive (the test kills us with a real signal)
//   exit   process.exit(0) without stopping the server
//   throw  die of an uncaught exception
import { startNatsServer } from '../../cluster/nats-launcher.ts';

const mode = process.argv[2] ?? 'hang';
const h = await startNatsServer({ port: -1 });
process.stdout.write(JSON.stringify({ pid: h.pid, url: h.url, storeDir: h.storeDir }) + '\n');
if (mode === 'exit') setTimeout(() => process.exit(0), 50);
else if (mode === 'throw') setTimeout(() => { throw new Error('child dies of an uncaught exception'); }, 50);
else setInterval(() => {}, 1 << 30);
