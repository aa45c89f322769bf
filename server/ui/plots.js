// Canvas drawing: the sine plot and per-gate weight heatmaps.

export function drawLines(canvas, series) {
  const ctx = canvas.getContext('2d');
  const { width, height } = canvas;
  ctx.clearRect(0, 0, width, height);
  const all = series.flatMap((s) => s.points);
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const pad = 0.1 * (Math.max(...ys) - Math.min(...ys) || 1);
  const [y0, y1] = [Math.min(...ys) - pad, Math.max(...ys) + pad];
  const px = (x) => 30 + ((x - x0) / (x1 - x0 || 1)) * (width - 40);
  const py = (y) => height - 20 - ((y - y0) / (y1 - y0)) * (height - 30);
  ctx.strokeStyle = '#ccd';
  ctx.beginPath();
  ctx.moveTo(30, py(0));
  ctx.lineTo(width - 10, py(0));
  ctx.stroke();
  for (const s of series) {
    ctx.strokeStyle = s.color;
    ctx.lineWidth = s.width ?? 2;
    ctx.setLineDash(s.dash ?? []);
    ctx.beginPath();
    s.points.forEach(([x, y], k) => (k ? ctx.lineTo(px(x), py(y)) : ctx.moveTo(px(x), py(y))));
    ctx.stroke();
  }
  ctx.setLineDash([]);
}

/** Blue (negative) - white - red (positive) heatmap of a [rows][cols] matrix, `scale` = |max|. */
export function heatmap(matrix, scale, { size = 120 } = {}) {
  const rows = matrix.length;
  const cols = rows ? matrix[0].length : 0;
  const cell = Math.max(2, Math.min(20, Math.floor(size / Math.max(rows, cols, 1))));
  const canvas = document.createElement('canvas');
  canvas.width = Math.max(1, cols * cell);
  canvas.height = Math.max(1, rows * cell);
  const ctx = canvas.getContext('2d');
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const v = Math.max(-1, Math.min(1, matrix[r][c] / (scale || 1)));
      const fade = Math.round(255 * (1 - Math.abs(v)));
      ctx.fillStyle = v >= 0 ? `rgb(255,${fade},${fade})` : `rgb(${fade},${fade},255)`;
      ctx.fillRect(c * cell, r * cell, cell, cell);
    }
  }
  return canvas;
}

export function maxAbs(node) {
  let m = 0;
  for (const dir of node.directions) {
    for (const g of Object.values(dir.gates)) {
      for (const row of [...g.W, ...g.R]) for (const v of row) m = Math.max(m, Math.abs(v));
    }
  }
  return m;
}
