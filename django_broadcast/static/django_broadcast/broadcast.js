/**
 * django_broadcast browser client: a WebSocket connection that resumes every channel
 * after a reconnect or a broker outage, and a Server-Sent Events helper. No
 * dependencies; load it as a classic script (it defines window.DjangoBroadcast) or
 * import it as an ES module's side effect.
 *
 *   <script src="{% static 'django_broadcast/broadcast.js' %}"></script>
 *   const client = DjangoBroadcast.connect("/broadcast/ws/", {onGap: (notice) => reload()});
 *   const stop = client.subscribe("news.today", (event) => console.log(event.type, event.data));
 *   client.publish("chat.lobby", {text: "hi"});
 *
 *   DjangoBroadcast.stream("/broadcast/events/", ["news.today"], {
 *     onEvent: (event) => console.log(event),
 *     onGap: (notice) => reload(),
 *   });
 *
 * DjangoBroadcast.connect(url, options) -> Connection
 *   url      path or ws(s):// URL of the WebSocket consumer, e.g. "/broadcast/ws/"
 *   options  all optional:
 *     onEvent(event)   every event of every channel, gap notices included
 *     onGap(notice)    every gap notice: events of notice.channel may have been missed
 *     onError(frame)   every error frame {op: "error", code, message, channel?}
 *                      (without it: console.warn)
 *     onOpen(), onClose()  each time a socket opens or closes
 *     maxDelay         ceiling of the reconnect and retry backoff, ms (default 30000)
 * connection.subscribe(channel, handler, since?) -> stop()
 *   handler(event) gets {op: "event", channel, id, type, data}, gap notices included;
 *   `since` (an event id) resumes the channel after it.
 * connection.unsubscribe(channel, handler?)  without handler: every handler
 * connection.publish(channel, data, type?)   sent once the socket is open
 * connection.close()                         for good: no reconnect, no retry
 *
 * DjangoBroadcast.stream(url, channels, handlers?) -> EventSource
 *   handlers: onEvent(event), onGap(notice), onUnavailable({message}), onError(error),
 *   types: custom event types to listen to besides "message".
 * DjangoBroadcast.GAP  "broadcast.gap", the type of a gap notice
 *
 * What the WebSocket connection does for you:
 * - It keeps a position per channel: the `position` of the server's `subscribed`
 *   frame, then the id of every event received (or the `since` you passed). Every
 *   subscribe sends it as `since`, so a reconnect replays what was missed where the
 *   broker keeps history, quiet channels included; the server sends a gap notice
 *   where it cannot. Unsubscribing the last handler forgets it.
 * - A lost socket is reopened after 500 ms doubling up to maxDelay, each delay taken
 *   at random between half and all of it, and every channel is subscribed again.
 * - A subscription the server could not make (error "unavailable") or had to end
 *   ("subscription_closed") is made again after the same backoff, counted per channel
 *   and reset by its `subscribed` frame. Other error codes are final. An
 *   "unavailable" for a channel already subscribed answers a publish: only reported.
 * - Without history (the server's `position` is null) a channel that got no event has
 *   no position. When such a channel, subscribed before, is subscribed again, the
 *   client itself delivers one gap notice once the server confirms it:
 *   {op: "event", channel, id: "", type: "broadcast.gap", data: {reason: "reconnect"}}.
 */
