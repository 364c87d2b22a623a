// Drives a wamp-cluster router with autobahn-js (Node), the other client nobody here wrote.
//
//   node autobahn_suite.js --ws URL --rs HOST:PORT --serializer json|msgpack|cbor --secrets DIR
//
// Runs a smaller set of checks than the Python suite (CI time), prints "ok <name>" for each,
// and exits 1 at the first failure. Run by tests/interop.rs against a real wamp-cluster
// process.

'use strict';

// autobahn-js uses the platform's WebSocket (Node 22 and later have one).
if (typeof globalThis.WebSocket === 'undefined') {
  globalThis.WebSocket = require('ws');
}
const fs = require('fs');
const autobahn = require('autobahn');

const TIMEOUT = 10000;

function parseArgs() {
  const args = { serializer: 'json' };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) {
    args[argv[i].replace(/^--/, '')] = argv[i + 1];
  }
  return args;
}

const ARGS = parseArgs();

function serializer() {
  switch (ARGS.serializer) {
    case 'json': return new autobahn.serializer.JSONSerializer();
    case 'msgpack': return new autobahn.serializer.MsgpackSerializer();
    case 'cbor': return new autobahn.serializer.CBORSerializer();
    default: throw new Error('unknown serializer ' + ARGS.serializer);
  }
}

function within(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error('timed out: ' + what)), TIMEOUT);
  });
  return Promise.race([Promise.resolve(promise), timeout]).finally(() => clearTimeout(timer));
}

function connect(options = {}) {
  return within(new Promise((resolve, reject) => {
    let opened = false;
    const transport = options.rawsocket
      ? { type: 'rawsocket', host: ARGS.rs.split(':')[0], port: Number(ARGS.rs.split(':')[1]), serializers: [serializer()] }
      : { type: 'websocket', url: ARGS.ws, serializers: [serializer()] };
    const connection = new autobahn.Connection({
      transports: [transport],
      realm: options.realm || 'realm1',
      max_retries: 0,
      authmethods: options.authmethods,
      authid: options.authid,
      onchallenge: options.onchallenge,
    });
    connection.onopen = (session, details) => { opened = true; resolve({ session, connection, details }); };
    connection.onclose = (reason, details) => {
      if (!opened) reject(Object.assign(new Error('closed: ' + reason), { reason: details && details.reason }));
      return true; // no retry
    };
    connection.open();
  }), 'connect');
}

function expect(condition, what) {
  if (!condition) throw new Error(what);
}

function same(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

async function expectError(promise, uri) {
  try {
    const result = await within(promise, 'an error ' + uri);
    throw new Error('expected ' + uri + ', got ' + JSON.stringify(result));
  } catch (e) {
    if (!(e instanceof autobahn.Error)) throw e;
    expect(e.error === uri, 'expected ' + uri + ', got ' + e.error);
    return e;
  }
}

async function callWithArgsAndKwargs() {
  const callee = await connect();
  const caller = await connect({ rawsocket: true });
  await within(callee.session.register('com.interop.js.echo', (args, kwargs) => new autobahn.Result(args, kwargs)), 'register');
  const cases = [
    [['héllo ✓ 你好 🚀', 7], { 'ключ': [1, { a: null, b: true, c: 1.5 }] }],
    [[[1, [2, [3, { deep: [-7] }]]]], {}],
  ];
  for (const [args, kwargs] of cases) {
    const r = await within(caller.session.call('com.interop.js.echo', args, kwargs), 'call');
    // autobahn-js gives a lone argument without keyword arguments as the value itself.
    const [gotArgs, gotKwargs] = r instanceof autobahn.Result ? [r.args, r.kwargs || {}] : [[r], {}];
    expect(same(gotArgs, args), 'args ' + JSON.stringify(gotArgs));
    expect(same(gotKwargs, kwargs), 'kwargs ' + JSON.stringify(gotKwargs));
  }
  callee.connection.close(); caller.connection.close();
}

async function errorsKeepTheirArgs() {
  const callee = await connect();
  const caller = await connect();
  await within(callee.session.register('com.interop.js.fail', () => {
    throw new autobahn.Error('com.interop.js.error', ['why', 42], { detail: { k: [1, 2] } });
  }), 'register');
  const e = await expectError(caller.session.call('com.interop.js.fail'), 'com.interop.js.error');
  expect(same(e.args, ['why', 42]), 'args ' + JSON.stringify(e.args));
  expect(same(e.kwargs, { detail: { k: [1, 2] } }), 'kwargs ' + JSON.stringify(e.kwargs));
  await expectError(caller.session.call('com.interop.js.none'), 'wamp.error.no_such_procedure');
  callee.connection.close(); caller.connection.close();
}

async function progressiveResults() {
  const callee = await connect();
  const caller = await connect();
  await within(callee.session.register('com.interop.js.count', (args, kwargs, details) => {
    for (let i = 0; i < args[0]; i++) {
      if (details.progress) details.progress([i]);
    }
    return 'done';
  }), 'register');
  const seen = [];
  const result = await within(caller.session.call('com.interop.js.count', [4], {}, { receive_progress: true })
    .then((r) => r, (e) => { throw e; }, (p) => seen.push(p instanceof autobahn.Result ? p.args[0] : p)), 'call');
  expect(result === 'done', 'result ' + JSON.stringify(result));
  expect(same(seen, [0, 1, 2, 3]), 'progress ' + JSON.stringify(seen));
  callee.connection.close(); caller.connection.close();
}

async function publishAndPatternSubscriptions() {
  const sub = await connect();
  const pub = await connect();
  const got = [];
  await within(sub.session.subscribe('com.interop.js.topic', (args, kwargs) => got.push(['exact', args, kwargs])), 'subscribe');
  await within(sub.session.subscribe('com.interop.js.', (args, kwargs, details) => got.push(['prefix', details.topic]), { match: 'prefix' }), 'subscribe');
  const publication = await within(pub.session.publish('com.interop.js.topic', ['ü'], { n: 1 }, { acknowledge: true }), 'publish');
  expect(publication.id > 0, 'publication ' + JSON.stringify(publication));
  for (let i = 0; i < 500 && got.length < 2; i++) await new Promise((r) => setTimeout(r, 10));
  got.sort((a, b) => (a[0] < b[0] ? -1 : 1));
  expect(same(got, [['exact', ['ü'], { n: 1 }], ['prefix', 'com.interop.js.topic']]), 'events ' + JSON.stringify(got));
  sub.connection.close(); pub.connection.close();
}

async function ticketAuthentication() {
  const ticket = fs.readFileSync(ARGS.secrets + '/ticket', 'utf8').trim();
  const good = await connect({ realm: 'secure', authmethods: ['ticket'], authid: 'alice', onchallenge: () => ticket });
  expect(good.details.authrole === 'user', 'authrole ' + JSON.stringify(good.details));
  good.connection.close();
  try {
    await connect({ realm: 'secure', authmethods: ['ticket'], authid: 'alice', onchallenge: () => 'guess' });
    throw new Error('admitted with a wrong ticket');
  } catch (e) {
    expect(String(e.message).startsWith('closed'), 'refused: ' + e.message);
  }
}

const CHECKS = [callWithArgsAndKwargs, errorsKeepTheirArgs, progressiveResults, publishAndPatternSubscriptions, ticketAuthentication];

(async () => {
  for (const check of CHECKS) {
    try {
      await check();
      console.log('ok ' + check.name);
    } catch (e) {
      console.log('FAILED ' + check.name + ': ' + (e && e.stack ? e.stack : e));
      process.exit(1);
    }
  }
  process.exit(0);
})();
