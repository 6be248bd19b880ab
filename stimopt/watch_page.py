"""The live page that ``stimopt-watch`` serves: a Jinja2 template with a small inline script that
polls ``state.json`` and draws the charts as inline SVG (no library, no network)."""

PAGE = r"""{% extends "base.html" %}
{% block title %}stimopt live: {{ name }}{% endblock %}
{% block body %}
<h1>stimopt live <code>{{ name }}</code></h1>
<p class="sub"><span id="status">connecting&hellip;</span> &middot; <span id="freshness"></span>
<span id="message" class="warn"></span></p>
<table id="numbers"><tr><th>evaluations</th><th>budget</th><th>best response</th><th>evaluations to best</th>
<th>generations</th><th>missing trials</th><th>direction</th></tr>
<tr><td class="num" id="n_evaluations">&ndash;</td><td class="num" id="budget">&ndash;</td>
<td class="num" id="best_response">&ndash;</td><td class="num" id="evaluations_to_best">&ndash;</td>
<td class="num" id="n_generations">&ndash;</td><td class="num" id="n_missing">&ndash;</td><td id="direction">&ndash;</td></tr></table>

<h2>Current best stimuli</h2>
<div class="grid" id="best"></div><p class="muted" id="images-note"></p>
<div class="grid">
<div><h2>Trajectory</h2><div id="trajectory" class="chart"></div></div>
<div><h2>Missing trials per generation</h2><div id="missing" class="chart"></div></div>
<div><h2>Time per generation (s)</h2><div id="timing" class="chart"></div></div>
</div>

<script>
(function () {
  var INTERVAL = {{ interval_ms }};
  function fmt(x) {
    if (x === null || x === undefined) { return "\u2013"; }
    if (typeof x !== "number") { return String(x); }
    return Number.isInteger(x) ? String(x) : String(Number(x.toPrecision(6)));
  }
  function esc(s) { return String(s).replace(/[&<>"]/g, function (c) { return "&#" + c.charCodeAt(0) + ";"; }); }
  function chart(id, xs, series, xlabel, bars) {
    var W = 440, H = 200, L = 56, R = 12, T = 10, B = 34, el = document.getElementById(id);
    var ys = [];
    series.forEach(function (s) { s.ys.forEach(function (y) { if (y !== null && isFinite(y)) { ys.push(y); } }); });
    if (!xs.length || !ys.length) { el.innerHTML = '<p class="muted">no generation committed yet</p>'; return; }
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
    var y0 = Math.min.apply(null, ys.concat(bars ? [0] : [])), y1 = Math.max.apply(null, ys);
    if (bars) { x0 -= 0.5; x1 += 0.5; }
    if (x1 === x0) { x0 -= 1; x1 += 1; } if (y1 === y0) { y0 -= 1; y1 += 1; }
    function X(x) { return L + (x - x0) / (x1 - x0) * (W - L - R); }
    function Y(y) { return H - B - (y - y0) / (y1 - y0) * (H - T - B); }
    var out = ['<svg xmlns="http://www.w3.org/2000/svg" width="' + W + '" height="' + H + '" style="background:#fff;border:1px solid #ddd">'];
    var xticks = {};
    for (var i = 0; i <= 4; i++) {
      var yv = y0 + (y1 - y0) * i / 4, xv = x0 + (x1 - x0) * i / 4;
      out.push('<line x1="' + L + '" x2="' + (W - R) + '" y1="' + Y(yv) + '" y2="' + Y(yv) + '" stroke="#eee"/>');
      out.push('<text x="' + (L - 4) + '" y="' + (Y(yv) + 4) + '" font-size="10" text-anchor="end">' + fmt(Number(yv.toPrecision(3))) + '</text>');
      var xr = Math.round(xv);
      if (!(xr in xticks) && xr >= x0 && xr <= x1) {
        xticks[xr] = 1;
        out.push('<text x="' + X(xr) + '" y="' + (H - B + 14) + '" font-size="10" text-anchor="middle">' + fmt(xr) + '</text>');
      }
    }
    out.push('<text x="' + ((L + W - R) / 2) + '" y="' + (H - 4) + '" font-size="11" text-anchor="middle">' + xlabel + '</text>');
    series.forEach(function (s, k) {
      if (bars) {
        var w = Math.max(1, (W - L - R) / Math.max(xs.length, 1) * 0.8);
        xs.forEach(function (x, j) { var y = s.ys[j] || 0; out.push('<rect x="' + (X(x) - w / 2) + '" y="' + Y(y) + '" width="' + w + '" height="' + (Y(0) - Y(y)) + '" fill="' + s.color + '"/>'); });
      } else {
        var d = "", pen = "M";
        xs.forEach(function (x, j) { var y = s.ys[j]; if (y === null || !isFinite(y)) { pen = "M"; return; } d += pen + X(x).toFixed(1) + " " + Y(y).toFixed(1) + " "; pen = "L"; });
        out.push('<path d="' + d + '" fill="none" stroke="' + s.color + '" stroke-width="' + (k ? 1.2 : 2) + '" opacity="' + (k ? 0.6 : 1) + '"/>');
      }
      out.push('<text x="' + (L + 8) + '" y="' + (T + 12 + 13 * k) + '" font-size="11" fill="' + s.color + '">' + esc(s.name) + '</text>');
    });
    out.push("</svg>");
    el.innerHTML = out.join("");
  }
  var shownBest = "";
  function draw(s) {
    document.getElementById("status").textContent = "run " + s.status;
    document.getElementById("message").textContent = s.message || "";
    ["n_evaluations", "budget", "best_response", "evaluations_to_best", "n_generations", "n_missing", "direction"].forEach(function (k) {
      if (k in s) { var el = document.getElementById(k); el.textContent = fmt(s[k]); el.setAttribute("data-value", s[k] === null ? "" : s[k]); }
    });
    if (s.seconds_since_write !== undefined) {
      document.getElementById("freshness").textContent = "last write " + fmt(s.seconds_since_write) + " s ago";
    }
    if (!s.generations) { return; }
    var key = JSON.stringify(s.best.map(function (b) { return b.src + b.response; }));
    if (key !== shownBest) {
      shownBest = key;
      document.getElementById("best").innerHTML = s.best.map(function (b) {
        return '<figure data-id="' + b.id + '">' + (b.src ? '<img src="' + b.src + '" alt="stimulus ' + b.id + '">' : "") +
          '<figcaption><span class="response">' + fmt(b.response) + '</span><br><span class="muted">gen ' + b.generation + "</span></figcaption></figure>";
      }).join("");
    }
    document.getElementById("images-note").textContent = s.images_note || "";
    var g = s.generations, n = g.map(function (r) { return r.n_evaluations; }), gen = g.map(function (r) { return r.generation; });
    function col(k) { return g.map(function (r) { return r[k]; }); }
    chart("trajectory", n, [{name: "best so far", ys: col("best_so_far"), color: "#1f77b4"},
      {name: "generation best", ys: col("best_response"), color: "#ff7f0e"},
      {name: "generation mean", ys: col("mean_response"), color: "#2ca02c"}], "evaluations");
    chart("missing", gen, [{name: "missing trials", ys: col("n_missing"), color: "#d62728"}], "generation", true);
    chart("timing", gen, [{name: "seconds", ys: col("wall_s"), color: "#9467bd"}], "generation");
  }
  function poll() {
    fetch("state.json", {cache: "no-store"}).then(function (r) { return r.json(); }).then(function (s) {
      window.stimoptState = s; draw(s);
    }).catch(function (e) {
      document.getElementById("message").textContent = "the watch server does not answer (" + e + "); retrying";
    }).finally(function () { setTimeout(poll, INTERVAL); });
  }
  poll();
})();
</script>
{% endblock %}
"""
