// The one wrapper over nact (7.6.2). nact gives us per-actor serial processing (one
// message at a time, FIFO); the actor tree is kept here (every nact actor is a direct child
// of the nact system, named after its path and incarnation), and this file fixes what nact
// gets wrong (DESIGN.md §6):
//   - stop(parent) does not stop children      → children are stopped first, explicitly
//   - reset skips afterStop                     → restart = stop (afterStop runs) + respawn
//                                                  with fresh state from init()
//   - stateless actors ignore onCrash           → every actor is stateful; crashes are
//                                                  supervised here (restart with backoff, or stop)
//   - dispatch to a dead actor is silent        → dispatch() returns false and counts a dead letter
//   - mailboxes are unbounded                   → mailboxLimit; BackpressureError when full
// Refs are stable across restarts: a message sent to a restarting actor waits for the new
// incarnation; messages queued behind the one that crashed are delivered to it too.

import { start as nactStart, spawn as nactSpawn, stop as nactStop, dispatch as nactDispatch, type Ref } from 'nact';
import { ActorStoppedError, BackpressureError, InvalidArgumentError, TimeoutError } from '../errors.ts';
import { createLogger, type Logger } from '../log.ts';

export interface ActorRef<M = unknown> {
  readonly name: string;
  /** '/parent/child' */
  readonly path: string;
  /** Phantom, for typing dispatch/query. */
  readonly __msg?: M;
}

export interface ActorContext<M = unknown> {
  readonly self: ActorRef<M>;
  readonly name: string;
  readonly path: string;
  readonly parent: ActorRef | null;
  readonly system: ActorSystem;
  /** 0 for the first incarnation, +1 per restart. */
  readonly incarnation: number;
  readonly log: Logger;
  /** Spawn a child of this actor (stopped with it, and when it restarts). */
  spawn<S, CM>(name: string, spec: ActorSpec<S, CM>): ActorRef<CM>;
  /** Stop a child (its children first), awaiting its afterStop. */
  stop(ref: ActorRef): Promise<void>;
  children(): ActorRef[];
  /** Answer the query being handled (no-op for a plain dispatch). */
  reply(value: unknown): void;
  /**
   * Answer the query being handled later, after the handler returned (the queue replies once
   * its write-ahead log append is durable). Until then the query waits (its timeout still
   * runs); a crash of this message's handler still rejects it.
   */
  defer(): DeferredReply;
}

export interface DeferredReply {
  reply(value: unknown): void;
  fail(err: unknown): void;
}

export interface ActorSpec<S, M> {
  /** Fresh state: at spawn and at every restart. */
  init(ctx: ActorContext<M>): S;
  handle(state: S, msg: M, ctx: ActorContext<M>): S | Promise<S>;
  /** Runs on every stop, including the stop half of a restart. Errors are logged. */
  afterStop?(state: S, ctx: ActorContext<M>): void | Promise<void>;
  /** What a thrown handler (or init) error does: 'restart' (default) or 'stop'. */
  onCrash?: 'restart' | 'stop';
  /** Messages queued or in flight before dispatch throws BackpressureError (default 1000). */
  mailboxLimit?: number;
  /** More than this many restarts within restartWindowMs stops the actor (default 10 / 60 s). */
  maxRestarts?: number;
  restartWindowMs?: number;
  /** Restart backoff: initial * 2^(n-1), capped (default 10 ms .. 5 s). */
  backoffInitialMs?: number;
  backoffMaxMs?: number;
}

export interface ActorSystemStats {
  /** Live actors (running or restarting). */
  actors: number;
  deadLetters: number;
  restarts: number;
  crashes: number;
  /** path → messages queued or in flight. */
  mailboxDepths: Record<string, number>;
}

interface Envelope {
  msg: unknown;
  resolve?: (v: unknown) => void;
  reject?: (e: unknown) => void;
  replied?: boolean;
  /** The handler took the reply with ctx.defer(): its end does not answer. */
  deferred?: boolean;
  value?: unknown;
}

type Status = 'running' | 'restarting' | 'stopped';

