/* A chat room over WebSocket, through the shipped client (broadcast.js).
 *
 * The page arrives with the room's latest messages and `since`, the id of the newest
 * event it shows (on brokers that keep history): subscribing from it replays what was
 * published since the page was rendered, and the client resumes from the last event
 * it received after every dropped connection. Where nothing can be replayed, a gap
 * notice says so. Messages are sent through a plain Django view (saved, then
 * published); the browser itself publishes only presence beats. */
(function () {
  "use strict";
  var BEAT = 5000; // ms between presence beats; a name is gone after three missed
  var config = JSON.parse(document.getElementById("chat-config").textContent);
  var list = document.getElementById("messages");
  var notice = document.getElementById("notice");
  var presenceList = document.getElementById("presence");
  var presenceChannel = config.channel + ".presence";
  var shown = {}; // event id -> true, so that a replayed message is shown once
  list.querySelectorAll("li.message").forEach(function (item) { shown[item.dataset.id] = true; });

  function say(text) {
    notice.textContent = text;
    notice.hidden = false;
  }

  function addMessage(event) {
    if (shown[event.id]) return;
    shown[event.id] = true;
    var item = document.createElement("li");
    item.className = "message";
    item.dataset.id = event.id;
    var author = document.createElement("span");
    author.className = "author";
    author.textContent = event.data.author;
    var text = document.createElement("span");
    text.className = "text";
    text.textContent = event.data.text;
    item.append(author, " ", text);
    list.append(item);
    list.scrollTop = list.scrollHeight;
  }
  list.scrollTop = list.scrollHeight;

  var client = DemoStatus.connect({onError: function (frame) { say(frame.message); }});
  client.subscribe(config.channel, function (event) {
    if (event.type === DjangoBroadcast.GAP) {
      say("You were offline for a moment and messages sent meanwhile could not be " +
          "replayed here. Reload the page to see them.");
    } else if (event.type === "message") {
      addMessage(event);
    }
  }, config.since || undefined);

  // Presence: every open page beats every few seconds; names not heard for three
  // beats leave the list.
  var lastHeard = {}; // name -> Date.now() of its last beat
  function renderPresence() {
    var now = Date.now();
    Object.keys(lastHeard).forEach(function (name) {
      if (now - lastHeard[name] > 3 * BEAT) delete lastHeard[name];
    });
    var names = Object.keys(lastHeard).sort();
    presenceList.replaceChildren.apply(presenceList, names.map(function (name) {
      var item = document.createElement("li");
      item.dataset.name = name;
      item.textContent = name;
      return item;
    }));
  }
  client.subscribe(presenceChannel, function (event) {
    if (event.type !== "presence") return; // a gap in beats needs no notice
    if (event.data.left) delete lastHeard[event.data.name];
    else lastHeard[event.data.name] = Date.now();
    renderPresence();
  });
  setInterval(renderPresence, 1000);

  if (config.name) {
    var beat = function () { client.publish(presenceChannel, {name: config.name}, "presence"); };
    lastHeard[config.name] = Date.now();
    renderPresence();
    beat();
    setInterval(beat, BEAT);
    window.addEventListener("pagehide", function () {
      client.publish(presenceChannel, {name: config.name, left: true}, "presence");
    });
  }

  // Post through the view without leaving the page (the form works without JS too).
  var form = document.getElementById("chat-form");
  if (form) {
    form.addEventListener("submit", function (submit) {
      submit.preventDefault();
      var body = new FormData(form);
      form.reset();
      fetch(form.action, {method: "POST", body: body, headers: {"X-Requested-With": "fetch"}})
        .then(function (response) {
          if (response.ok) return;
          // The view's own short answers (400: what to fix; 503: saved, not sent
          // live) are for the notice; anything else is a server error page.
          if (response.status === 400 || response.status === 503) {
            return response.text().then(say);
          }
          say("The message could not be sent (the server answered " + response.status +
              "): try again in a moment.");
        })
        .catch(function () { say("The message could not be sent: try again."); });
    });
  }
})();
