// A small line chart on a canvas: no library, no network. lineChart(canvas, points, series)
// series: [{key, color, label}], points: [{t, key: value|null, ...}] one per second.
"use strict";
function lineChart(canvas, points, series) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || canvas.width, h = canvas.clientHeight || canvas.height;
  canvas.width = w * ratio; canvas.height = h * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, w, h);
  const left = 40, bottom = 18, top = 6, right = 8;
  let max = 0;
  for (const p of points) for (const s of series) if (p[s.key] != null) max = Math.max(max, p[s.key]);
  max = max > 0 ? niceCeil(max) : 1;
  g.strokeStyle = "#e3e6ea"; g.fillStyle = "#6b7380"; g.font = "11px system-ui, sans-serif";
  for (let i = 0; i <= 4; i++) {
    const y = top + (h - top - bottom) * i / 4;
    g.beginPath(); g.moveTo(left, y); g.lineTo(w - right, y); g.stroke();
    g.fillText(fmt(max * (4 - i) / 4), 2, y + 4);
  }
  const n = Math.max(points.length - 1, 1);
  const x = i => left + (w - left - right) * i / n;
  const y = v => top + (h - top - bottom) * (1 - v / max);
  series.forEach((s, k) => {
    g.strokeStyle = s.color; g.lineWidth = 1.5; g.beginPath();
    let drawing = false;
    points.forEach((p, i) => {
      const v = p[s.key];
      if (v == null) { drawing = false; return; }
      if (drawing) g.lineTo(x(i), y(v)); else { g.moveTo(x(i), y(v)); drawing = true; }
    });
    g.stroke();
    g.fillStyle = s.color;
    points.forEach((p, i) => {  // a lone point has no line: mark every point
      if (p[s.key] != null && p[s.key] > 0) { g.beginPath(); g.arc(x(i), y(p[s.key]), 2, 0, 2 * Math.PI); g.fill(); }
    }); g.fillText(s.label, left + 8 + k * 90, h - 4);
  });
}
function niceCeil(v) { const e = Math.pow(10, Math.floor(Math.log10(v))); for (const m of [1, 2, 4, 5, 10]) if (m * e >= v) return m * e; return 10 * e; }
function fmt(v) { return v >= 100 ? v.toFixed(0) : v >= 1 ? v.toFixed(1) : v.toFixed(3); }
