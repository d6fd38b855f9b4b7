// graphile-worker 0.18 in the scenario of engine/benches/throughput.rs, for bench/compare.sh:
// 20,000 no-op jobs (BENCH_JOBS), concurrency 8, in a fresh database named by GRAPHILE_DB_URL.
//   bulk:    addJobs, 1,000 per call
//   one:     8 producers, addJob one at a time (BENCH_JOBS in total)
//   drain:   a backlog processed until the database holds no job; "default" options,
//            then "tuned" (localQueue {size: 100}, completeJobBatchDelay 0, as the issue asks)
//   latency: 200 jobs, one every 10 ms, to an idle worker; start − run_at, p50/p99
// Prints one line per figure: `graphile <measure> <value>`.
import { Logger, run, makeWorkerUtils } from "graphile-worker";
import pg from "pg";

const url = process.env.GRAPHILE_DB_URL;
const N = Number(process.env.BENCH_JOBS || 20000);
const CONCURRENCY = 8;
const pool = new pg.Pool({ connectionString: url, max: 10 });
pool.on("error", (e) => console.error("pool:", e.message));
pool.on("connect", (client) => client.on("error", (e) => console.error("client:", e.message)));
const logger = new Logger(() => () => {});

const utils = await makeWorkerUtils({ pgPool: pool, logger });
await utils.migrate();
const count = async () =>
  Number((await pool.query("SELECT count(*) AS n FROM graphile_worker._private_jobs")).rows[0].n);
const clear = () => pool.query("DELETE FROM graphile_worker._private_jobs");

async function bulk(n) {
  const spec = Array.from({ length: 1000 }, () => ({ identifier: "noop", payload: {} }));
  const t0 = performance.now();
  for (let i = 0; i < n; i += 1000) await utils.addJobs(spec.slice(0, Math.min(1000, n - i)));
  return n / ((performance.now() - t0) / 1000);
}

async function drain(preset) {
  await clear();
  await bulk(N);
  await pool.query("ANALYZE graphile_worker._private_jobs");
  const t0 = performance.now();
  const runner = await run({
    pgPool: pool,
    logger,
    concurrency: CONCURRENCY,
    noHandleSignals: true,
    pollInterval: 2000,
    taskList: { noop: async () => {} },
    preset: { worker: preset },
  });
  while ((await count()) > 0) await new Promise((r) => setTimeout(r, 5));
  const rate = N / ((performance.now() - t0) / 1000);
  await runner.stop();
  return rate;
}

async function oneByOne() {
  await clear();
  const per = Math.floor(N / 8);
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      for (let i = 0; i < per; i++) await utils.addJob("noop", {});
    })
  );
  return (per * 8) / ((performance.now() - t0) / 1000);
}

async function latency() {
  await clear();
  const starts = [];
  const runner = await run({
    pgPool: pool,
    logger,
    concurrency: CONCURRENCY,
    noHandleSignals: true,
    pollInterval: 2000,
    taskList: {
      noop: async (payload) => {
        starts.push(Date.now() - payload.at);
      },
    },
  });
  await new Promise((r) => setTimeout(r, 500));
  for (let i = 0; i < 200; i++) {
    await utils.addJob("noop", { at: Date.now() });
    await new Promise((r) => setTimeout(r, 10));
  }
  while (starts.length < 200) await new Promise((r) => setTimeout(r, 10));
  await runner.stop();
  starts.sort((a, b) => a - b);
  return [starts[Math.floor(starts.length * 0.5)], starts[Math.floor(starts.length * 0.99)]];
}

await clear();
console.log(`graphile bulk_enqueue ${Math.round(await bulk(N))}`);
console.log(`graphile one_by_one ${Math.round(await oneByOne())}`);
console.log(`graphile drain_default ${Math.round(await drain({}))}`);
console.log(
  `graphile drain_tuned ${Math.round(await drain({ localQueue: { size: 100 }, completeJobBatchDelay: 0 }))}`
);
const [p50, p99] = await latency();
console.log(`graphile latency_ms ${p50} ${p99}`);
await utils.release();
await pool.end();
