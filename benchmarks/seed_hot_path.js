// The TypeScript original's in-memory hot path, restated in plain JavaScript so that Node can
// run it without a build: incrementToolCalls() -> updateSessionStats() reads the cached session,
// builds new stats and session objects with a fresh `new Date().toISOString()`, and stores them
// through writeSession(), which checks its exit-handler and timer flags.
// Usage: node seed_hot_path.js N  -> prints increments per second.
'use strict';
const { randomUUID } = require('node:crypto');

let cachedSession = null;
let isDirty = false;
let flushTimer = null;
let exitHandlersRegistered = false;

function createNewSession() {
  const now = new Date().toISOString();
  return {
    version: 1, sessionId: randomUUID(), createdAt: now, lastActiveAt: now,
    stats: { toolCalls: 0, promptCalls: 0, errors: 0, rateLimits: 0 },
  };
}
function readSession() { return cachedSession; }
function registerExitHandlers() { if (exitHandlersRegistered) return; exitHandlersRegistered = true; }
function startFlushTimer() {
  if (flushTimer) return;
  flushTimer = setInterval(() => { isDirty = false; }, 60_000);
  flushTimer.unref();
}
function writeSession(session) {
  cachedSession = session;
  isDirty = true;
  registerExitHandlers();
  startFlushTimer();
}
function updateSessionStats(updates) {
  const session = readSession();
  if (!session) return { success: false, session: null };
  const updatedStats = {
    toolCalls: session.stats.toolCalls + (updates.toolCalls ?? 0),
    promptCalls: session.stats.promptCalls + (updates.promptCalls ?? 0),
    errors: session.stats.errors + (updates.errors ?? 0),
    rateLimits: session.stats.rateLimits + (updates.rateLimits ?? 0),
  };
  const updatedSession = { ...session, lastActiveAt: new Date().toISOString(), stats: updatedStats };
  writeSession(updatedSession);
  return { success: true, session: updatedSession };
}
function incrementToolCalls(count = 1) { return updateSessionStats({ toolCalls: count }); }

const n = Number(process.argv[2] || 1000000);
writeSession(createNewSession());
for (let i = 0; i < 100000; i++) incrementToolCalls(); // warm up the JIT
let best = 0;
for (let round = 0; round < 5; round++) {
  const start = process.hrtime.bigint();
  for (let i = 0; i < n; i++) incrementToolCalls();
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  best = Math.max(best, n / seconds);
}
if (cachedSession.stats.toolCalls < n) process.exit(1);
console.log(best.toFixed(0));
