// Assertions on typed errors: the class and a message pattern, sync or async.
import assert from 'node:assert/strict';

type ErrorClass = new (...a: never[]) => Error;

function matches(cls: ErrorClass, re: RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof cls, `expected ${cls.name}, got ${String(e)}`);
    assert.match((e as Error).message, re);
    return true;
  };
}

export async function rejects(p: Promise<unknown>, cls: ErrorClass, re: RegExp): Promise<void> {
  await assert.rejects(p, matches(cls, re));
}

export function throwsLike(fn: () => unknown, cls: ErrorClass, re: RegExp): void {
  assert.throws(fn, matches(cls, re));
}
