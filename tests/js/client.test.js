// Unit test of django_broadcast/static/django_broadcast/broadcast.js under Node, with a
// scripted WebSocket and EventSource. Run by tests/test_js_client.py; exits non-zero on
// the first failed check.
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

const timers = [];
const context = {
  WebSocket: FakeWebSocket,
  EventSource: FakeEventSource,
  location: {protocol: "https:", host: "example.com"},
  setTimeout: (fn, delay) => timers.push({fn, delay}),
  console,
  JSON, Math, Object,
};
context.window = context;
const source = fs.readFileSync(
  path.join(__dirname, "../../django_broadcast/static/django_broadcast/broadcast.js"), "utf8");
vm.runInNewContext(source, context);
const DB = context.DjangoBroadcast;

// Connect, subscribe before the socket is open: sent once it opens.
const events = [];
const gaps = [];
const client = DB.connect("/broadcast/ws/", {onGap: (g) => gaps.push(g)});
assert.equal(sockets[0].url, "wss://example.com/broadcast/ws/");
client.subscribe("news", (event) => events.push(event.data));
client.publish("chat", {text: "queued"});
sockets[0].serverOpen();
assert.deepEqual(sockets[0].sent, [
  {op: "subscribe", channel: "news"},
  {op: "publish", channel: "chat", data: {text: "queued"}},
]);

// Events reach the handler and move the resume position.
sockets[0].serverSend({op: "event", channel: "news", id: "5-0", type: "message", data: 1});
sockets[0].serverSend({op: "event", channel: "news", id: "6-0", type: "message", data: 2});
assert.deepEqual(events, [1, 2]);

// The connection drops: a reconnect is scheduled with backoff, and it resumes.
sockets[0].close();
assert.equal(timers.length, 1);
assert.ok(timers[0].delay >= 250 && timers[0].delay <= 500, `delay ${timers[0].delay}`);
timers.shift().fn();
sockets[1].serverOpen();
assert.deepEqual(sockets[1].sent, [{op: "subscribe", channel: "news", since: "6-0"}]);

// A gap notice goes to onGap and to the channel's handlers; it does not move the position.
sockets[1].serverSend({op: "event", channel: "news", id: "", type: "broadcast.gap", data: {reason: "history"}});
assert.equal(gaps.length, 1);
sockets[1].close();
timers.shift().fn();
sockets[2].serverOpen();
assert.deepEqual(sockets[2].sent, [{op: "subscribe", channel: "news", since: "6-0"}]);

// Backoff grows while the server stays away.
sockets[2].close();
const first = timers.shift();
first.fn(); sockets[3].close();
const second = timers.shift();
assert.ok(second.delay >= 500, `second delay ${second.delay}`);

// Unsubscribing the last handler unsubscribes the channel; close stops reconnects.
second.fn(); sockets[4].serverOpen();
client.unsubscribe("news");
assert.deepEqual(sockets[4].sent.at(-1), {op: "unsubscribe", channel: "news"});
client.close();
assert.equal(timers.length, 0);

// SSE: channels in the query, events and gaps to their handlers.
const seen = [];
DB.stream("/broadcast/events/", ["a", "b.c"], {onEvent: (e) => seen.push(e.data), onGap: (g) => seen.push("gap"), types: ["chat"]});
assert.equal(FakeEventSource.last.url, "/broadcast/events/?channel=a&channel=b.c");
FakeEventSource.last.emit("message", {channel: "a", id: "1", type: "message", data: "x"});
FakeEventSource.last.emit("chat", {channel: "a", id: "2", type: "chat", data: "y"});
FakeEventSource.last.emit("gap", {channel: "a", id: "", type: "broadcast.gap", data: {}});
assert.deepEqual(seen, ["x", "y", "gap"]);

console.log("broadcast.js: all checks passed");