(function (root) {
  "use strict";

  var GAP = "broadcast.gap";

  function absoluteWebSocketUrl(url) {
    if (/^wss?:\/\//.test(url)) return url;
    var scheme = root.location.protocol === "https:" ? "wss://" : "ws://";
    return scheme + root.location.host + url;
  }

  // The retry delay after `attempt` failures: 500 ms doubling up to `max`, taken at
  // random between half and all of it so that clients do not come back in step.
  function backoff(attempt, max) {
    var delay = Math.min(max, 500 * Math.pow(2, attempt));
    return delay / 2 + Math.random() * delay / 2;
  }

  // Error codes after which a subscription is tried again; every other code is final.
  var RETRIED = {unavailable: true, subscription_closed: true};

  /**
   * A WebSocket connection that reconnects with exponential backoff and jitter and
   * subscribes every channel again from its position, retries subscriptions the
   * server could not make or had to end, and says so with a gap notice wherever
   * events may have been missed (see the top of this file).
   *
   * @param {string} url  path or ws(s):// URL of the consumer, e.g. "/broadcast/ws/"
   * @param {{onEvent?: Function, onGap?: Function, onError?: Function,
   *          onOpen?: Function, onClose?: Function, maxDelay?: number}} [options]
   */
  function Connection(url, options) {
    this.url = absoluteWebSocketUrl(url);
    this.options = options || {};
    this.handlers = {}; // channel -> [handler]
    this.positions = {}; // channel -> id to resume from
    this.confirmed = {}; // channel -> true once the server confirmed a subscription
    this.retries = {}; // channel -> {attempt: failures in a row, timer: pending retry}
    this.states = {}; // channel -> "subscribing"|"resuming"|"live"|"down" on this socket
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
    this.states = {};
    socket.onopen = function () {
      self.attempt = 0;
      Object.keys(self.handlers).forEach(function (channel) { self.sendSubscribe(channel); });
      var queued = self.pending;
      self.pending = [];
      queued.forEach(function (frame) { self.sendFrame(frame); });
      if (self.options.onOpen) self.options.onOpen();
    };
    socket.onmessage = function (message) { self.receive(JSON.parse(message.data)); };
    socket.onclose = function () {
      // The next socket subscribes every channel again: pending retries are moot.
      Object.keys(self.retries).forEach(function (channel) { self.cancelRetry(channel); });
      self.states = {};
      if (self.options.onClose) self.options.onClose();
      if (!self.closed) self.reconnectLater();
    };
  };

  Connection.prototype.reconnectLater = function () {
    var self = this;
    var delay = backoff(this.attempt++, this.options.maxDelay || 30000);
    setTimeout(function () { if (!self.closed) self.open(); }, delay);
  };

  Connection.prototype.sendFrame = function (frame) {
    if (this.isOpen()) {
      this.socket.send(JSON.stringify(frame));
    } else if (frame.op !== "subscribe") {
      this.pending.push(frame); // subscriptions are sent again on open anyway
    }
  };

  Connection.prototype.isOpen = function () {
    return !!this.socket && this.socket.readyState === WebSocket.OPEN;
  };

  // Subscribe `channel` on the open socket from its position (a closed socket
  // subscribes every channel when it opens). "resuming": subscribed before, and now
  // again without a position, so whatever was published in between is lost unseen.
  Connection.prototype.sendSubscribe = function (channel) {
    if (!this.isOpen()) return;
    var frame = {op: "subscribe", channel: channel};
    if (this.positions[channel]) frame.since = this.positions[channel];
    this.states[channel] = !frame.since && this.confirmed[channel] ? "resuming" : "subscribing";
    this.sendFrame(frame);
  };

  Connection.prototype.retryLater = function (channel) {
    var self = this;
    var socket = this.socket;
    var retry = this.retries[channel] || (this.retries[channel] = {attempt: 0, timer: null});
    if (retry.timer !== null) return;
    var delay = backoff(retry.attempt++, this.options.maxDelay || 30000);
    retry.timer = setTimeout(function () {
      retry.timer = null;
      if (self.closed || self.socket !== socket || !self.handlers[channel]) return;
      if (self.states[channel] === "down") self.sendSubscribe(channel);
    }, delay);
  };

  Connection.prototype.cancelRetry = function (channel) {
    var retry = this.retries[channel];
    if (retry && retry.timer !== null) {
      clearTimeout(retry.timer);
      retry.timer = null;
    }
  };

  Connection.prototype.deliver = function (frame) {
    var options = this.options;
    if (frame.type === GAP && options.onGap) options.onGap(frame);
    (this.handlers[frame.channel] || []).forEach(function (handler) { handler(frame); });
    if (options.onEvent) options.onEvent(frame);
  };

  Connection.prototype.receive = function (frame) {
    var channel = frame.channel;
    var known = !!this.handlers[channel];
    var state = this.states[channel];
    if (frame.op === "event") {
      if (frame.id && known) this.positions[channel] = frame.id;
      this.deliver(frame);
    } else if (frame.op === "subscribed") {
      if (!known) return;
      this.cancelRetry(channel);
      delete this.retries[channel];
      if (frame.position) this.positions[channel] = frame.position;
      this.confirmed[channel] = true;
      this.states[channel] = "live";
      // The server cannot know what a resumed subscription without a position
      // missed: the client says so.
      if (state === "resuming") {
        this.deliver({op: "event", channel: channel, id: "", type: GAP, data: {reason: "reconnect"}});
      }
    } else if (frame.op === "error") {
      var options = this.options;
      if (options.onError) options.onError(frame);
      else if (root.console) root.console.warn("django_broadcast:", frame.code, frame.message);
      if (!known || !state) return;
      // An error for a live channel other than subscription_closed answers a
      // publish: the subscription stands.
      if (frame.code === "subscription_closed" || state === "subscribing" || state === "resuming") {
        this.states[channel] = "down";
        if (RETRIED[frame.code]) this.retryLater(channel);
      }
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
    if (since) this.positions[channel] = since;
    if (first) this.sendSubscribe(channel);
    return function () { self.unsubscribe(channel, handler); };
  };

  /** Stop `handler` (or every handler) of `channel`; the last one unsubscribes. */
  Connection.prototype.unsubscribe = function (channel, handler) {
    var list = (this.handlers[channel] || []).filter(function (h) { return handler && h !== handler; });
    if (list.length) {
      this.handlers[channel] = list;
      return;
    }
    this.cancelRetry(channel);
    delete this.handlers[channel];
    delete this.positions[channel];
    delete this.confirmed[channel];
    delete this.retries[channel];
    delete this.states[channel];
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
    var self = this;
    this.closed = true;
    Object.keys(this.retries).forEach(function (channel) { self.cancelRetry(channel); });
    if (this.socket) this.socket.close();
  };

  /**
   * Server-Sent Events over EventSource, which reconnects by itself and sends the
   * last id back (the server resumes every channel of the stream from it).
   * While the broker is unreachable the server answers with one `unavailable` event
   * and ends the response; it goes to `onUnavailable` (never to `onEvent`) and
   * EventSource reconnects by itself, keeping its Last-Event-ID.
   *
   * @param {string} url  e.g. "/broadcast/events/"
   * @param {string[]} channels
   * @param {{onEvent?: Function, onGap?: Function, onUnavailable?: Function,
   *          onError?: Function, types?: string[]}} [handlers]  `types`: custom event
   *          types to listen to besides the default "message"
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
      if (type !== "unavailable") source.addEventListener(type, deliver);
    });
    // The broker is unreachable: the server ends the response and EventSource
    // reconnects by itself, keeping its Last-Event-ID.
    source.addEventListener("unavailable", function (message) {
      if (handlers.onUnavailable) handlers.onUnavailable(JSON.parse(message.data));
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
