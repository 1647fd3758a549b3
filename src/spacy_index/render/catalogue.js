/* spacy-index catalogue: the index URL from the page's own location, copy buttons, and the
   pipeline filters. Plain JavaScript, no framework; the pages work without it. */
(function () {
  "use strict";
  var doc = document;

  function each(selector, fn) {
    Array.prototype.forEach.call(doc.querySelectorAll(selector), fn);
  }

  /* The index's own URL, wherever the folder is hosted (any prefix, file:// too). */
  var rootMeta = doc.querySelector('meta[name="spacy-index:root"]');
  var root = new URL(rootMeta ? rootMeta.getAttribute("content") : "", location.href);
  var simple = new URL("simple/", root).href;
  each(".index-url:not([data-fixed])", function (el) { el.textContent = simple; });

  /* Copy buttons. */
  var status = doc.createElement("p");
  status.className = "visually-hidden";
  status.setAttribute("role", "status");
  doc.body.appendChild(status);

  function copied(button) {
    var label = button.querySelector(".label") || button;
    label.textContent = "Copied";
    button.setAttribute("data-copied", "true");
    status.textContent = "Copied to the clipboard";
    window.setTimeout(function () {
      label.textContent = "Copy";
      button.removeAttribute("data-copied");
    }, 2000);
  }

  function fallbackCopy(node, button) {
    var range = doc.createRange();
    range.selectNodeContents(node);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    var ok = false;
    try { ok = doc.execCommand("copy"); } catch (e) { ok = false; }
    if (ok) { copied(button); } else { status.textContent = "Selected: press Ctrl+C to copy"; }
  }

  each("button.copy", function (button) {
    button.hidden = false;
    button.addEventListener("click", function () {
      var node = doc.getElementById(button.getAttribute("data-copy"));
      if (!node) { return; }
      var text = node.textContent;
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(function () { copied(button); },
          function () { fallbackCopy(node, button); });
      } else {
        fallbackCopy(node, button);
      }
    });
  });

  /* Filters of the pipeline table. */
  var table = doc.getElementById("pipelines");
  var filters = doc.getElementById("filters");
  if (!table || !filters) { return; }
  var q = doc.getElementById("q");
  var lang = doc.getElementById("lang");
  var spacy = doc.getElementById("spacy");
  var count = doc.getElementById("count");
  var none = doc.getElementById("none");
  var rows = Array.prototype.map.call(table.tBodies[0].rows, function (row) {
    var abbr = row.querySelector("abbr");
    var picks = {};
    (row.getAttribute("data-pick") || "").split(" ").forEach(function (pair) {
      var at = pair.indexOf("=");
      if (at > 0) { picks[pair.slice(0, at)] = pair.slice(at + 1); }
    });
    var cell = row.querySelector("td.v");
    var pick = doc.createElement("span");
    pick.className = "pick";
    pick.hidden = true;
    cell.appendChild(pick);
    return {
      row: row,
      text: (row.textContent + " " + (abbr ? abbr.title : "")).toLowerCase(),
      lang: row.getAttribute("data-lang"),
      spacy: " " + (row.getAttribute("data-spacy") || "") + " ",
      picks: picks,
      newest: cell.querySelector(".newest"),
      pick: pick
    };
  });
  filters.hidden = false;

  function readHash() {
    var params = new URLSearchParams(location.hash.slice(1));
    q.value = params.get("q") || "";
    if (params.get("lang") !== null) { lang.value = params.get("lang"); }
    if (params.get("spacy") !== null) { spacy.value = params.get("spacy"); }
  }

  function writeHash() {
    var params = new URLSearchParams();
    if (q.value) { params.set("q", q.value); }
    if (lang.value) { params.set("lang", lang.value); }
    if (spacy.value) { params.set("spacy", spacy.value); }
    var hash = params.toString();
    try {
      history.replaceState(null, "", hash ? "#" + hash : location.pathname + location.search);
    } catch (e) { /* some hosts refuse; the filters still work */ }
  }

  function apply() {
    var terms = q.value.toLowerCase().split(/\s+/).filter(Boolean);
    var wantLang = lang.value;
    var wantSpacy = spacy.value;
    var shown = 0;
    rows.forEach(function (r) {
      var ok = (!wantLang || r.lang === wantLang) &&
        (!wantSpacy || r.spacy.indexOf(" " + wantSpacy + " ") >= 0) &&
        terms.every(function (t) { return r.text.indexOf(t) >= 0; });
      r.row.hidden = !ok;
      if (ok) { shown += 1; }
      var picked = wantSpacy && r.picks[wantSpacy];
      r.pick.hidden = !picked;
      r.newest.hidden = !!picked;
      r.pick.textContent = picked ? picked + " for spaCy " + wantSpacy : "";
    });
    count.textContent = shown === rows.length
      ? rows.length + " pipelines"
      : shown + " of " + rows.length + " pipelines";
    none.hidden = shown !== 0;
  }

  function changed() { apply(); writeHash(); }
  q.addEventListener("input", changed);
  lang.addEventListener("change", changed);
  spacy.addEventListener("change", changed);
  window.addEventListener("hashchange", function () { readHash(); apply(); });
  readHash();
  apply();
}());
