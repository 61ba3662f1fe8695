// The driver scenario with node-postgres (pg): simple queries, unnamed and
// named ({name, text, values}) extended queries, notices, LISTEN/NOTIFY.
// node-postgres has no COPY without the pg-copy-streams add-on: not run.
//
// Same contract as the Python scenarios: PG* env vars, DRIVER_WORKERS
// concurrent workers x DRIVER_REPS fresh connections, one JSON record per
// line ordered by worker/repetition/step, exit 1 if a worker failed.
'use strict';
const { Client } = require('pg');

const WORKERS = parseInt(process.env.DRIVER_WORKERS || '4', 10);
const REPS = parseInt(process.env.DRIVER_REPS || '3', 10);
const ZONES = ['America/New_York', 'Asia/Tokyo', 'Europe/Paris', 'Australia/Adelaide'];

function plain(v) {
  if (Buffer.isBuffer(v)) return '\\x' + v.toString('hex');
  if (v instanceof Date) return v.toISOString();
  if (Array.isArray(v)) return v.map(plain);
  if (v && typeof v === 'object') {
    const o = {};
    for (const k of Object.keys(v)) o[k] = plain(v[k]);
    return o;
  }
  return v;
}

// Key-sorted JSON, like Python's sort_keys.
function canon(v) {
  if (Array.isArray(v)) return '[' + v.map(canon).join(', ') + ']';
  if (v && typeof v === 'object') {
    return '{' + Object.keys(v).sort().map((k) => JSON.stringify(k) + ': ' + canon(v[k])).join(', ') + '}';
  }
  return v === undefined ? 'null' : JSON.stringify(v);
}

