/**
 * django_broadcast browser client: WebSocket with automatic reconnect and resume,
 * and a Server-Sent Events helper. No dependencies; load it as a classic script
 * (it defines window.DjangoBroadcast) or import it as an ES module's side effect.
 *
 *   <script src="{% static 'django_broadcast/broadcast.js' %}"></script>
 *   const client = DjangoBroadcast.connect("/broadcast/ws/");
 *   client.subscribe("news.today", (event) => console.log(event.type, event.data));
 *   client.publish("chat.lobby", {text: "hi"});
 *
 *   DjangoBroadcast.stream("/broadcast/events/", ["news.today"], {
 *     onEvent: (event) => console.log(event),
 *     onGap: (notice) => reload(),
 *   });
 */
(function (root) {
  "use strict";

  var GAP = "broadcast.gap";

  function absoluteWebSocketUrl(url) {
    if (/^wss?:\/\//.test(url)) return url;
    var scheme = root.location.protocol === "https:" ? "wss://" : "ws://";
    return scheme + root.location.host + url;
  }

  /**
   * A WebSocket connection that reconnects with exponential backoff and jitter,
   * and on every reconnect subscribes again from the last event id of each channel,
   * so nothing is missed where the broker keeps history (a gap event says so where
   * it could not).
   *
   * @param {string} url  path or ws(s):// URL of the consumer, e.g. "/broadcast/ws/"
   * @param {{onEvent?: Function, onGap?: Function, onError?: Function,
   *          onOpen?: Function, onClose?: Function, maxDelay?: number}} [options]
   */
  function Connection(url, options) {
    this.url = absoluteWebSocketUrl(url);
    this.options = options || {};
    this.handlers = {}; // channel -> [handler]
    this.lastIds = {}; // channel -> last event id received
    this.pending = []; // frames sent while disconnected
    this.attempt = 0;
    this.closed = false;
    this.socket = null;
    this.open();
  }

  Connection.prototype.open = function () {
    var self = this;
    var socket = new WebSocket(this.url);
    this.socket = socket;
    socket.onopen = function () {
      self.attempt = 0;
      Object.keys(self.handlers).forEach(function (channel) {
        self.sendFrame(self.subscribeFrame(channel));
      });
      var queued = self.pending;
      self.pending = [];
      queued.forEach(function (frame) { self.sendFrame(frame); });
      if (self.options.onOpen) self.options.onOpen();
    };
    socket.onmessage = function (message) { self.receive(JSON.parse(message.data)); };
    socket.onclose = function () {
      if (self.options.onClose) self.options.onClose();
      if (!self.closed) self.reconnectLater();
    };
  };

  Connection.prototype.reconnectLater = function () {
    var self = this;
    var max = this.options.maxDelay || 30000;
    var delay = Math.min(max, 500 * Math.pow(2, this.attempt++));
    setTimeout(function () { if (!self.closed) self.open(); }, delay / 2 + Math.random() * delay / 2);
  };

  Connection.prototype.subscribeFrame = function (channel) {
    var frame = {op: "subscribe", channel: channel};
    if (this.lastIds[channel]) frame.since = this.lastIds[channel];
    return frame;
  };

  Connection.prototype.sendFrame = function (frame) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(frame));
    } else if (frame.op !== "subscribe") {
      this.pending.push(frame); // subscriptions are sent again on open anyway
    }
  };

  Connection.prototype.receive = function (frame) {
    var options = this.options;
    if (frame.op === "event") {
      if (frame.id) this.lastIds[frame.channel] = frame.id;
      if (frame.type === GAP && options.onGap) options.onGap(frame);
      (this.handlers[frame.channel] || []).forEach(function (handler) { handler(frame); });
      if (options.onEvent) options.onEvent(frame);
    } else if (frame.op === "error") {
      if (options.onError) options.onError(frame);
      else if (root.console) root.console.warn("django_broadcast:", frame.code, frame.message);
    }
  };

  /**
   * Receive the events of `channel`; `since` (optional) resumes after an event id.
   * @returns {Function} call it to stop this handler
   */
  Connection.prototype.subscribe = function (channel, handler, since) {
    var self = this;
    var first = !this.handlers[channel];
    (this.handlers[channel] = this.handlers[channel] || []).push(handler);
    if (since) this.lastIds[channel] = since;
    if (first) this.sendFrame(this.subscribeFrame(channel));
    return function () { self.unsubscribe(channel, handler); };
  };

  /** Stop `handler` (or every handler) of `channel`; the last one unsubscribes. */
  Connection.prototype.unsubscribe = function (channel, handler) {
    var list = (this.handlers[channel] || []).filter(function (h) { return handler && h !== handler; });
    if (list.length) {
      this.handlers[channel] = list;
      return;
    }
    delete this.handlers[channel];
    delete this.lastIds[channel];
    this.sendFrame({op: "unsubscribe", channel: channel});
  };

  /** Publish `data` on `channel` (where the server's policy allows it). */
  Connection.prototype.publish = function (channel, data, type) {
    var frame = {op: "publish", channel: channel, data: data};
    if (type) frame.type = type;
    this.sendFrame(frame);
  };

  /** Close for good: no more reconnects. */
  Connection.prototype.close = function () {
    this.closed = true;
    if (this.socket) this.socket.close();
  };

  /**
   * Server-Sent Events over EventSource, which reconnects by itself and sends the
   * last id back (the server resumes every channel of the stream from it).
   *
   * @param {string} url  e.g. "/broadcast/events/"
   * @param {string[]} channels
   * @param {{onEvent?: Function, onGap?: Function, onError?: Function,
   *          types?: string[]}} [handlers]  `types`: custom event types to listen to
   *          besides the default "message"
   * @returns {EventSource}
   */
  function stream(url, channels, handlers) {
    handlers = handlers || {};
    var query = channels.map(function (c) { return "channel=" + encodeURIComponent(c); }).join("&");
    var source = new EventSource(url + (url.indexOf("?") < 0 ? "?" : "&") + query);
    function deliver(message) {
      var event = JSON.parse(message.data);
      if (event.type === GAP) {
        if (handlers.onGap) handlers.onGap(event);
      } else if (handlers.onEvent) {
        handlers.onEvent(event);
      }
    }
    ["message", "gap"].concat(handlers.types || []).forEach(function (type) {
      source.addEventListener(type, deliver);
    });
    if (handlers.onError) source.onerror = handlers.onError;
    return source;
  }

  root.DjangoBroadcast = {
    connect: function (url, options) { return new Connection(url, options); },
    stream: stream,
    Connection: Connection,
    GAP: GAP,
  };
})(typeof window !== "undefined" ? window : globalThis);
