// Unit test of django_broadcast/static/django_broadcast/broadcast.js under Node, with a
// scripted WebSocket, EventSource, timers and Math.random. Run by tests/test_js_client.py;
// every check runs, each failure is printed, and the exit status is non-zero if any failed.
"use strict";
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const vm = require("node:vm");

const sockets = [];
class FakeWebSocket {
  constructor(url) { this.url = url; this.sent = []; this.readyState = 0; sockets.push(this); }
  send(text) { this.sent.push(JSON.parse(text)); }
  close() { this.readyState = 3; if (this.onclose) this.onclose(); }
  serverOpen() { this.readyState = 1; this.onopen(); }
  serverSend(frame) { this.onmessage({data: JSON.stringify(frame)}); }
}
FakeWebSocket.OPEN = 1;

class FakeEventSource {
  constructor(url) { this.url = url; this.listeners = {}; FakeEventSource.last = this; }
  addEventListener(type, fn) { (this.listeners[type] = this.listeners[type] || []).push(fn); }
  emit(type, data) { (this.listeners[type] || []).forEach((fn) => fn({data: JSON.stringify(data)})); }
}

// Timers run only when a check says so; clearTimeout takes one off the list.
const timers = [];
let timerIds = 0;
function fire(timer) {
  timers.splice(timers.indexOf(timer), 1);
  timer.fn();
}
function fireAll() {
  while (timers.length) fire(timers[0]);
}

let random = () => 0.5;
const context = {
  WebSocket: FakeWebSocket,
  EventSource: FakeEventSource,
  location: {protocol: "https:", host: "example.com"},
  setTimeout: (fn, delay) => { timers.push({id: ++timerIds, fn, delay}); return timerIds; },
  clearTimeout: (id) => {
    const index = timers.findIndex((t) => t.id === id);
    if (index >= 0) timers.splice(index, 1);
  },
  console,
  JSON, Object,
  Math: Object.assign(Object.create(Math), {random: () => random()}),
};
context.window = context;
const source = fs.readFileSync(
  path.join(__dirname, "../../django_broadcast/static/django_broadcast/broadcast.js"), "utf8");
vm.runInNewContext(source, context);
const DB = context.DjangoBroadcast;

let failures = 0;
function check(name, fn) {
  timers.length = 0;
  random = () => 0.5;
  try {
    fn();
  } catch (error) {
    failures += 1;
    console.error(`FAIL: ${name}\n  ${String(error.stack || error).split("\n").slice(0, 6).join("\n  ")}`);
  }
}

// A client on a fresh socket list: socket(i) is the i-th socket it opened.
function connect(options) {
  const first = sockets.length;
  const client = DB.connect("/broadcast/ws/", options || {});
  const socket = (i) => sockets[first + i];
  socket.last = () => sockets[sockets.length - 1];
  return {client, socket};
}

// The socket drops and the scheduled reconnect opens a new one.
function reconnect(socket) {
  const count = sockets.length;
  socket.last().close();
  assert.ok(timers.length, "a reconnect is scheduled");
  while (sockets.length === count && timers.length) fire(timers[timers.length - 1]);
  assert.equal(sockets.length, count + 1, "the reconnect opened a new socket");
  socket.last().serverOpen();
  return socket.last();
}

const subscribed = (channel, position, recovered) =>
  ({op: "subscribed", channel, recovered: !!recovered, position: position === undefined ? null : position});
const event = (channel, id, data) => ({op: "event", channel, id, type: "message", data});
const error = (code, channel) => ({op: "error", code, message: code, channel});
// Objects made inside the script's context have its own prototypes: compare plain copies.
const plain = (value) => JSON.parse(JSON.stringify(value));
const gapNotice = (channel) =>
  ({op: "event", channel, id: "", type: "broadcast.gap", data: {reason: "reconnect"}});