async function run(w, rep, out) {
  const rec = (step, v) => {
    out.push({ w, rep, i: out.length, step, v: plain(v) });
    process.stderr.write(`progress w${w} rep${rep} ${step}\n`);
  };
  const table = `drv_node_w${w}`;
  const client = new Client({
    host: process.env.PGHOST,
    port: parseInt(process.env.PGPORT, 10),
    user: process.env.PGUSER,
    password: process.env.PGPASSWORD,
    database: process.env.PGDATABASE,
    connectionTimeoutMillis: 10000,
  });
  const notices = [];
  const notifications = [];
  client.on('notice', (m) => notices.push(m.message));
  client.on('notification', (m) => notifications.push([m.channel, m.payload]));
  await client.connect();
  try {
    const one = async (q, values) => (await client.query(q, values)).rows;
    rec('tz_initial', (await one('SHOW TimeZone'))[0].TimeZone);
    const r = await client.query("SELECT 1 AS one, 'hello'::text AS s");
    rec('simple', { cols: r.fields.map((f) => f.name), rows: r.rows });
    rec('param', await one("SELECT $1::int + 1 AS a, $2::text || '!' AS b", [41, 'x']));
    const prepared = [];
    for (let i = 0; i < 6; i++) {
      const res = await client.query({ name: 'q1', text: 'SELECT $1::int * 2 AS d', values: [i] });
      prepared.push(res.rows[0].d);
    }
    rec('prepared', prepared);
    // Texts that name session effects only in literals, comments and
    // aliases: the named statement must survive them.
    for (const text of [
      "SELECT 'please discard all of these notes'",
      'SELECT 1 /* deallocate all */',
      'SELECT $$DISCARD ALL$$',
      "SELECT 'listen to this' AS listen_count",
    ]) {
      await client.query(text);
    }
    const again = [];
    for (let i = 0; i < 3; i++) {
      const res = await client.query({ name: 'q1', text: 'SELECT $1::int * 2 AS d', values: [i] });
      again.push(res.rows[0].d);
    }
    rec('after_literals', again);

    await client.query(`DROP TABLE IF EXISTS ${table}`);
    await client.query(`CREATE TABLE ${table} (k int PRIMARY KEY, v text)`);
    const count = { name: `count_${table}`, text: `SELECT count(*)::int AS n FROM ${table}` };
    await client.query('BEGIN');
    await client.query(`INSERT INTO ${table} VALUES ($1, $2)`, [1, 'one']);
    rec('txn_inside', (await client.query(count)).rows[0].n);
    await client.query('ROLLBACK');
    rec('txn_rolled_back', (await client.query(count)).rows[0].n);
    await client.query('BEGIN');
    await client.query({ name: 'ins', text: `INSERT INTO ${table} VALUES ($1, $2)`, values: [2, 'two'] });
    await client.query({ name: 'ins', text: `INSERT INTO ${table} VALUES ($1, $2)`, values: [3, null] });
    await client.query('COMMIT');
    rec('txn_committed', await one(`SELECT k, v FROM ${table} ORDER BY k`));

    try {
      await client.query('SELECT 1/0');
      rec('error', 'no error');
    } catch (e) {
      rec('error', [e.code, e.message]);
    }
    rec('after_error', await one('SELECT 2 AS two'));
    await client.query('BEGIN');
    await client.query(`INSERT INTO ${table} VALUES (4, 'four')`);
    try {
      await client.query({ text: 'SELECT 1/$1::int', values: [0] });
    } catch (e) {
      rec('error_in_txn', e.code);
    }
    try {
      await client.query('SELECT 1');
    } catch (e) {
      rec('aborted_txn', e.code);
    }
    await client.query('ROLLBACK');
    rec('after_error_in_txn', (await client.query(count)).rows[0].n);

    rec('types_param', await one(
      'SELECT $1::int4 AS i, $2::bytea AS b, $3::numeric AS n, $4::timestamptz AS t, $5::jsonb AS j, $6::text AS nul, $7::text AS s',
      [7, Buffer.from([0, 1, 255, 97, 98]), '12345.678900', new Date(Date.UTC(2024, 1, 29, 13, 45, 6, 123)),
        JSON.stringify({ a: [1, 2, null], b: '\u00e9' }), null, 'na\u00efve \u2603']));
    rec('types_server', await one(
      "SELECT NULL::int AS i, '\\x0102'::bytea AS b, 1.50::numeric AS n, " +
      "'2024-01-01 00:00:00+00'::timestamptz AS t, '{\"k\": [1, null]}'::json AS j, ARRAY[1, NULL, 3]::int[] AS a"));

    await client.query(`SET TimeZone = '${ZONES[w % ZONES.length]}'`);
    await client.query('BEGIN');
    rec('tz_later_txn', [
      (await one('SHOW TimeZone'))[0].TimeZone,
      (await one("SELECT '2024-06-01 12:00:00+00'::timestamptz::text AS t"))[0].t,
    ]);
    await client.query('COMMIT');

    notices.length = 0;
    await client.query("DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$");
    rec('notice', notices);

    await client.query(`LISTEN ch_node_${w}`);
    await client.query(`NOTIFY ch_node_${w}, 'payload ${rep}'`);
    const deadline = Date.now() + 5000;
    while (notifications.length === 0 && Date.now() < deadline) {
      await new Promise((res) => setTimeout(res, 10));
    }
    rec('notify', notifications);
    rec('final', [(await client.query(count)).rows[0].n, (await one('SHOW TimeZone'))[0].TimeZone]);
  } finally {
    await client.end();
  }
}

async function worker(w) {
  const out = [];
  try {
    for (let rep = 0; rep < REPS; rep++) await run(w, rep, out);
  } catch (e) {
    out.push({ w, rep: -1, i: out.length, step: 'FAILED', v: `${e.name}: ${e.message} (${e.code || ''})` });
  }
  return out;
}

(async () => {
  const results = await Promise.all([...Array(WORKERS).keys()].map(worker));
  let failed = false;
  for (const out of results) {
    for (const r of out) {
      failed = failed || r.step === 'FAILED';
      process.stdout.write(canon(r) + '\n');
    }
  }
  process.exitCode = failed ? 1 : 0;
})();
