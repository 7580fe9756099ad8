/* The connection badge (#status) every page shows, and a WebSocket connection for
 * the pages that have no live data of their own. */
(function () {
  "use strict";
  var LABELS = {connecting: "connecting…", open: "live", closed: "offline, retrying…"};
  var badge = document.getElementById("status");

  function set(state) {
    badge.dataset.state = state;
    badge.textContent = LABELS[state];
  }

  // A WebSocket connection through the shipped client, reflected in the badge.
  function connect(options) {
    options = options || {};
    return DjangoBroadcast.connect("/broadcast/ws/", {
      onOpen: function () { set("open"); },
      onClose: function () { set("closed"); },
      onError: options.onError || function (frame) { badge.title = frame.message; },
    });
  }

  window.DemoStatus = {set: set, connect: connect};
})();