interface Cell {
  ref: ActorRef;
  parent: Cell | null;
  children: Map<string, Cell>;
  spec: Required<Pick<ActorSpec<unknown, unknown>, 'onCrash' | 'mailboxLimit' | 'maxRestarts' | 'restartWindowMs' | 'backoffInitialMs' | 'backoffMaxMs'>> & ActorSpec<unknown, unknown>;
  state: unknown;
  incarnation: number;
  status: Status;
  nact: Ref<Envelope> | null;
  /** Accepted by the current nact incarnation, not yet started (FIFO, mirrors nact's mailbox). */
  queue: Envelope[];
  /** Held while restarting. */
  held: Envelope[];
  inflight: Promise<void> | null;
  current: Envelope | null;
  recentRestarts: number[];
  restartTimer: NodeJS.Timeout | null;
  stopping: Promise<void> | null;
  log: Logger;
}

const NAME_RE = /^[A-Za-z0-9_.+-]{1,128}$/; // a subset of what nact accepts
let nactSeq = 0;

export class ActorSystem {
  readonly name: string;
  private readonly root: Ref<never>;
  private readonly byPath = new Map<string, Cell>();
  private readonly cells = new WeakMap<ActorRef, Cell>();
  private readonly top = new Map<string, Cell>();
  private deadLetters = 0;
  private restarts = 0;
  private crashes = 0;
  private closed = false;
  private readonly log: Logger;

  constructor(name = 'draftwire') {
    this.name = name;
    this.root = nactStart();
    this.log = createLogger(`actors.${name}`);
  }

