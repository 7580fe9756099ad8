/**
 * Live model admin pages (django_broadcast.contrib.admin.LiveModelAdmin).
 *
 * On a changelist: the rows of objects saved elsewhere are marked and brought up to
 * date, new objects appear where the list (its filters, search, ordering and page)
 * puts them, deleted ones are struck through, and the latest changes are listed above
 * the table. The page is read again to learn what the list now shows; with
 * list_editable, rows are only marked, never replaced under your edits.
 * On a change form: a warning when someone else saves or deletes this object.
 *
 * The model comes from the admin's <body> classes (app-<label> model-<name>), the
 * channel is "broadcast.admin.<label>.<name>", the WebSocket consumer's URL
 * "/broadcast/ws/" unless a <meta name="django-broadcast-websocket" content="...">
 * says otherwise. Event texts are inserted as text, never as HTML.
 */
(function () {
  "use strict";

  const GAP = "broadcast.gap";
  const KEPT = 5; // changes listed above a changelist

  // django.contrib.admin.utils.quote(): how a primary key appears in admin URLs.
  const QUOTED = new Set("\":/_#?;@&=+$,[]<>%\n\\");
  function adminQuote(text) {
    return Array.from(String(text), (c) =>
      QUOTED.has(c) ? "_" + c.charCodeAt(0).toString(16).toUpperCase().padStart(2, "0") : c
    ).join("");
  }
  function adminUnquote(text) {
    return text.replace(/_([0-9A-F]{2})/g, (_, hex) => String.fromCharCode(parseInt(hex, 16)));
  }

  function classValue(prefix) {
    const found = Array.from(document.body.classList).find((c) => c.startsWith(prefix));
    return found ? found.slice(prefix.length) : null;
  }

  function clock() {
    return new Date().toLocaleTimeString();
  }

  function verb(type) {
    return {created: "added", updated: "changed", deleted: "deleted"}[type] || type;
  }

  function connect(channel, handler) {
    const meta = document.querySelector('meta[name="django-broadcast-websocket"]');
    const client = window.DjangoBroadcast.connect(meta ? meta.content : "/broadcast/ws/", {
      onError(frame) {
        if (frame.code === "forbidden") client.close(); // no view permission: nothing to show
      },
    });
    client.subscribe(channel, handler);
    return client;
  }

  // Changelist -------------------------------------------------------------------

  function rowFor(root, pk) {
    const table = root.getElementById("result_list");
    if (!table) return null;
    for (const box of table.querySelectorAll("input.action-select")) {
      if (box.value === pk) return box.closest("tr");
    }
    const tail = `/${adminQuote(pk)}/change/`;
    for (const link of table.querySelectorAll("tbody a[href]")) {
      const path = decodeURIComponent(new URL(link.getAttribute("href"), location.href).pathname);
      if (path.endsWith(tail)) return link.closest("tr");
    }
    return null;
  }

  function pkOf(row) {
    const box = row.querySelector("input.action-select");
    if (box) return box.value;
    const link = row.querySelector("a[href]");
    const match = link && new URL(link.getAttribute("href"), location.href).pathname.match(/\/([^/]+)\/change\/$/);
    return match ? adminUnquote(decodeURIComponent(match[1])) : null;
  }

  function flag(row, kind, text) {
    row.classList.remove("broadcast-changed", "broadcast-new");
    row.classList.add(`broadcast-${kind}`);
    row.querySelectorAll(".broadcast-badge").forEach((badge) => badge.remove());
    const cell = Array.from(row.cells).find((c) => !c.classList.contains("action-checkbox"));
    if (!cell) return;
    const badge = document.createElement("span");
    badge.className = "broadcast-badge";
    badge.textContent = text;
    cell.appendChild(badge);
  }

  function changelist(channel) {
    const main = document.getElementById("changelist") || document.getElementById("content-main");
    const banner = document.createElement("div");
    banner.className = "broadcast-live";
    banner.setAttribute("role", "status");
    banner.setAttribute("aria-live", "polite");
    const title = document.createElement("span");
    title.textContent = "Live: changes made elsewhere show here.";
    const list = document.createElement("ul");
    banner.append(title, list);
    main.parentNode.insertBefore(banner, main);

    const waiting = new Map(); // pk -> event not yet shown in the table
    let timer = null;
    let running = false;

    function note(event) {
      const data = event.data;
      const item = document.createElement("li");
      item.append(`${clock()}: ${data.by || "someone"} ${verb(event.type)} `);
      if (event.type === "deleted") {
        item.append(`“${data.repr}”`);
      } else {
        const link = document.createElement("a");
        link.href = `${location.pathname}${encodeURIComponent(adminQuote(data.pk))}/change/`;
        link.textContent = `“${data.repr}”`;
        item.append(link);
      }
      list.prepend(item);
      while (list.children.length > KEPT) list.lastElementChild.remove();
    }

    function editing() {
      const table = document.getElementById("result_list");
      return !!table && !!table.querySelector("[name^='form-']");
    }

    async function refresh() {
      if (running) return;
      running = true;
      const batch = new Map(waiting);
      waiting.clear();
      try {
        const response = await fetch(location.href, {credentials: "same-origin"});
        if (!response.ok) return;
        const page = new DOMParser().parseFromString(await response.text(), "text/html");
        const fresh = page.getElementById("result_list");
        const table = document.getElementById("result_list");
        if (!fresh || !table) {
          if (fresh) title.textContent = "Live: new objects are in the list: reload to see them.";
          return;
        }
        const keep = editing();
        const count = document.querySelector("#changelist .paginator");
        const freshCount = page.querySelector("#changelist .paginator");
        if (count && freshCount && !keep) count.replaceWith(document.importNode(freshCount, true));
        for (const [pk, event] of batch) {
          const who = event.data.by || "someone";
          const mine = rowFor(document, pk);
          const theirs = rowFor(page, pk);
          if (mine && theirs && !keep && mine.cells.length === theirs.cells.length) {
            Array.from(theirs.cells).forEach((cell, i) => {
              if (!cell.classList.contains("action-checkbox")) {
                mine.cells[i].replaceWith(document.importNode(cell, true));
              }
            });
          }
          if (mine) {
            flag(mine, "changed", `${verb(event.type)} by ${who}`);
          } else if (theirs) {
            const row = document.importNode(theirs, true);
            // Actions cannot see a row added after the page loaded: select it after a reload.
            row.querySelectorAll("td.action-checkbox").forEach((cell) => cell.replaceChildren());
            // After the row that precedes it in the fresh list and is on this page.
            let anchor = null;
            for (let r = theirs.previousElementSibling; r && !anchor; r = r.previousElementSibling) {
              const previous = pkOf(r);
              if (previous !== null) anchor = rowFor(document, previous);
            }
            if (anchor) anchor.after(row);
            else table.tBodies[0].prepend(row);
            flag(row, "new", `${verb(event.type)} by ${who}`);
          }
        }
      } catch (error) {
        for (const [pk, event] of batch) if (!waiting.has(pk)) waiting.set(pk, event);
      } finally {
        running = false;
        if (waiting.size) schedule();
      }
    }

    function schedule() {
      clearTimeout(timer);
      timer = setTimeout(refresh, 250);
    }

    connect(channel, (event) => {
      if (event.type === GAP) {
        title.textContent = "Live: some changes may have been missed while disconnected: reload to be sure.";
        return;
      }
      note(event);
      if (event.type === "deleted") {
        const row = rowFor(document, event.data.pk);
        if (row) flag(row, "deleted", `deleted by ${event.data.by || "someone"}`);
        waiting.delete(event.data.pk);
        return;
      }
      waiting.set(event.data.pk, event);
      schedule();
    });
  }

  // Change form --------------------------------------------------------------------

  function changeform(channel) {
    const match = location.pathname.match(/\/([^/]+)\/change\/$/);
    const form = document.querySelector("#content-main form");
    if (!match || !form) return; // an add form has no object yet
    const pk = adminUnquote(decodeURIComponent(match[1]));
    const editor = Math.random().toString(36).slice(2) + Date.now().toString(36);
    const field = document.createElement("input");
    field.type = "hidden";
    field.name = "_broadcast_editor";
    field.value = editor;
    form.appendChild(field);

    let warning = null;
    connect(channel, (event) => {
      const data = event.data || {};
      if (event.type === GAP || data.pk !== pk || data.editor === editor) return;
      if (!warning) {
        const list = document.createElement("ul");
        list.className = "messagelist broadcast-warning";
        warning = document.createElement("li");
        warning.className = "warning";
        warning.setAttribute("role", "alert");
        list.appendChild(warning);
        const content = document.getElementById("content");
        content.parentNode.insertBefore(list, content);
      }
      const who = data.by || "Someone";
      warning.textContent =
        event.type === "deleted"
          ? `${who} deleted this object at ${clock()}: saving will fail or create it again.`
          : `${who} saved this object at ${clock()}: reload to see their changes (yours are not saved yet).`;
    });
  }

  function start() {
    const app = classValue("app-");
    const model = classValue("model-");
    if (!app || !model || !window.DjangoBroadcast) return;
    const channel = `broadcast.admin.${app}.${model}`;
    if (document.body.classList.contains("change-list")) changelist(channel);
    else if (document.body.classList.contains("change-form")) changeform(channel);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