check("connect, subscribe, publish, reconnect and resume", () => {
  const events = [];
  const gaps = [];
  const {client, socket} = connect({onGap: (g) => gaps.push(g)});
  assert.equal(socket(0).url, "wss://example.com/broadcast/ws/");
  // Subscribe before the socket is open: sent once it opens.
  client.subscribe("news", (e) => events.push(e.data));
  client.publish("chat", {text: "queued"});
  socket(0).serverOpen();
  assert.deepEqual(socket(0).sent, [
    {op: "subscribe", channel: "news"},
    {op: "publish", channel: "chat", data: {text: "queued"}},
  ]);

  // Events reach the handler and move the resume position.
  socket(0).serverSend(event("news", "5-0", 1));
  socket(0).serverSend(event("news", "6-0", 2));
  assert.deepEqual(events, [1, 2]);

  // The connection drops: a reconnect is scheduled with backoff, and it resumes.
  socket(0).close();
  assert.equal(timers.length, 1);
  assert.ok(timers[0].delay >= 250 && timers[0].delay <= 500, `delay ${timers[0].delay}`);
  fire(timers[0]);
  socket(1).serverOpen();
  assert.deepEqual(socket(1).sent, [{op: "subscribe", channel: "news", since: "6-0"}]);

  // A gap notice goes to onGap and to the channel's handlers; it does not move the position.
  socket(1).serverSend({op: "event", channel: "news", id: "", type: "broadcast.gap", data: {reason: "history"}});
  assert.equal(gaps.length, 1);
  socket(1).close();
  fire(timers[0]);
  socket(2).serverOpen();
  assert.deepEqual(socket(2).sent, [{op: "subscribe", channel: "news", since: "6-0"}]);

  // Backoff grows while the server stays away.
  socket(2).close();
  fire(timers[0]);
  socket(3).close();
  const second = timers[0];
  assert.ok(second.delay >= 500, `second delay ${second.delay}`);

  // Unsubscribing the last handler unsubscribes the channel; close stops reconnects.
  fire(second);
  socket(4).serverOpen();
  client.unsubscribe("news");
  assert.deepEqual(socket(4).sent.at(-1), {op: "unsubscribe", channel: "news"});
  client.close();
  assert.equal(timers.length, 0);
});

check("a quiet channel resumes from its subscribed position after a reconnect", () => {
  const {client, socket} = connect();
  client.subscribe("news", () => {});
  socket(0).serverOpen();
  socket(0).serverSend(subscribed("news", "7-0"));
  const again = reconnect(socket);
  assert.deepEqual(again.sent, [{op: "subscribe", channel: "news", since: "7-0"}]);
  client.close();
});

check("an event id supersedes the subscribed position", () => {
  const {client, socket} = connect();
  client.subscribe("news", () => {});
  socket(0).serverOpen();
  socket(0).serverSend(subscribed("news", "7-0"));
  socket(0).serverSend(event("news", "9-0", "x"));
  let again = reconnect(socket);
  assert.deepEqual(again.sent, [{op: "subscribe", channel: "news", since: "9-0"}]);
  // The server confirms from there; a second reconnect still resumes from 9-0.
  again.serverSend(subscribed("news", "9-0", true));
  again = reconnect(socket);
  assert.deepEqual(again.sent, [{op: "subscribe", channel: "news", since: "9-0"}]);
  client.close();
});

check("an explicit since is sent, and unsubscribing the last handler forgets the position", () => {
  const {client, socket} = connect();
  const stop = client.subscribe("news", () => {}, "3-0");
  socket(0).serverOpen();
  assert.deepEqual(socket(0).sent, [{op: "subscribe", channel: "news", since: "3-0"}]);
  socket(0).serverSend(subscribed("news", "3-0", true));
  stop();
  client.subscribe("news", () => {});
  assert.deepEqual(socket(0).sent.slice(1), [
    {op: "unsubscribe", channel: "news"},
    {op: "subscribe", channel: "news"},
  ]);
  client.close();
});

check("without history: a quiet channel gets one synthetic gap on reconnect, a channel with an id sends since", () => {
  const gaps = [];
  const all = [];
  const quiet = [];
  const busy = [];
  const {client, socket} = connect({onGap: (g) => gaps.push(g), onEvent: (e) => all.push(e)});
  client.subscribe("quiet", (e) => quiet.push(e));
  client.subscribe("busy", (e) => busy.push(e));
  client.subscribe("late", () => {}); // never confirmed before the drop: nothing was missed
  socket(0).serverOpen();
  socket(0).serverSend(subscribed("quiet", null));
  socket(0).serverSend(subscribed("busy", null));
  socket(0).serverSend(event("busy", "1700-3", "b"));
  assert.equal(gaps.length, 0);

  const again = reconnect(socket);
  assert.deepEqual(again.sent, [
    {op: "subscribe", channel: "quiet"},
    {op: "subscribe", channel: "busy", since: "1700-3"},
    {op: "subscribe", channel: "late"},
  ]);
  again.serverSend(subscribed("quiet", null));
  again.serverSend(subscribed("busy", null));
  again.serverSend(subscribed("late", null));
  assert.deepEqual(plain(gaps), [gapNotice("quiet")]);
  assert.deepEqual(plain(quiet), [gapNotice("quiet")]);
  assert.deepEqual(busy.map((e) => e.type), ["message"]);
  assert.deepEqual(plain(all.filter((e) => e.type === "broadcast.gap")), [gapNotice("quiet")]);

  // A later confirmation on the same socket brings no second notice.
  again.serverSend(subscribed("quiet", null));
  assert.equal(gaps.length, 1);
  client.close();
});