  spawn<S, M>(name: string, spec: ActorSpec<S, M>, parent?: ActorRef): ActorRef<M> {
    if (this.closed) throw new ActorStoppedError(`actor system ${this.name} is shut down; cannot spawn ${name}`);
    if (!NAME_RE.test(name)) throw new InvalidArgumentError(`actor name ${JSON.stringify(name)} must match ${NAME_RE}`);
    if (typeof spec?.init !== 'function' || typeof spec?.handle !== 'function') throw new InvalidArgumentError(`actor ${name}: spec needs init() and handle()`);
    const parentCell = parent ? this.cellOf(parent) : null;
    if (parent && (!parentCell || parentCell.status === 'stopped')) throw new ActorStoppedError(`cannot spawn ${name}: parent ${parent.path} is stopped`);
    const siblings = parentCell ? parentCell.children : this.top;
    if (siblings.has(name)) throw new InvalidArgumentError(`actor ${(parentCell?.ref.path ?? '')}/${name} already exists`);
    const mailboxLimit = spec.mailboxLimit ?? 1000;
    if (!Number.isInteger(mailboxLimit) || mailboxLimit < 1) throw new InvalidArgumentError(`actor ${name}: mailboxLimit must be a positive integer`);
    const path = `${parentCell?.ref.path ?? ''}/${name}`;
    const cell: Cell = {
      ref: Object.freeze({ name, path }) as ActorRef,
      parent: parentCell,
      children: new Map(),
      spec: {
        onCrash: 'restart', maxRestarts: 10, restartWindowMs: 60_000, backoffInitialMs: 10, backoffMaxMs: 5_000,
        ...(spec as ActorSpec<unknown, unknown>), mailboxLimit,
      },
      state: undefined,
      incarnation: 0,
      status: 'running',
      nact: null,
      queue: [],
      held: [],
      inflight: null,
      current: null,
      recentRestarts: [],
      restartTimer: null,
      stopping: null,
      log: this.log.child(path.slice(1).replace(/\//g, '.')),
    };
    siblings.set(name, cell);
    this.byPath.set(path, cell);
    this.cells.set(cell.ref, cell);
    // init() errors at first spawn go to the caller (nothing to supervise yet).
    try {
      cell.state = spec.init(this.context(cell) as ActorContext<M>);
    } catch (err) {
      cell.status = 'restarting'; // so children spawned by init are stopped without afterStop of ours
      void this.stopCell(cell, 'init failed');
      throw err;
    }
    this.startIncarnation(cell);
    return cell.ref as ActorRef<M>;
  }

  /** Enqueue a message. false (and a dead letter counted) when the actor is stopped; BackpressureError when its mailbox is full. */
  dispatch<M>(ref: ActorRef<M>, msg: M): boolean {
    return this.enqueue(ref, { msg });
  }

  /** Send a message and wait for ctx.reply (or the handler's end: undefined). Rejects with the handler's error, TimeoutError, ActorStoppedError or BackpressureError. */
  query<R = unknown, M = unknown>(ref: ActorRef<M>, msg: M, timeoutMs: number): Promise<R> {
    if (!(timeoutMs > 0)) return Promise.reject(new InvalidArgumentError('query needs a positive timeoutMs'));
    return new Promise<R>((resolve, reject) => {
      let done = false;
      const timer = setTimeout(() => {
        if (done) return;
        done = true;
        reject(new TimeoutError(`query to ${ref.path} got no reply within ${timeoutMs} ms`, { detail: { actor: ref.path } }));
      }, timeoutMs);
      const env: Envelope = {
        msg,
        resolve: (v) => { if (done) return; done = true; clearTimeout(timer); resolve(v as R); },
        reject: (e) => { if (done) return; done = true; clearTimeout(timer); reject(e); },
      };
      try {
        if (!this.enqueue(ref, env)) env.reject!(new ActorStoppedError(`actor ${ref.path} is stopped; query was a dead letter`, { detail: { actor: ref.path } }));
      } catch (e) { env.reject!(e); }
    });
  }

  /** Stop an actor: its children first, then it (after the message in flight), then afterStop. Queued messages become dead letters. */
  stop(ref: ActorRef): Promise<void> {
    const cell = this.cellOf(ref);
    if (!cell) return Promise.resolve();
    return this.stopCell(cell, 'stopped');
  }

  isAlive(ref: ActorRef): boolean {
    const c = this.cellOf(ref);
    return !!c && c.status !== 'stopped';
  }

  /** A live actor by path ('/a/b'), or null. */
  lookup<M = unknown>(path: string): ActorRef<M> | null {
    const c = this.byPath.get(path);
    return c && c.status !== 'stopped' ? (c.ref as ActorRef<M>) : null;
  }

  /** The live children of an actor. */
  children(ref: ActorRef): ActorRef[] {
    const c = this.cellOf(ref);
    return c ? [...c.children.values()].filter((x) => x.status !== 'stopped').map((x) => x.ref) : [];
  }

  /** Restarts of one actor so far (total), or of the whole system. */
  restartCount(ref?: ActorRef): number {
    if (!ref) return this.restarts;
    return this.cellOf(ref)?.incarnation ?? 0;
  }

  stats(): ActorSystemStats {
    const mailboxDepths: Record<string, number> = {};
    let actors = 0;
    for (const [path, c] of this.byPath) {
      if (c.status === 'stopped') continue;
      actors++;
      mailboxDepths[path] = depth(c);
    }
    return { actors, deadLetters: this.deadLetters, restarts: this.restarts, crashes: this.crashes, mailboxDepths };
  }

  /** Stop every actor (children first) and the nact system. */
  async shutdown(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([...this.top.values()].map((c) => this.stopCell(c, 'stopped')));
    nactStop(this.root);
  }

  // ------------------------------------------------------------------------------------

  private cellOf(ref: ActorRef): Cell | null {
    if (!ref || typeof ref !== 'object') return null;
    const known = this.cells.get(ref);
    if (known) return known;
    const c = typeof ref.path === 'string' ? this.byPath.get(ref.path) : undefined;
    return c && c.ref.name === ref.name ? c : null;
  }

  private deadLetter(cell: Cell | null, path: string, env: Envelope, why: string): void {
    this.deadLetters++;
    this.log.debug('dead letter', { actor: path, why });
    env.reject?.(new ActorStoppedError(`actor ${path} is stopped; message was a dead letter (${why})`, { detail: { actor: path } }));
    void cell;
  }

  private enqueue(ref: ActorRef, env: Envelope): boolean {
    const cell = this.cellOf(ref);
    if (!cell || cell.status === 'stopped' || cell.stopping) {
      this.deadLetters++;
      this.log.debug('dead letter', { actor: ref?.path, why: cell ? 'stopped' : 'unknown actor' });
      return false;
    }
    if (depth(cell) >= cell.spec.mailboxLimit) {
      throw new BackpressureError(`mailbox of ${cell.ref.path} is full (${cell.spec.mailboxLimit} messages)`, { detail: { actor: cell.ref.path, limit: cell.spec.mailboxLimit } });
    }
    if (cell.status === 'restarting' || !cell.nact) { cell.held.push(env); return true; }
    cell.queue.push(env);
    nactDispatch(cell.nact, env);
    return true;
  }

  private context(cell: Cell): ActorContext {
    const self = this;
    const inc = cell.incarnation;
    return {
      self: cell.ref,
      name: cell.ref.name,
      path: cell.ref.path,
      parent: cell.parent?.ref ?? null,
      system: this,
      incarnation: inc,
      log: cell.log,
      spawn: (name, spec) => self.spawn(name, spec, cell.ref),
      stop: (ref) => {
        const c = self.cellOf(ref);
        if (!c || c.parent !== cell) return Promise.reject(new InvalidArgumentError(`${ref.path} is not a child of ${cell.ref.path}`));
        return self.stopCell(c, 'stopped');
      },
      children: () => self.children(cell.ref),
      reply: () => { /* outside a message: nothing to answer */ },
      defer: () => ({ reply: () => {}, fail: () => {} }),
    };
  }

  /** The context for one message: reply() answers this message's query, never a later one. */
  private messageContext(base: ActorContext, env: Envelope): ActorContext {
    return {
      ...base,
      reply: (value) => { if (!env.replied) { env.replied = true; env.value = value; env.resolve?.(value); } },
      defer: () => {
        env.deferred = true;
        return {
          reply: (value) => { if (!env.replied) { env.replied = true; env.value = value; env.resolve?.(value); } },
          fail: (err) => { if (!env.replied) { env.replied = true; env.reject?.(err); } },
        };
      },
    };
  }

  private startIncarnation(cell: Cell): void {
    const ctx = this.context(cell);
    const fn = async (state: unknown, env: Envelope): Promise<unknown> => {
      // nact hands messages in FIFO order; ours is the head of cell.queue.
      const head = cell.queue.shift();
      if (head !== env) cell.log.error('actor queue out of step with nact mailbox', {});
      cell.current = env;
      let finish!: () => void;
      cell.inflight = new Promise<void>((r) => { finish = r; });
      try {
        const next = await cell.spec.handle(state, env.msg, this.messageContext(ctx, env));
        cell.state = next;
        if (!env.replied && !env.deferred) { env.replied = true; env.resolve?.(undefined); }
        return next;
      } catch (err) {
        if (!env.replied) { env.replied = true; env.reject?.(err); }
        throw Object.assign(new Error('actor crashed'), { __dwCrash: err });
      } finally {
        cell.current = null;
        cell.inflight = null;
        finish();
      }
    };
    const nactName = `${cell.ref.path.slice(1).replace(/\//g, '!')}$${++nactSeq}`;
    cell.nact = nactSpawn(this.root, fn as never, nactName, {
      initialState: cell.state,
      onCrash: (_msg: unknown, err: unknown, sctx: { stop: symbol; resume: symbol }) => {
        const cause = (err as { __dwCrash?: unknown })?.__dwCrash ?? err;
        if (cell.status !== 'running' || cell.stopping) return sctx.resume; // being stopped already
        this.crash(cell, cause);
        return sctx.stop;
      },
    } as never) as unknown as Ref<Envelope>;
    // Anything held during a restart goes to the new incarnation, in order.
    const held = cell.held;
    cell.held = [];
    for (const env of held) { cell.queue.push(env); nactDispatch(cell.nact, env); }
  }

  /** A handler (or init on restart) threw. Runs synchronously inside nact's fault path. */
  private crash(cell: Cell, cause: unknown): void {
    this.crashes++;
    cell.status = 'restarting';
    // Messages behind the crashed one: keep them for the next incarnation (or dead-letter on stop).
    cell.held = [...cell.queue, ...cell.held];
    cell.queue = [];
    cell.nact = null; // nact applies sctx.stop to the old one itself
    const state = cell.state;
    const decision = cell.spec.onCrash;
    cell.log.warn('actor crashed', { error: cause as Error, incarnation: cell.incarnation, decision });
    void (async () => {
      // The stop half: children first, then afterStop on the crashed incarnation's state.
      await Promise.all([...cell.children.values()].map((c) => this.stopCell(c, 'stopped')));
      await this.runAfterStop(cell, state);
      if (cell.status !== 'restarting') return; // stopped meanwhile
      if (decision === 'stop') { await this.stopCell(cell, 'stopped'); return; }
      this.scheduleRestart(cell);
    })();
  }

  private scheduleRestart(cell: Cell): void {
    const now = Date.now();
    cell.recentRestarts = cell.recentRestarts.filter((t) => now - t < cell.spec.restartWindowMs);
    if (cell.recentRestarts.length >= cell.spec.maxRestarts) {
      cell.log.error('actor restarted too often; stopping it', { restarts: cell.recentRestarts.length, windowMs: cell.spec.restartWindowMs });
      void this.stopCell(cell, 'stopped');
      return;
    }
    cell.recentRestarts.push(now);
    const n = cell.recentRestarts.length;
    const delay = Math.min(cell.spec.backoffMaxMs, cell.spec.backoffInitialMs * 2 ** (n - 1));
    cell.restartTimer = setTimeout(() => {
      cell.restartTimer = null;
      if (cell.status !== 'restarting') return;
      if (cell.parent && cell.parent.status !== 'running') { void this.stopCell(cell, 'stopped'); return; }
      cell.incarnation++;
      this.restarts++;
      try {
        cell.state = cell.spec.init(this.context(cell));
      } catch (err) {
        this.crashes++;
        cell.log.warn('actor init failed on restart', { error: err as Error, incarnation: cell.incarnation });
        this.scheduleRestart(cell);
        return;
      }
      cell.status = 'running';
      this.startIncarnation(cell);
      cell.log.info('actor restarted', { incarnation: cell.incarnation, delayMs: delay });
    }, delay);
  }

  private async runAfterStop(cell: Cell, state: unknown): Promise<void> {
    if (!cell.spec.afterStop) return;
    try {
      await cell.spec.afterStop(state, this.context(cell));
    } catch (err) {
      cell.log.warn('afterStop threw', { error: err as Error });
    }
  }

  private stopCell(cell: Cell, _why: string): Promise<void> {
    if (cell.stopping) return cell.stopping;
    if (cell.status === 'stopped') return Promise.resolve();
    const wasRestarting = cell.status === 'restarting';
    cell.stopping = (async () => {
      if (cell.restartTimer) { clearTimeout(cell.restartTimer); cell.restartTimer = null; }
      // Children first (nact's stop(parent) would leave them running).
      await Promise.all([...cell.children.values()].map((c) => this.stopCell(c, 'parent stopped')));
      // Let the message in flight finish; nothing after it runs.
      const leftovers = [...cell.queue, ...cell.held];
      cell.queue = [];
      cell.held = [];
      if (cell.nact) { nactStop(cell.nact); }
      if (cell.inflight) await cell.inflight;
      cell.nact = null;
      cell.status = 'stopped';
      for (const env of leftovers) this.deadLetter(cell, cell.ref.path, env, 'stopped with the message queued');
      // afterStop already ran for a crashed incarnation waiting to restart.
      if (!wasRestarting) await this.runAfterStop(cell, cell.state);
      (cell.parent ? cell.parent.children : this.top).delete(cell.ref.name);
      if (this.byPath.get(cell.ref.path) === cell) this.byPath.delete(cell.ref.path);
    })();
    return cell.stopping;
  }
}

function depth(c: Cell): number {
  return c.queue.length + c.held.length + (c.inflight ? 1 : 0);
}
