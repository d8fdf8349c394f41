"""``index.html``: the results of ``protonet infer`` as one page a person can browse.

The page is plain HTML with inline CSS and JavaScript (no frameworks, no
network): a sortable table of every input (case, image, slice, Dice,
predicted area in pixels and mm²), a colour legend, the contact sheet, and
a viewer that opens on a click (a row or a contact-sheet tile). The viewer
draws three layers on a canvas: the windowed image, the prediction (red
fill, red contour) and the truth (green contour), with a toggle for each
mask, an opacity slider and zoom; arrow keys step through the table's order.

**Embedding.** While the pictures fit in ``embed_bytes`` (base64 counted),
every picture is embedded as a ``data:`` URI: index.html is then the whole
report and can be mailed. Past that budget nothing more is held in memory:
the layers go to ``OUT/report/<name>_{image,pred,true}.png`` and the page
references them (and ``contact_sheet.png``) by relative paths, so it works
when opened from disk together with its folder.
"""
import base64
import io
import json
import os

import numpy as np

from . import viz

LAYER_DIR = "report"
PRED_FILL_ALPHA = 0.35   # as viz.overlay's tint: at full opacity the viewer matches _overlay.png


def _png_bytes(array, mode):
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array), mode).save(buf, "PNG")
    return buf.getvalue()


def mask_layer(mask, fill=None, fill_alpha=0.0, contour=None, thickness=1):
    """An H x W x 4 RGBA ``uint8`` layer of a mask: ``fill`` at ``fill_alpha`` inside, the
    boundary opaque in ``contour``, transparent elsewhere."""
    m = np.asarray(mask) != 0
    rgba = np.zeros(m.shape + (4,), np.uint8)
    if fill is not None and fill_alpha > 0:
        rgba[m] = tuple(fill) + (int(round(255 * fill_alpha)),)
    if contour is not None:
        rgba[viz.mask_boundary(m, thickness)] = tuple(contour) + (255,)
    return rgba


