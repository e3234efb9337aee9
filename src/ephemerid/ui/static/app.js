// ephemerid dashboard: confirmations, the live parts (polled JSON or HTML), and the charts.
// Plain browser JavaScript, no build step; charts are uPlot (static/vendor/).
(function () {
  "use strict";
  var POLL_MS = 2000;
  var keep = document.body.dataset.keep || "";

  function withKeep(url) {
    if (!keep) return url;
    return url + (url.indexOf("?") < 0 ? "?" : "&") + keep;
  }

  function readJson(id) {
    var el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  }

  function fmtSeconds(v) {
    if (v === null || v === undefined) return "-";
    if (v < 120) return v.toFixed(1) + "s";
    if (v < 7200) return (v / 60).toFixed(1) + "m";
    return (v / 3600).toFixed(1) + "h";
  }

  function fmtUsd(v) {
    if (v === null || v === undefined) return "-";
    return v < 1 ? "$" + v.toFixed(4) : "$" + v.toFixed(2);
  }

  // -- confirmations: a form with data-confirm asks first --------------------------------------
  document.querySelectorAll("form.confirm").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });

  // -- charts ----------------------------------------------------------------------------------
  function chartWidth(el) {
    return Math.max(Math.min(el.clientWidth || 480, 640), 280);
  }

  function lineChart(el, title, xLabel, yLabel, points, scatter) {
    var opts = {
      title: title,
      width: chartWidth(el),
      height: 220,
      scales: { x: { time: false } },
      axes: [{ label: xLabel }, { label: yLabel }],
      series: [
        { label: xLabel },
        scatter
          ? { label: yLabel, stroke: "#1f6feb", paths: function () { return null; },
              points: { show: true, size: 7, fill: "#1f6feb" } }
          : { label: yLabel, stroke: "#1f6feb", width: 2, points: { show: true, size: 4 } },
      ],
    };
    var chart = new uPlot(opts, toColumns(points), el);
    el.chart = chart;
    return chart;
  }

  function toColumns(points) {
    var xs = [], ys = [];
    points.forEach(function (p, i) {
      xs.push(p[0] === null ? i : p[0]);
      ys.push(p[1]);
    });
    return [xs, ys];
  }

  // the cost page: each day's spend, and the persistent machine's cost that day when asked
  function dailyChart(el, days) {
    var xs = days.map(function (d) { return Date.parse(d.date + "T00:00:00Z") / 1000; });
    var series = [{ label: "day" },
      { label: "spend", stroke: "#1f6feb", fill: "rgba(31,111,235,0.12)", width: 2,
        value: function (u, v) { return fmtUsd(v); }, points: { show: true, size: 5 } }];
    var data = [xs, days.map(function (d) { return d.cost_usd; })];
    if (days[0].persistent_usd !== undefined) {
      series.push({ label: "always on", stroke: "#cf222e", width: 2, dash: [6, 4],
        value: function (u, v) { return fmtUsd(v); }, points: { show: false } });
      data.push(days.map(function (d) { return d.persistent_usd; }));
    }
    var opts = {
      width: Math.max(Math.min(el.clientWidth || 720, 960), 280),
      height: 260,
      scales: { x: { time: true }, y: { range: function (u, lo, hi) { return [0, Math.max(hi, 0.01) * 1.1]; } } },
      axes: [{}, { label: el.dataset.y, size: 70 }],
      series: series,
    };
    el.chart = new uPlot(opts, data, el);
    return el.chart;
  }

  document.querySelectorAll("[data-chart]").forEach(function (el) {
    var points = readJson(el.dataset.points) || [];
    if (!points.length) {
      el.textContent = "No values yet.";
      el.classList.add("empty");
      return;
    }
    if (el.dataset.chart === "daily") {
      dailyChart(el, points);
      return;
    }
    lineChart(el, "", el.dataset.x, el.dataset.y, points, el.dataset.chart === "scatter");
  });

  // -- a job's metric curves, kept up to date by the job page's poll ----------------------------
  var metricCharts = {};
  function drawMetrics(history) {
    var box = document.getElementById("charts");
    if (!box) return;
    Object.keys(history).sort().forEach(function (name) {
      var points = history[name];
      if (!metricCharts[name]) {
        var fig = document.createElement("figure");
        var cap = document.createElement("figcaption");
        cap.textContent = name;
        var el = document.createElement("div");
        el.className = "chart metric";
        el.dataset.metric = name;
        fig.appendChild(cap);
        fig.appendChild(el);
        box.appendChild(fig);
        metricCharts[name] = lineChart(el, "", "step", name, points, false);
        var none = document.getElementById("no-metrics");
        if (none) none.remove();
      } else {
        metricCharts[name].setData(toColumns(points));
      }
      metricCharts[name].root.parentNode.dataset.points = String(points.length);
    });
  }

  var job = document.getElementById("job");
  if (job) {
    drawMetrics(readJson("metrics-data") || {});
    var offset = parseInt(job.dataset.offset, 10) || 0;
    var log = document.getElementById("log");
    var settled = job.dataset.settled === "true";
    var pollJob = function () {
      fetch(withKeep(job.dataset.live + "?offset=" + offset), { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
        .then(function (d) {
          if (d.log) {
            var atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
            log.textContent += d.log;
            if (atEnd) log.scrollTop = log.scrollHeight;
          }
          offset = d.next_offset;
          var state = document.getElementById("state");
          state.textContent = d.state;
          state.className = "state-" + d.state.toLowerCase();
          document.getElementById("compute-state").textContent = d.compute_state;
          document.getElementById("reason").textContent = d.reason || "-";
          document.getElementById("runtime").textContent = fmtSeconds(d.runtime_s);
          document.getElementById("held").textContent = fmtSeconds(d.held_s);
          document.getElementById("idle").textContent = fmtSeconds(d.idle_s);
          document.getElementById("cost").textContent = fmtUsd(d.cost_usd);
          drawMetrics(d.metrics);
          job.dataset.settled = String(d.settled);
          if (!d.settled) window.setTimeout(pollJob, POLL_MS);
        })
        .catch(function () { window.setTimeout(pollJob, POLL_MS * 3); });
    };
    if (!settled) window.setTimeout(pollJob, POLL_MS);
  }

  // -- an HTML fragment refreshed in place (the jobs table) --------------------------------------
  document.querySelectorAll("[data-poll]").forEach(function (el) {
    var refresh = function () {
      fetch(withKeep(el.dataset.poll), { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
        .then(function (html) {
          el.innerHTML = html;
          window.setTimeout(refresh, POLL_MS);
        })
        .catch(function () { window.setTimeout(refresh, POLL_MS * 3); });
    };
    window.setTimeout(refresh, POLL_MS);
  });
})();