check("without history: a resubscribe that fails first still brings exactly one synthetic gap", () => {
  const gaps = [];
  const {client, socket} = connect({onGap: (g) => gaps.push(g), onError: () => {}});
  client.subscribe("quiet", () => {});
  socket(0).serverOpen();
  socket(0).serverSend(subscribed("quiet", null));
  const again = reconnect(socket);
  again.serverSend(error("unavailable", "quiet"));
  assert.equal(gaps.length, 0);
  assert.equal(timers.length, 1);
  fire(timers[0]);
  assert.deepEqual(again.sent, [{op: "subscribe", channel: "quiet"}, {op: "subscribe", channel: "quiet"}]);
  again.serverSend(subscribed("quiet", null));
  assert.deepEqual(plain(gaps), [gapNotice("quiet")]);
  client.close();
});

check("unavailable: a retry within the jitter bounds, resent with since; still reported", () => {
  const errors = [];
  const {client, socket} = connect({onError: (e) => errors.push(e)});
  client.subscribe("news", () => {}, "4-0");
  socket(0).serverOpen();
  random = () => 0;
  socket(0).serverSend(error("unavailable", "news"));
  assert.deepEqual(errors, [error("unavailable", "news")]);
  assert.equal(timers.length, 1);
  assert.equal(timers[0].delay, 250);
  fire(timers[0]);
  assert.deepEqual(socket(0).sent.at(-1), {op: "subscribe", channel: "news", since: "4-0"});
  random = () => 0.999999;
  socket(0).serverSend(error("unavailable", "news"));
  assert.equal(timers.length, 1);
  assert.ok(timers[0].delay > 999 && timers[0].delay <= 1000, `delay ${timers[0].delay}`);
  client.close();
});

check("unavailable without an error handler warns on the console", () => {
  const warned = [];
  const warn = console.warn;
  console.warn = (...args) => warned.push(args);
  try {
    const {client, socket} = connect();
    client.subscribe("news", () => {});
    socket(0).serverOpen();
    socket(0).serverSend(error("unavailable", "news"));
    assert.deepEqual(warned, [["django_broadcast:", "unavailable", "unavailable"]]);
    assert.equal(timers.length, 1);
    client.close();
  } finally {
    console.warn = warn;
  }
});

check("the retry backoff grows, is capped by maxDelay and resets after subscribed", () => {
  random = () => 0.999999; // the top of each range
  const {client, socket} = connect({onError: () => {}, maxDelay: 3000});
  client.subscribe("news", () => {});
  socket(0).serverOpen();
  const delays = [];
  for (let i = 0; i < 5; i++) {
    socket(0).serverSend(error("unavailable", "news"));
    assert.equal(timers.length, 1);
    delays.push(Math.round(timers[0].delay));
    fire(timers[0]);
  }
  assert.deepEqual(delays, [500, 1000, 2000, 3000, 3000]);
  socket(0).serverSend(subscribed("news", "2-0"));
  socket(0).serverSend(error("subscription_closed", "news"));
  assert.equal(Math.round(timers[0].delay), 500);
  fire(timers[0]);
  assert.deepEqual(socket(0).sent.at(-1), {op: "subscribe", channel: "news", since: "2-0"});
  client.close();
});

check("subscription_closed: retried from the last event id", () => {
  const {client, socket} = connect({onError: () => {}});
  client.subscribe("news", () => {});
  socket(0).serverOpen();
  socket(0).serverSend(subscribed("news", "1-0"));
  socket(0).serverSend(event("news", "5-0", "x"));
  socket(0).serverSend(error("subscription_closed", "news"));
  socket(0).serverSend(error("subscription_closed", "news")); // one retry at a time
  assert.equal(timers.length, 1);
  assert.ok(timers[0].delay >= 250 && timers[0].delay <= 500, `delay ${timers[0].delay}`);
  fire(timers[0]);
  assert.deepEqual(socket(0).sent, [
    {op: "subscribe", channel: "news"},
    {op: "subscribe", channel: "news", since: "5-0"},
  ]);
  client.close();
});

check("final error codes are not retried", () => {
  const errors = [];
  const {client, socket} = connect({onError: (e) => errors.push(e.code)});
  const codes = ["forbidden", "invalid_channel", "bad_since", "too_many_subscriptions", "malformed"];
  codes.forEach((code) => client.subscribe(code, () => {}));
  socket(0).serverOpen();
  codes.forEach((code) => socket(0).serverSend(error(code, code)));
  assert.deepEqual(errors, codes);
  fireAll();
  assert.equal(socket(0).sent.length, codes.length);
  client.close();
});

