/**
 * The live dashboard of django_broadcast's real-time admin.
 *
 * Every server process publishes a heartbeat on the reserved channel
 * "broadcast.servers" (django_broadcast.presence); staff may read it. This script
 * keeps the latest heartbeat of each process heard within three of its intervals,
 * adds them up into the deployment's figures (requests per second and response-time
 * percentiles from the processes' histograms, events per second, connections,
 * busiest channels), and draws them, with two moving charts in plain SVG.
 */
(function () {
  "use strict";

  const config = JSON.parse(document.getElementById("broadcast-dashboard-config").textContent);
  const HISTORY = 60; // points per chart
  const WINDOW = 60000; // ms of request histograms the percentiles are taken over
  const servers = new Map(); // id -> {beat, seen (ms), histograms: [{at, buckets}]}
  const series = {requests: [], published: [], delivered: []};
  let connected = false;
  let refused = null;
  const opened = Date.now();

  const $ = (id) => document.getElementById(id);

  function fmt(value, digits) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    return Number(value).toLocaleString(undefined, {maximumFractionDigits: digits ?? 1});
  }

  function duration(seconds) {
    if (seconds < 60) return `${Math.round(seconds)} s`;
    if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
    if (seconds < 86400) return `${(seconds / 3600).toFixed(1)} h`;
    return `${(seconds / 86400).toFixed(1)} d`;
  }

  function alive(entry, now) {
    const interval = (entry.beat.interval || config.interval) * 1000;
    return now - entry.seen <= 3 * interval;
  }

  function heard(beat, seenMs) {
    const histograms = (servers.get(beat.id) || {histograms: []}).histograms
      .filter((h) => seenMs - h.at < WINDOW);
    if (beat.requests) histograms.push({at: seenMs, buckets: beat.requests.buckets});
    servers.set(beat.id, {beat, seen: seenMs, histograms});
  }

  // The servers the page was rendered with (read from history), as old as they are.
  for (const beat of config.servers || []) {
    heard(beat, beat.seen ? beat.seen * 1000 : Date.now());
  }

  /** The p-th percentile (0..1) of a histogram, interpolated within its bucket. */
  function percentile(buckets, bounds, q) {
    const total = buckets.reduce((a, b) => a + b, 0);
    if (!total) return null;
    const rank = q * total;
    let below = 0;
    for (let i = 0; i < buckets.length; i++) {
      if (below + buckets[i] >= rank && buckets[i] > 0) {
        if (i >= bounds.length) return {over: bounds[bounds.length - 1]};
        const lower = i === 0 ? 0 : bounds[i - 1];
        return {ms: lower + (bounds[i] - lower) * ((rank - below) / buckets[i])};
      }
      below += buckets[i];
    }
    return null;
  }

  function showPercentile(p) {
    if (p === null) return "–";
    if (p.over !== undefined) return `> ${fmt(p.over, 0)} ms`;
    return `${fmt(p.ms, p.ms < 10 ? 1 : 0)} ms`;
  }

  function totals() {
    const now = Date.now();
    const sum = {
      servers: 0, requests: 0, counted: false, published: 0, delivered: 0,
      websocket: 0, sse: 0, dropped: 0, gaps: 0, reconnects: 0,
      buckets: null, bounds: null, channels: new Map(),
    };
    for (const [id, entry] of servers) {
      if (!alive(entry, now)) {
        servers.delete(id);
        continue;
      }
      const beat = entry.beat;
      sum.servers += 1;
      const rates = beat.events_per_second || {};
      sum.published += rates.published || 0;
      sum.delivered += rates.delivered || 0;
      const conns = beat.connections || {};
      sum.websocket += conns.websocket || 0;
      sum.sse += conns.sse || 0;
      sum.dropped += beat.dropped || 0;
      sum.gaps += beat.gaps || 0;
      sum.reconnects += beat.reconnects || 0;
      for (const [name, count] of beat.channels || []) {
        sum.channels.set(name, (sum.channels.get(name) || 0) + count);
      }
      if (beat.requests) {
        sum.counted = true;
        sum.requests += beat.requests.per_second || 0;
        sum.bounds = beat.requests.bounds_ms;
        sum.buckets = sum.buckets || beat.requests.buckets.map(() => 0);
        for (const histogram of entry.histograms) {
          if (now - histogram.at < WINDOW) histogram.buckets.forEach((n, i) => { sum.buckets[i] += n; });
        }
      }
    }
    return sum;
  }

  function cell(row, text) {
    const td = document.createElement("td");
    td.textContent = text;
    row.appendChild(td);
  }

  function fillTable(id, rows, empty, columns) {
    const body = $(id).tBodies[0];
    body.replaceChildren();
    if (!rows.length) {
      const tr = body.insertRow();
      tr.className = "bd-empty";
      const td = document.createElement("td");
      td.colSpan = columns;
      td.textContent = empty;
      tr.appendChild(td);
      return;
    }
    for (const values of rows) {
      const tr = body.insertRow();
      for (const value of values) cell(tr, value);
    }
  }

  function render() {
    const sum = totals();
    $("bd-servers").textContent = fmt(sum.servers, 0);
    $("bd-published").textContent = fmt(sum.published);
    $("bd-delivered").textContent = fmt(sum.delivered);
    $("bd-connections").textContent = fmt(sum.websocket + sum.sse, 0);
    $("bd-connections-sub").textContent = `${fmt(sum.websocket, 0)} WebSocket · ${fmt(sum.sse, 0)} SSE`;
    $("bd-trouble").textContent = `${fmt(sum.dropped, 0)} · ${fmt(sum.gaps, 0)} · ${fmt(sum.reconnects, 0)}`;
    if (sum.counted) {
      $("bd-requests").textContent = fmt(sum.requests);
      const p = (q) => showPercentile(percentile(sum.buckets, sum.bounds, q));
      $("bd-latency").textContent = `last minute: p50 ${p(0.5)} · p90 ${p(0.9)} · p99 ${p(0.99)}`;
    }

    const rows = [...servers.values()]
      .map((entry) => entry.beat)
      .sort((a, b) => (a.host + a.pid).localeCompare(b.host + b.pid))
      .map((beat) => {
        const conns = beat.connections || {};
        const rates = beat.events_per_second || {};
        return [
          `${beat.host}:${beat.pid}`,
          beat.server,
          duration(beat.uptime || 0),
          beat.requests ? fmt(beat.requests.per_second) : "–",
          `${fmt(conns.websocket || 0, 0)} ws · ${fmt(conns.sse || 0, 0)} sse`,
          fmt(beat.subscribers, 0),
          fmt(beat.broker_subscriptions, 0),
          fmt(rates.published),
          fmt(rates.delivered),
          fmt(beat.dropped, 0),
          fmt(beat.gaps, 0),
          fmt(beat.reconnects, 0),
        ];
      });
    fillTable("bd-server-table", rows, "No server heard from yet.", 12);

    const channels = [...sum.channels.entries()]
      .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
      .slice(0, 10)
      .map(([name, count]) => [name, fmt(count, 0)]);
    fillTable("bd-channel-table", channels, "No subscribers yet.", 2);

    renderStatus(sum);
    return sum;
  }

  function renderStatus(sum) {
    const status = $("bd-status");
    let text;
    if (refused) {
      text = `Refused: ${refused}`;
    } else if (!connected) {
      text = "Reconnecting…";
    } else if (!sum.servers && Date.now() - opened > 3 * config.interval * 1000) {
      text = "No server heard from: do the server processes serve django_broadcast.routing's application?";
    } else if (!sum.servers) {
      text = "Live: waiting for the first heartbeat…";
    } else {
      text = `Live: ${sum.servers} server process${sum.servers === 1 ? "" : "es"}`;
    }
    status.textContent = text;
    status.dataset.state = refused ? "refused" : connected ? "live" : "reconnecting";
  }

  function push(name, value) {
    const points = series[name];
    points.push(value);
    if (points.length > HISTORY) points.shift();
  }

  function niceCeiling(value) {
    if (value <= 1) return 1;
    const power = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 2.5, 5, 10]) {
      if (value <= step * power) return step * power;
    }
    return 10 * power;
  }

  const SVG = "http://www.w3.org/2000/svg";

  function drawChart(svg, lines) {
    const width = 600;
    const height = 160;
    const top = 8;
    const bottom = 4;
    const max = niceCeiling(Math.max(0, ...lines.flat()));
    svg.replaceChildren();
    for (const fraction of [0, 0.5, 1]) {
      const y = top + (height - top - bottom) * (1 - fraction);
      const grid = document.createElementNS(SVG, "line");
      grid.setAttribute("x1", "0");
      grid.setAttribute("x2", String(width));
      grid.setAttribute("y1", String(y));
      grid.setAttribute("y2", String(y));
      grid.setAttribute("class", "bd-grid");
      svg.appendChild(grid);
      const label = document.createElementNS(SVG, "text");
      label.setAttribute("x", "4");
      label.setAttribute("y", String(Math.max(y - 3, 10)));
      label.setAttribute("class", "bd-axis");
      label.textContent = fmt(max * fraction);
      svg.appendChild(label);
    }
    lines.forEach((points, index) => {
      if (!points.length) return;
      const step = width / (HISTORY - 1);
      const offset = HISTORY - points.length;
      const coords = points.map((value, i) => {
        const x = (offset + i) * step;
        const y = top + (height - top - bottom) * (1 - value / max);
        return `${x.toFixed(1)},${y.toFixed(1)}`;
      });
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("points", coords.join(" "));
      line.setAttribute("class", `bd-line bd-s${index}`);
      line.setAttribute("vector-effect", "non-scaling-stroke");
      svg.appendChild(line);
    });
    svg.dataset.points = String(lines[0].length);
  }

  function sample() {
    const sum = render();
    push("requests", sum.requests);
    push("published", sum.published);
    push("delivered", sum.delivered);
    drawChart($("bd-chart-requests"), [series.requests]);
    drawChart($("bd-chart-events"), [series.published, series.delivered]);
  }

  const client = DjangoBroadcast.connect(config.url, {
    onOpen() { connected = true; refused = null; render(); },
    onClose() { connected = false; render(); },
    onError(frame) {
      if (frame.code !== "forbidden") return; // "unavailable": the client retries
      refused = frame.message;
      render();
    },
  });
  client.subscribe(config.channel, (event) => {
    if (event.type === "broadcast.heartbeat") heard(event.data, Date.now());
    else if (event.type === "broadcast.goodbye") servers.delete(event.data.id);
    else return;
    render();
  });

  // Charts move once per heartbeat interval (at most once a second).
  sample();
  setInterval(sample, Math.max(1, config.interval) * 1000);
  setInterval(render, 1000);
})();