class Report:
    """Collects each input's layers while infer runs; :meth:`write` makes ``index.html``."""

    def __init__(self, out_dir, embed_bytes=25 << 20):
        self.out_dir = os.fspath(out_dir)
        self.budget = max(0, int(embed_bytes))
        self.embed = self.budget > 0
        self.used = 0          # base64 bytes of the layers embedded so far
        self.layers = []       # per input: {role: bytes (embedded) or relative path}

    def add(self, name, gray, pred, true=None):
        """Add one input's layers: ``gray`` H x W uint8 (already windowed), masks H x W."""
        layers = {"image": _png_bytes(gray, "L"),
                  "pred": _png_bytes(mask_layer(pred, viz.PRED_FILL, PRED_FILL_ALPHA,
                                                viz.PRED_CONTOUR), "RGBA")}
        if true is not None:
            layers["true"] = _png_bytes(mask_layer(true, contour=viz.TRUE_CONTOUR), "RGBA")
        entry = {"name": name, "layers": layers}
        self.layers.append(entry)
        if self.embed:
            self.used += sum(4 * ((len(b) + 2) // 3) for b in layers.values())
            if self.used > self.budget:
                self.embed = False            # from now on: files, referenced relatively
                for e in self.layers:
                    self._to_files(e)
        else:
            self._to_files(entry)

    def _to_files(self, entry):
        folder = os.path.join(self.out_dir, LAYER_DIR)
        os.makedirs(folder, exist_ok=True)
        for role, data in entry["layers"].items():
            if isinstance(data, bytes):
                rel = "%s/%s_%s.png" % (LAYER_DIR, entry["name"], role)
                with open(os.path.join(self.out_dir, rel), "wb") as f:
                    f.write(data)
                entry["layers"][role] = rel

    @staticmethod
    def _src(data):
        if isinstance(data, bytes):
            return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        return data   # a relative path; '/' works on file:// everywhere

    def write(self, summary, sheet=None):
        """Write ``OUT/index.html`` for infer's ``summary``; ``sheet`` is the contact sheet's
        geometry {"path", "thumb", "pad", "per_row", "tiles"} (tile i shows image i)."""
        rows = []
        layers = {e["name"]: e for e in self.layers}
        for rec in summary["images"]:
            entry = layers[rec["name"]]
            rows.append({
                "name": rec["name"], "case": rec.get("case"), "image": rec.get("image"),
                "slice": rec.get("slice"), "key": rec.get("key"), "file": rec.get("file"),
                "dice": rec.get("dice"), "pred_px": rec["pred_lv_pixels"],
                "pred_mm2": rec.get("pred_lv_mm2"), "true_px": rec.get("true_lv_pixels"),
                "width": rec["width"], "height": rec["height"],
                "spacing": rec.get("pixel_spacing"), "overlay": rec.get("overlay"),
                "layers": {role: self._src(d) for role, d in entry["layers"].items()}})
        sheet_info = None
        if sheet is not None:
            if self.embed:
                with open(sheet["path"], "rb") as f:
                    src = self._src(f.read())
            else:
                src = os.path.relpath(sheet["path"], self.out_dir).replace(os.sep, "/")
            sheet_info = dict(sheet, src=src)
            sheet_info.pop("path")
        data = {
            "title": "protonet infer: %s" % os.path.basename(os.path.abspath(self.out_dir)),
            "model": summary.get("model"), "weights": summary.get("weights"),
            "count": summary.get("count"), "labelled": summary.get("labelled"),
            "mean_dice": summary.get("mean_dice"),
            "skipped": summary.get("skipped", []), "embedded": self.embed,
            "rows": rows, "sheet": sheet_info,
        }
        # '<' escaped: nothing in a name or path can end the script element
        blob = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
        path = os.path.join(self.out_dir, "index.html")
        with open(path, "w", encoding="utf-8") as f:
            f.write(PAGE.replace("/*DATA*/", blob, 1))
        return path


PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>protonet infer report</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1em 2em; color: #222; background: #fafafa; }
h1 { font-size: 1.4em; margin: .2em 0; }
h2 { font-size: 1.1em; margin: 1.2em 0 .4em; }
.meta { color: #555; margin: .2em 0; word-break: break-all; }
.sw { display: inline-block; width: 1.4em; height: .9em; vertical-align: middle;
  margin: 0 .3em 0 1em; border: 2px solid transparent; }
.sw.pred { background: rgba(255,0,0,.35); border-color: rgb(255,64,64); }
.sw.true { background: #000; border-color: rgb(0,255,0); }
table { border-collapse: collapse; background: #fff; }
th, td { padding: .25em .7em; border-bottom: 1px solid #ddd; text-align: left; white-space: nowrap; }
td.num, th.num { text-align: right; }
th { cursor: pointer; user-select: none; background: #eee; position: sticky; top: 0; }
th.asc::after { content: " \25B2"; } th.desc::after { content: " \25BC"; }
tbody tr { cursor: pointer; } tbody tr:hover { background: #eef4ff; }
#sheet { max-width: 100%; cursor: pointer; image-rendering: pixelated; }
#viewer { position: fixed; inset: 0; background: #181818; color: #eee;
  display: flex; flex-direction: column; }
#viewer[hidden] { display: none; }
#bar { padding: .5em 1em; display: flex; flex-wrap: wrap; gap: .4em 1.2em; align-items: center; }
#bar button { font: inherit; }
#vtitle { font-weight: bold; min-width: 16em; }
#stage { flex: 1; overflow: auto; text-align: center; }
#view { image-rendering: pixelated; background: #000; margin: .5em auto; }
.skipped { color: #a00; }
</style>
</head>
<body>
<h1 id="title"></h1>
<p class="meta" id="meta"></p>
<p class="legend">Legend:<span class="sw pred"></span>prediction (fill and contour)
<span class="sw true"></span>truth (expert contour / label)</p>
<h2>Images <small>(click a column to sort, a row to open)</small></h2>
<table id="results">
<thead><tr>
<th data-key="idx" class="num">#</th>
<th data-key="case">Case</th>
<th data-key="image">Image</th>
<th data-key="slice" class="num">Slice</th>
<th data-key="dice" class="num">Dice</th>
<th data-key="pred_px" class="num">Predicted px</th>
<th data-key="pred_mm2" class="num">Predicted mm&sup2;</th>
<th data-key="true_px" class="num">True px</th>
</tr></thead>
<tbody></tbody>
</table>
<div id="skipped"></div>
<h2>Contact sheet <small>(click a tile to open it)</small></h2>
<p id="nosheet" hidden>No contact sheet.</p>
<img id="sheet" alt="contact sheet">
<div id="viewer" hidden>
 <div id="bar">
  <span id="vtitle"></span>
  <button id="prev" title="previous (left arrow)">&#9664;</button>
  <button id="next" title="next (right arrow)">&#9654;</button>
  <label><input type="checkbox" id="show-pred" checked> prediction (p)</label>
  <label><input type="checkbox" id="show-true" checked> truth (t)</label>
  <label>opacity <input type="range" id="opacity" min="0" max="100" value="100"></label>
  <button id="zoom-out" title="zoom out (-)">&minus;</button>
  <span id="zoom-text"></span>
  <button id="zoom-in" title="zoom in (+)">+</button>
  <button id="zoom-fit" title="fit (0)">fit</button>
  <span class="legend"><span class="sw pred"></span>prediction
   <span class="sw true"></span>truth</span>
  <button id="close" title="close (Esc)">close</button>
 </div>
 <div id="stage"><canvas id="view"></canvas></div>
</div>
<script type="application/json" id="data">/*DATA*/</script>
<script>
"use strict";
var D = JSON.parse(document.getElementById("data").textContent);
var rows = D.rows.map(function (r, i) { r.idx = i + 1; return r; });
var order = rows.slice(), sortKey = "idx", sortDir = 1, current = -1, zoom = 1, loaded = null;
function $(id) { return document.getElementById(id); }
function fmt(v, digits) {
  if (v === null || v === undefined) return "\u2014";
  return typeof v === "number" && digits !== undefined ? v.toFixed(digits) : String(v);
}
document.title = D.title;
$("title").textContent = D.title;
$("meta").textContent = D.count + " image(s); " + (D.mean_dice === null ? "no truth given" :
  "mean Dice " + D.mean_dice.toFixed(4) + " over " + D.labelled + " with truth") +
  "; model " + D.model + "; weights " + D.weights;
if (D.skipped.length) {
  var s = $("skipped");
  s.className = "skipped";
  s.textContent = "Skipped " + D.skipped.length + ": " +
    D.skipped.map(function (k) { return k.reason; }).join("; ");
}

function cmp(a, b) {
  var x = a[sortKey], y = b[sortKey];
  var nx = x === null || x === undefined, ny = y === null || y === undefined;
  if (nx || ny) return nx && ny ? a.idx - b.idx : (nx ? 1 : -1);   // unknowns last either way
  if (x < y) return -sortDir;
  if (x > y) return sortDir;
  return a.idx - b.idx;
}
function render() {
  var tb = document.querySelector("#results tbody");
  tb.textContent = "";
  order.forEach(function (r, pos) {
    var tr = document.createElement("tr");
    tr.dataset.name = r.name;
    [[r.idx], [r.case], [r.image === null ? r.name : r.image], [r.slice], [r.dice, 4],
     [r.pred_px], [r.pred_mm2, 1], [r.true_px]].forEach(function (c, j) {
      var td = document.createElement("td");
      td.textContent = fmt(c[0], c[1]);
      if (j === 0 || j > 2) td.className = "num";
      tr.appendChild(td);
    });
    tr.title = r.file + (r.key === null ? "" : " (key " + r.key + ")");
    tr.addEventListener("click", function () { show(pos); });
    tb.appendChild(tr);
  });
  document.querySelectorAll("#results th").forEach(function (th) {
    th.className = (th.className.indexOf("num") >= 0 ? "num " : "") +
      (th.dataset.key === sortKey ? (sortDir > 0 ? "asc" : "desc") : "");
  });
}
document.querySelectorAll("#results th").forEach(function (th) {
  th.addEventListener("click", function () {
    sortDir = th.dataset.key === sortKey ? -sortDir : 1;
    sortKey = th.dataset.key;
    order = rows.slice().sort(cmp);
    render();
  });
});

if (D.sheet) {
  $("sheet").src = D.sheet.src;
  $("sheet").addEventListener("click", function (e) {
    var img = e.target, sc = img.naturalWidth / img.clientWidth;
    var step = D.sheet.thumb + D.sheet.pad;
    var col = Math.floor((e.offsetX * sc - D.sheet.pad) / step);
    var row = Math.floor((e.offsetY * sc - D.sheet.pad) / step);
    var i = row * D.sheet.per_row + col;
    if (col >= 0 && col < D.sheet.per_row && i >= 0 && i < D.sheet.tiles)
      show(order.indexOf(rows[i]));
  });
} else { $("sheet").hidden = true; $("nosheet").hidden = false; }

function load(src) {
  return new Promise(function (ok, fail) {
    var im = new Image();
    im.onload = function () { ok(im); };
    im.onerror = function () { fail(new Error("cannot load " + src.slice(0, 80))); };
    im.src = src;
  });
}
function draw() {
  var c = $("view"), ctx = c.getContext("2d");
  if (!loaded) return;
  ctx.globalAlpha = 1;
  ctx.clearRect(0, 0, c.width, c.height);
  ctx.drawImage(loaded.image, 0, 0);
  ctx.globalAlpha = $("opacity").value / 100;
  if ($("show-pred").checked) ctx.drawImage(loaded.pred, 0, 0);
  if ($("show-true").checked && loaded.true) ctx.drawImage(loaded.true, 0, 0);
  ctx.globalAlpha = 1;
  c.dataset.drawn = loaded.name + ($("show-pred").checked ? "+pred" : "") +
    ($("show-true").checked && loaded.true ? "+true" : "") + "@" + $("opacity").value;
}
function setZoom(z) {
  var c = $("view");
  zoom = Math.max(0.25, Math.min(32, z));
  c.style.width = c.width * zoom + "px";
  c.style.height = c.height * zoom + "px";
  $("zoom-text").textContent = Math.round(zoom * 100) + "%";
}
function fit() {
  var st = $("stage"), c = $("view");
  setZoom(Math.max(1, Math.floor(Math.min((st.clientWidth - 20) / c.width,
                                          (st.clientHeight - 20) / c.height))));
}
function show(pos) {
  if (pos < 0 || pos >= order.length) return;
  current = pos;
  var r = order[pos], c = $("view");
  $("viewer").hidden = false;
  $("vtitle").textContent = (pos + 1) + "/" + order.length + "  " + r.name +
    "  Dice " + fmt(r.dice, 4) + "  predicted " + r.pred_px + " px" +
    (r.pred_mm2 === null ? "" : " (" + r.pred_mm2.toFixed(1) + " mm\u00b2)");
  $("show-true").disabled = !r.layers.true;
  c.width = r.width; c.height = r.height;
  c.dataset.drawn = "";
  var roles = Object.keys(r.layers);
  Promise.all(roles.map(function (k) { return load(r.layers[k]); })).then(function (ims) {
    if (current !== pos) return;              // another image was opened meanwhile
    loaded = {name: r.name};
    roles.forEach(function (k, i) { loaded[k] = ims[i]; });
    fit();
    draw();
  }, function (err) { $("vtitle").textContent = r.name + ": " + err.message; });
}
function hide() { $("viewer").hidden = true; current = -1; }
$("prev").onclick = function () { show(current - 1); };
$("next").onclick = function () { show(current + 1); };
$("close").onclick = hide;
$("show-pred").onchange = draw;
$("show-true").onchange = draw;
$("opacity").oninput = draw;
$("zoom-in").onclick = function () { setZoom(zoom * 2); };
$("zoom-out").onclick = function () { setZoom(zoom / 2); };
$("zoom-fit").onclick = fit;
$("stage").addEventListener("wheel", function (e) {
  e.preventDefault();
  setZoom(zoom * (e.deltaY < 0 ? 1.25 : 0.8));
}, {passive: false});
document.addEventListener("keydown", function (e) {
  if ($("viewer").hidden) return;
  var k = e.key;
  if (k === "Escape") hide();
  else if (k === "ArrowLeft") show(current - 1);
  else if (k === "ArrowRight") show(current + 1);
  else if (k === "p") { $("show-pred").checked = !$("show-pred").checked; draw(); }
  else if (k === "t" && !$("show-true").disabled) {
    $("show-true").checked = !$("show-true").checked; draw(); }
  else if (k === "+" || k === "=") setZoom(zoom * 2);
  else if (k === "-") setZoom(zoom / 2);
  else if (k === "0") fit();
});
render();
</script>
</body>
</html>
"""
