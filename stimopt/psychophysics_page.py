"""The psychophysics page (stimopt-psychophysics build): intro, prior images, 100 two-choice
trials with green/red feedback, then the result file. One Jinja2 template; the experiment's plan
is embedded as JSON so the page works from disk (file://) as well as from the collection server.
URL options: ``?condition=both|preferred|anti|none`` overrides the built condition,
``?participant=ID`` fills the name field, ``?feedback_ms=N`` sets how long feedback stays."""

PAGE = r"""{% extends "base.html" %}
{% block title %}Which image does the neuron prefer?{% endblock %}
{% block body %}
<style>
.screen { display: none; } .screen.on { display: block; }
.pair { display: flex; gap: 3em; justify-content: center; margin: 2em 0; }
.choice { border: 6px solid transparent; padding: 0; background: none; cursor: pointer; }
.choice img { width: 224px; height: 224px; image-rendering: pixelated; display: block; }
.choice.correct { border-color: #2ca02c; } .choice.wrong { border-color: #d62728; }
.prior figure img { width: 96px; height: 96px; }
button.big { font-size: 1.1em; padding: .5em 1.5em; }
</style>
<h1>Which image does the neuron prefer?</h1>

<div class="screen on" id="intro">
<p>A neuron responds strongly to some images and weakly to others. In each of the {{ n_trials }} trials you see two
images: click the one you think the neuron responds to <b>more</b>. After each choice the right image is
framed in green (and yours in red if it was the other one), so you can learn as you go.</p>
<p id="intro-prior"></p>
<p><label>Participant: <input id="participant" value="anonymous"></label></p>
<p><button class="big" id="start">Start</button></p>
</div>

<div class="screen" id="prior">
<p>Study these images first. You can take as long as you like.</p>
<div id="prior-preferred"><h2>Preferred: the neuron responds strongly</h2><div class="grid prior" id="preferred"></div></div>
<div id="prior-anti"><h2>Anti-preferred: the neuron responds weakly</h2><div class="grid prior" id="anti"></div></div>
<p><button class="big" id="continue">Begin the trials</button></p>
</div>

<div class="screen" id="trials">
<p>Trial <span id="trial-number">1</span> of {{ n_trials }} &middot; <span id="score">0</span> correct</p>
<div class="pair"><button class="choice" id="left"><img alt="left image"></button>
<button class="choice" id="right"><img alt="right image"></button></div>
</div>

<div class="screen" id="done">
<h2>Done</h2>
<p>You chose the neuron's preferred image in <b id="final-correct"></b> of {{ n_trials }} trials
(<span id="final-percent"></span>%).</p>
<p><button class="big" id="download">Download the result file</button> <span id="posted"></span></p>
</div>

<script>
var EXPERIMENT = {{ experiment_json | safe }};
(function () {
  var q = new URLSearchParams(location.search), E = EXPERIMENT;
  var condition = q.get("condition") || E.condition;
  if (E.conditions.indexOf(condition) < 0) { condition = E.condition; }
  var feedbackMs = parseInt(q.get("feedback_ms") || "700", 10);
  if (q.get("participant")) { document.getElementById("participant").value = q.get("participant"); }
  var showPref = condition === "both" || condition === "preferred", showAnti = condition === "both" || condition === "anti";
  document.getElementById("intro-prior").textContent = (showPref || showAnti)
    ? "Before the trials you will see example images the neuron responds to strongly and/or weakly."
    : "There are no example images in this version: learn from the feedback.";
  var result = {stimopt_psychophysics: 1, source: E.source, kind: E.kind, seed: E.seed, condition: condition,
                bin_edges: E.bin_edges, band: E.band, user_agent: navigator.userAgent, trials: []};
  window.stimoptResults = result;
  function show(id) {
    document.querySelectorAll(".screen").forEach(function (s) { s.classList.toggle("on", s.id === id); });
  }
  function figures(el, items) {
    el.innerHTML = items.map(function (x) { return '<figure><img src="' + x.image + '" alt="image ' + x.id + '"></figure>'; }).join("");
  }
  var t = 0, correct = 0, shownAt = 0, busy = false;
  function next() {
    if (t >= E.trials.length) { return finish(); }
    var tr = E.trials[t];
    ["left", "right"].forEach(function (side) {
      var b = document.getElementById(side); b.className = "choice"; b.querySelector("img").src = tr[side].image;
    });
    document.getElementById("trial-number").textContent = t + 1;
    busy = false;
    requestAnimationFrame(function () { shownAt = performance.now(); });
  }
  function choose(side) {
    if (busy) { return; }
    busy = true;
    var tr = E.trials[t], rt = performance.now() - shownAt, other = side === "left" ? "right" : "left";
    var right = tr[side].response >= tr[other].response;
    var better = tr.left.response >= tr.right.response ? "left" : "right";
    document.getElementById(better).classList.add("correct");
    if (!right) { document.getElementById(side).classList.add("wrong"); }
    correct += right ? 1 : 0;
    document.getElementById("score").textContent = correct;
    result.trials.push({trial: tr.trial, bin: tr.bin, left: tr.left.id, right: tr.right.id,
      left_response: tr.left.response, right_response: tr.right.response, choice: side,
      chosen: tr[side].id, correct: right, rt_ms: Math.round(rt * 10) / 10});
    t += 1;
    setTimeout(next, feedbackMs);
  }
  function finish() {
    result.finished = new Date().toISOString();
    result.n_correct = correct;
    document.getElementById("final-correct").textContent = correct;
    document.getElementById("final-percent").textContent = (100 * correct / E.trials.length).toFixed(1);
    show("done");
    if (location.protocol.indexOf("http") === 0) {
      fetch("results", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(result)})
        .then(function (r) { return r.json(); })
        .then(function (a) { document.getElementById("posted").textContent = "saved on the server as " + a.saved; window.stimoptPosted = a.saved; })
        .catch(function () { document.getElementById("posted").textContent = "(not saved on a server: download the file)"; });
    }
  }
  document.getElementById("start").addEventListener("click", function () {
    result.participant = document.getElementById("participant").value || "anonymous";
    result.started = new Date().toISOString();
    figures(document.getElementById("preferred"), E.preferred);
    figures(document.getElementById("anti"), E.anti);
    document.getElementById("prior-preferred").style.display = showPref ? "" : "none";
    document.getElementById("prior-anti").style.display = showAnti ? "" : "none";
    if (showPref || showAnti) { show("prior"); } else { show("trials"); next(); }
  });
  document.getElementById("continue").addEventListener("click", function () { show("trials"); next(); });
  document.getElementById("left").addEventListener("click", function () { choose("left"); });
  document.getElementById("right").addEventListener("click", function () { choose("right"); });
  document.getElementById("download").addEventListener("click", function () {
    var a = document.createElement("a"), name = "psychophysics-" + result.participant.replace(/[^A-Za-z0-9_-]/g, "_") + "-" + condition + ".json";
    a.href = URL.createObjectURL(new Blob([JSON.stringify(result, null, 1)], {type: "application/json"}));
    a.download = name; a.id = "download-link"; document.body.appendChild(a); a.click();
  });
})();
</script>
{% endblock %}
"""
