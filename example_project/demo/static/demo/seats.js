/* The seat map over Server-Sent Events with a plain EventSource (no client library).
 *
 * The "seats" channel carries the Seat model's change stream: events of type
 * "created", "updated" and "deleted" with {model, pk, fields: {taken_by}}. The SSE
 * `event:` field is the event's type, so each type gets its own listener. After every
 * (re)connection the page asks for the whole map once, so nothing missed while offline
 * stays wrong, whatever the broker keeps. */
(function () {
  "use strict";
  var map = document.getElementById("seats");
  var notice = document.getElementById("notice");

  function seat(label) { return map.querySelector('button.seat[data-seat="' + label + '"]'); }

  function paint(label, takenBy) {
    var button = seat(label);
    if (!button) return;
    button.dataset.state = !takenBy ? "free" : takenBy === map.dataset.holder ? "mine" : "taken";
  }

  function say(text, ok) {
    notice.textContent = text;
    notice.hidden = !text;
    notice.classList.toggle("ok", !!ok);
  }

  function refresh() {
    fetch("/seats/state/").then(function (response) { return response.json(); })
      .then(function (states) {
        Object.keys(states).forEach(function (label) {
          var button = seat(label);
          if (button) button.dataset.state = states[label];
        });
      })
      .catch(function () { /* the next (re)connection asks again */ });
  }

  var events = new EventSource("/broadcast/events/?channel=seats");
  events.onopen = function () { DemoStatus.set("open"); refresh(); };
  events.onerror = function () { DemoStatus.set("closed"); }; // it retries by itself
  ["created", "updated"].forEach(function (type) {
    events.addEventListener(type, function (message) {
      var change = JSON.parse(message.data).data;
      paint(change.pk, change.fields.taken_by);
    });
  });
  events.addEventListener("deleted", function (message) {
    var button = seat(JSON.parse(message.data).data.pk);
    if (button) button.parentNode.remove();
  });
  events.addEventListener("gap", refresh); // events were missed: ask for the map
  events.addEventListener("unavailable", function () { DemoStatus.set("closed"); });

  map.addEventListener("submit", function (submit) {
    submit.preventDefault();
    var form = submit.target;
    fetch(form.action, {method: "POST", body: new FormData(form), headers: {"X-Requested-With": "fetch"}})
      .then(function (response) { return response.json(); })
      .then(function (answer) {
        map.dataset.holder = answer.holder;
        say(answer.message, answer.ok);
        if (answer.ok) refresh(); // our own change, without waiting for its event
      })
      .catch(function () { say("The seat could not be taken: try again."); });
  });
})();