check("unavailable for a channel without handlers, or answering a publish, is not retried", () => {
  const {client, socket} = connect({onError: () => {}});
  client.subscribe("news", () => {});
  socket(0).serverOpen();
  socket(0).serverSend(subscribed("news", null));
  socket(0).serverSend(error("unavailable", "other"));
  client.publish("news", "hi");
  socket(0).serverSend(error("unavailable", "news")); // the publish failed; the subscription lives
  fireAll();
  assert.deepEqual(socket(0).sent, [
    {op: "subscribe", channel: "news"},
    {op: "publish", channel: "news", data: "hi"},
  ]);
  client.close();
});

check("a subscribed frame cancels a retry scheduled for its channel", () => {
  const {client, socket} = connect({onError: () => {}});
  client.subscribe("news", () => {});
  client.publish("news", "hi");
  socket(0).serverOpen();
  // The publish's unavailable comes before the subscribe's answer: it cannot be told apart.
  socket(0).serverSend(error("unavailable", "news"));
  socket(0).serverSend(subscribed("news", "1-0"));
  fireAll();
  assert.equal(socket(0).sent.filter((f) => f.op === "subscribe").length, 1);
  client.close();
});

check("no retry after unsubscribe", () => {
  const {client, socket} = connect({onError: () => {}});
  const stop = client.subscribe("news", () => {});
  socket(0).serverOpen();
  socket(0).serverSend(error("unavailable", "news"));
  assert.equal(timers.length, 1);
  stop();
  fireAll();
  assert.equal(socket(0).sent.filter((f) => f.op === "subscribe").length, 1);
  client.close();
});

check("no retry after close", () => {
  const {client, socket} = connect({onError: () => {}});
  client.subscribe("news", () => {});
  socket(0).serverOpen();
  socket(0).serverSend(error("subscription_closed", "news"));
  assert.equal(timers.length, 1);
  const count = sockets.length;
  socket(0).close = () => {}; // the browser reports the close later, if at all
  client.close();
  fireAll();
  assert.equal(socket(0).sent.length, 1);
  assert.equal(sockets.length, count);
});

check("no retry once the socket was replaced: the reopen resubscribes", () => {
  const {client, socket} = connect({onError: () => {}});
  client.subscribe("news", () => {});
  socket(0).serverOpen();
  socket(0).serverSend(subscribed("news", "8-0"));
  socket(0).serverSend(error("subscription_closed", "news"));
  const retry = timers[0];
  const again = reconnect(socket);
  assert.ok(!timers.includes(retry), "the retry was cancelled when the socket closed");
  assert.deepEqual(again.sent, [{op: "subscribe", channel: "news", since: "8-0"}]);
  fireAll();
  assert.equal(again.sent.length, 1);
  assert.equal(socket(0).sent.length, 1);
  // The new socket's own failure is retried on the new socket.
  again.serverSend(error("unavailable", "news"));
  assert.equal(timers.length, 1);
  fireAll();
  assert.deepEqual(again.sent.slice(1), [{op: "subscribe", channel: "news", since: "8-0"}]);
  client.close();
});

check("SSE: channels in the query, events and gaps to their handlers", () => {
  const seen = [];
  DB.stream("/broadcast/events/", ["a", "b.c"], {
    onEvent: (e) => seen.push(e.data), onGap: () => seen.push("gap"), types: ["chat"],
  });
  assert.equal(FakeEventSource.last.url, "/broadcast/events/?channel=a&channel=b.c");
  FakeEventSource.last.emit("message", {channel: "a", id: "1", type: "message", data: "x"});
  FakeEventSource.last.emit("chat", {channel: "a", id: "2", type: "chat", data: "y"});
  FakeEventSource.last.emit("gap", {channel: "a", id: "", type: "broadcast.gap", data: {}});
  assert.deepEqual(seen, ["x", "y", "gap"]);
});

check("SSE: unavailable goes to onUnavailable, never to onEvent", () => {
  const events = [];
  const unavailable = [];
  DB.stream("/broadcast/events/", ["a"], {
    onEvent: (e) => events.push(e), onUnavailable: (d) => unavailable.push(d),
  });
  FakeEventSource.last.emit("unavailable", {message: "the event broker is unavailable"});
  assert.deepEqual(unavailable, [{message: "the event broker is unavailable"}]);
  assert.deepEqual(events, []);
  // Without onUnavailable it is dropped quietly, even when listed in types.
  DB.stream("/broadcast/events/", ["a"], {onEvent: (e) => events.push(e), types: ["unavailable"]});
  FakeEventSource.last.emit("unavailable", {message: "the event broker is unavailable"});
  assert.deepEqual(events, []);
});

if (failures) {
  console.error(`broadcast.js: ${failures} check(s) failed`);
  process.exit(1);
}
console.log("broadcast.js: all checks passed");
