// The space-time view of one kvsim run. The data is the JSON block above
// (sim/src/timeline.rs says what each field means). Only what lies in the
// current time window is drawn; when more than MAX_ITEMS messages (or
// operations) are in it, they are counted per pixel column instead.
// Text from the run reaches the page only through textContent and
// attributes, never as markup.
(function () {
  'use strict';
  var errorsEl = document.getElementById('errors');
  var errorCount = 0;
  function report(text) {
    errorCount += 1;
    errorsEl.hidden = false;
    errorsEl.textContent += text + '\n';
    document.body.setAttribute('data-js-errors', String(errorCount));
  }
  window.onerror = function (msg, src, line, col, err) {
    report('JavaScript error: ' + msg + ' (' + (src || '') + ':' + line + ':' + col + ')' +
      (err && err.stack ? '\n' + err.stack : ''));
  };
  window.addEventListener('unhandledrejection', function (e) {
    report('JavaScript error: unhandled rejection: ' + e.reason);
  });

  var NS = 'http://www.w3.org/2000/svg';
  var MAX_ITEMS = 3000;
  var COL = 3;
  var LABEL_W = 116, AXIS_H = 28, RIGHT = 14, BAND_H = 9;

  var D, view, svg, plotW = 800, H = 0;
  var t0 = 0, t1 = 1;
  var hideChatter = true;
  var lanesOrder = [], laneTop = [], laneH = [], laneMid = [];
  var msgEnd = [], nominal = 100;
  var opRow = [], opRows = [], opEnd = [];
  var involved = {}, culprits = {};
  var selected = null;
  var notices = [];
  var renders = 0;

  function el(name, attrs, parent) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) {
      if (Object.prototype.hasOwnProperty.call(attrs, k)) e.setAttribute(k, String(attrs[k]));
    }
    if (parent) parent.appendChild(e);
    return e;
  }
  function text(parent, x, y, cls, s) {
    var t = el('text', { x: x, y: y, 'class': cls }, parent);
    t.textContent = s;
    return t;
  }
  function ms(us) {
    return (us / 1000).toFixed(3) + 'ms';
  }
  function x(t) {
    var v = LABEL_W + (t - t0) / (t1 - t0) * plotW;
    return Math.max(LABEL_W - 40, Math.min(LABEL_W + plotW + 40, v));
  }
  function rawX(t) {
    return LABEL_W + (t - t0) / (t1 - t0) * plotW;
  }
  function tAt(px) {
    return t0 + (px - LABEL_W) / plotW * (t1 - t0);
  }

  function prepare() {
    // Lanes: replicas, then the balancer, then clients.
    var kinds = ['replica', 'balancer', 'client'];
    kinds.forEach(function (k) {
      D.lanes.forEach(function (l, i) { if (l.kind === k) lanesOrder.push(i); });
    });
    var y = AXIS_H;
    lanesOrder.forEach(function (i) {
      var h = D.lanes[i].kind === 'client' ? 24 : 40;
      laneTop[i] = y;
      laneH[i] = h;
      laneMid[i] = D.lanes[i].kind === 'client' ? y + h / 2 : y + BAND_H + 4 + (h - BAND_H - 4) / 2;
      y += h;
    });
    H = y + 22;
    // A lost message is drawn as long as a typical delivered one.
    var flights = [];
    D.messages.forEach(function (m) {
      if (m.fate === 'delivered' && flights.length < 20000) flights.push(m.at - m.sent);
    });
    flights.sort(function (a, b) { return a - b; });
    if (flights.length) nominal = Math.max(1, flights[Math.floor(flights.length / 2)]);
    D.messages.forEach(function (m, i) {
      if (m.fate === 'partitioned' || m.fate === 'dropped') msgEnd[i] = m.sent + nominal;
      else if (m.at === null || m.at === undefined) msgEnd[i] = D.end_us;
      else msgEnd[i] = m.at;
    });
    // Operations of one client that overlap go in rows, at most three.
    var byLane = {};
    D.ops.forEach(function (o, i) {
      opEnd[i] = (o.done === null || o.done === undefined) ? D.end_us : o.done;
      (byLane[o.lane] = byLane[o.lane] || []).push(i);
    });
    Object.keys(byLane).forEach(function (lane) {
      var list = byLane[lane];
      list.sort(function (a, b) { return D.ops[a].invoked - D.ops[b].invoked; });
      var ends = [];
      list.forEach(function (i) {
        var r = 0;
        while (r < ends.length && ends[r] > D.ops[i].invoked) r += 1;
        if (r >= 3) r = 2;
        ends[r] = Math.max(ends[r] || 0, opEnd[i]);
        opRow[i] = r;
      });
      opRows[lane] = Math.max(1, Math.min(3, ends.length));
    });
    D.violations.forEach(function (v) {
      (v.ops || []).forEach(function (i) { involved[i] = true; });
      if (v.culprit !== undefined && v.culprit !== null) culprits[v.culprit] = true;
    });
  }

  function defs() {
    var d = el('defs', {}, svg);
    [['head', '#3a6ea5'], ['head-light', '#aab'], ['head-client', '#6a4c93']].forEach(function (m) {
      var mk = el('marker', { id: m[0], viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 5, markerHeight: 5, orient: 'auto-start-reverse' }, d);
      el('path', { d: 'M0,0 L10,5 L0,10 z', fill: m[1] }, mk);
    });
    var p = el('pattern', { id: 'hatch', width: 6, height: 6, patternUnits: 'userSpaceOnUse', patternTransform: 'rotate(45)' }, d);
    el('rect', { width: 6, height: 6, fill: 'rgba(217,164,0,.12)' }, p);
    el('line', { x1: 0, y1: 0, x2: 0, y2: 6, stroke: '#d9a400', 'stroke-width': 2 }, p);
    var q = el('pattern', { id: 'missing', width: 6, height: 6, patternUnits: 'userSpaceOnUse', patternTransform: 'rotate(45)' }, d);
    el('rect', { width: 6, height: 6, fill: '#9ec5e8' }, q);
    el('line', { x1: 0, y1: 0, x2: 0, y2: 6, stroke: '#8e24aa', 'stroke-width': 2 }, q);
    var c = el('clipPath', { id: 'plot-clip' }, d);
    el('rect', { x: LABEL_W, y: 0, width: plotW, height: H }, c);
  }

  function niceStep(span, px) {
    var raw = span / Math.max(1, px / 110);
    var p = Math.pow(10, Math.floor(Math.log10(raw)));
    var m = raw / p;
    return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * p;
  }

  function axis(g) {
    var a = el('g', { 'class': 'axis' }, g);
    var step = niceStep(t1 - t0, plotW);
    var digits = step >= 1000 ? 0 : step >= 100 ? 1 : step >= 10 ? 2 : 3;
    var first = Math.ceil(t0 / step) * step;
    for (var t = first; t <= t1; t += step) {
      var px = rawX(t);
      el('line', { x1: px, x2: px, y1: AXIS_H - 6, y2: H, 'class': 'grid' }, a);
      if (px < LABEL_W + plotW - 44) text(a, px + 2, AXIS_H - 9, '', (t / 1000).toFixed(digits) + 'ms');
    }
    el('line', { x1: LABEL_W, x2: LABEL_W + plotW, y1: AXIS_H, y2: AXIS_H }, a);
  }

  function lanes(g, counts) {
    lanesOrder.forEach(function (i, n) {
      var l = D.lanes[i];
      el('rect', { x: 0, y: laneTop[i], width: LABEL_W + plotW + RIGHT, height: laneH[i], 'class': 'lane-bg' + (n % 2 ? ' odd' : '') }, g);
      el('line', { x1: LABEL_W, x2: LABEL_W + plotW, y1: laneMid[i], y2: laneMid[i], 'class': 'lane', 'data-lane': l.name, 'data-kind': l.kind }, g);
      text(g, 8, laneMid[i] + 4, 'lane-label', l.name);
      var sub = l.kind === 'client' ? (l.read ? 'reads: ' + l.read : '') : l.kind;
      if (sub) text(g, 36, laneMid[i] + 4, 'lane-sub', sub);
      counts.lanes += 1;
    });
  }

  function visible(a, b) {
    return a <= t1 && b >= t0;
  }

  function partitions(g, counts) {
    D.partitions.forEach(function (p, i) {
      if (!visible(p.from, p.to)) return;
      var cut = {};
      p.links.forEach(function (l) { cut[l[0]] = true; cut[l[1]] = true; });
      var x0 = x(p.from), x1 = x(p.to);
      Object.keys(cut).forEach(function (lane) {
        el('rect', { x: x0, y: laneTop[lane], width: Math.max(1, x1 - x0), height: laneH[lane], 'class': 'partition', 'data-k': 'p', 'data-i': i }, g);
      });
      el('rect', { x: x0, y: AXIS_H - 4, width: Math.max(1, x1 - x0), height: 4, 'class': 'partition-strip', 'data-k': 'p', 'data-i': i }, g);
      counts.partitions += 1;
    });
  }

  // Pauses (below the arrows) when `pauses`, else role bands (above them,
  // so their labels stay readable).
  function spans(g, counts, epochs, pauses) {
    D.spans.forEach(function (s, i) {
      if (!visible(s.from, s.to) || laneTop[s.lane] === undefined) return;
      if ((s.kind === 'pause') !== pauses) return;
      var x0 = x(s.from), x1 = x(s.to), w = Math.max(1, x1 - x0);
      if (s.kind === 'pause') {
        el('rect', { x: x0, y: laneTop[s.lane] + 1, width: w, height: laneH[s.lane] - 2, 'class': 'pause', 'data-k': 's', 'data-i': i }, g);
        counts.pauses += 1;
        return;
      }
      var cls = 'band role-' + s.state + (s.missing ? ' missing' : '');
      var attrs = { x: x0, y: laneTop[s.lane] + 3, width: w, height: BAND_H, 'class': cls, 'data-k': 's', 'data-i': i, 'data-state': s.state };
      if (s.epoch !== undefined) attrs['data-epoch'] = s.epoch;
      el('rect', attrs, g);
      if (s.state === 'leader') epochs[s.epoch] = true;
      counts.bands += 1;
      if (w > 44) {
        var label = s.state + (s.epoch !== undefined ? ' e' + s.epoch : '');
        if (s.leader !== undefined) label += ' \u2192 ' + D.lanes[s.leader].name;
        text(g, Math.max(x0, LABEL_W) + 3, laneTop[s.lane] + 3 + BAND_H - 1.5, 'band-label', label);
      }
    });
  }

  function ops(g, counts) {
    var vis = [];
    D.ops.forEach(function (o, i) {
      if (visible(o.invoked, opEnd[i]) && laneTop[o.lane] !== undefined) vis.push(i);
    });
    counts.visibleOps = vis.length;
    if (vis.length > MAX_ITEMS) {
      var rank = { ok: 0, unfinished: 0, failed: 1, ambiguous: 2 };
      aggregate(g, vis, function (i) { return D.ops[i].lane; }, function (i) { return D.ops[i].invoked; },
        function (i) { return rank[D.ops[i].outcome] || 0; }, 'operations invoked', counts);
      return;
    }
    vis.forEach(function (i) {
      var o = D.ops[i];
      var rows = opRows[o.lane] || 1;
      var inner = laneH[o.lane] - 6;
      var rh = inner / rows;
      var x0 = x(o.invoked), x1 = x(opEnd[i]);
      var cls = 'op ' + o.outcome + (involved[i] ? ' involved' : '') + (culprits[i] ? ' culprit' : '');
      el('rect', { x: x0, y: laneTop[o.lane] + 3 + opRow[i] * rh + 0.5, width: Math.max(2, x1 - x0), height: Math.max(2, rh - 1), 'class': cls, 'data-k': 'o', 'data-i': i }, g);
      counts.ops += 1;
    });
  }

  function messages(g, counts) {
    var vis = [];
    var ms_ = D.messages;
    for (var i = 0; i < ms_.length; i++) {
      var m = ms_[i];
      if (m.sent > t1) break; // sorted by send time
      if (hideChatter && m.chatter) continue;
      if (msgEnd[i] < t0) continue;
      vis.push(i);
    }
    counts.visibleMessages = vis.length;
    if (vis.length > MAX_ITEMS) {
      aggregate(g, vis, function (i) { return ms_[i].from; }, function (i) { return ms_[i].sent; },
        null, 'messages sent', counts);
      return;
    }
    vis.forEach(function (i) {
      var m = ms_[i];
      var x0 = x(m.sent), y0 = laneMid[m.from], y1 = laneMid[m.to];
      var x1 = x(msgEnd[i]);
      var lost = m.fate !== 'delivered' && m.fate !== 'inflight';
      if (m.fate === 'partitioned' || m.fate === 'dropped') y1 = y0 + (y1 - y0) * 0.6;
      var client = D.lanes[m.from].kind === 'client' || D.lanes[m.to].kind === 'client';
      var cls = 'arrow ' + m.fate + (m.chatter ? ' chatter' : '') + (client ? ' client' : '') +
        (lost ? ' lost' : '') + (m.dup ? ' dup' : '');
      el('line', { x1: x0, y1: y0, x2: x1, y2: y1, 'class': cls, 'data-k': 'm', 'data-i': i, 'data-kind': m.kind }, g);
      el('line', { x1: x0, y1: y0, x2: x1, y2: y1, 'class': 'hit', 'data-k': 'm', 'data-i': i }, g);
      counts.arrows += 1;
      if (lost) {
        el('path', { d: 'M' + (x1 - 3.5) + ',' + (y1 - 3.5) + 'l7,7m0,-7l-7,7', 'class': 'cross' }, g);
        counts.crosses += 1;
      }
    });
  }

  // Counts per pixel column: `laneOf(i)` and `timeOf(i)` place item i;
  // `rankOf(i)` (0 ok, 1 failed, 2 ambiguous) colours a column by its worst.
  function aggregate(g, list, laneOf, timeOf, rankOf, what, counts) {
    var ncol = Math.ceil(plotW / COL) + 1, nlane = D.lanes.length;
    var n = new Int32Array(ncol * nlane), worst = new Int8Array(ncol * nlane);
    var scale = plotW / (t1 - t0) / COL;
    for (var j = 0; j < list.length; j++) {
      var i = list[j];
      var c = Math.floor((timeOf(i) - t0) * scale);
      if (c < 0) c = 0;
      if (c >= ncol) c = ncol - 1;
      var at = laneOf(i) * ncol + c;
      n[at] += 1;
      if (rankOf) worst[at] = Math.max(worst[at], rankOf(i));
    }
    var max = 1;
    for (var k = 0; k < n.length; k++) if (n[k] > max) max = n[k];
    var names = ['', ' failed', ' ambiguous'];
    for (var lane = 0; lane < nlane; lane++) {
      if (laneTop[lane] === undefined) continue;
      for (var col = 0; col < ncol; col++) {
        var cnt = n[lane * ncol + col];
        if (!cnt) continue;
        var h = Math.max(2, (laneH[lane] - 6) * Math.log(1 + cnt) / Math.log(1 + max));
        var a = tAt(LABEL_W + col * COL), b = tAt(LABEL_W + (col + 1) * COL);
        var cls = rankOf ? 'agg-op' + names[worst[lane * ncol + col]] : 'agg';
        el('rect', { x: LABEL_W + col * COL, y: laneTop[lane] + laneH[lane] - 3 - h, width: COL - 0.5, height: h, 'class': cls,
          'data-k': 'agg', 'data-count': cnt, 'data-tip': cnt + ' ' + what + ' by ' + D.lanes[lane].name + ' in ' + ms(a) + ' .. ' + ms(b) + ' (zoom in to see them one by one)' }, g);
        counts.agg += 1;
      }
    }
    notices.push(list.length + ' ' + what.split(' ')[0] + ' in view: counted per ' + COL + '-pixel column (zoom in to see them one by one)');
  }

  function glyph(g, m, i) {
    var lane = m.lane;
    var px = x(m.t);
    var attrs = { 'class': 'mark kind-' + m.kind, 'data-k': 'mk', 'data-i': i };
    if (lane === null || lane === undefined || laneTop[lane] === undefined) {
      attrs.x1 = px; attrs.x2 = px; attrs.y1 = AXIS_H; attrs.y2 = H - 20;
      el('line', attrs, g);
      text(g, px + 3, AXIS_H + 10, 'mark-label', m.kind);
      return;
    }
    var y = laneMid[lane];
    if (m.kind === 'crash') {
      attrs.d = 'M' + (px - 6) + ',' + (y - 6) + 'l12,12m0,-12l-12,12';
      el('path', attrs, g);
    } else if (m.kind === 'restart') {
      attrs.d = 'M' + px + ',' + (y - 7) + 'l9,7l-9,7z';
      el('path', attrs, g);
    } else if (m.kind === 'pause') {
      attrs.x = px - 2; attrs.y = y - 8; attrs.width = 4; attrs.height = 16;
      el('rect', attrs, g);
    } else if (m.kind === 'corrupt' || m.kind === 'disk') {
      attrs.d = 'M' + px + ',' + (y - 7) + 'l5,7l-5,7l-5,-7z';
      el('path', attrs, g);
    } else if (m.kind === 'recovery') {
      attrs.cx = px; attrs.cy = y; attrs.r = 4.5;
      el('circle', attrs, g);
    } else {
      attrs.cx = px; attrs.cy = y; attrs.r = 3;
      el('circle', attrs, g);
    }
  }

  function marks(g, counts) {
    var drawn = 0;
    // State changes first, then faults on top of them.
    [false, true].forEach(function (faults) {
      D.marks.forEach(function (m, i) {
        if ((m.kind !== 'event') !== faults) return;
        if (m.t < t0 || m.t > t1) return;
        if (drawn >= MAX_ITEMS) return;
        glyph(g, m, i);
        drawn += 1;
      });
    });
    counts.marks = drawn;
  }

  function violations(g, counts) {
    D.violations.forEach(function (v, i) {
      if (v.t < t0 || v.t > t1) return;
      var px = x(v.t);
      el('line', { x1: px, x2: px, y1: AXIS_H - 12, y2: H - 20, 'class': 'violation', 'data-k': 'v', 'data-i': i }, g);
      var label = text(g, px + 3, AXIS_H - 14, 'violation-label', '!! ' + v.checker);
      if (px > LABEL_W + plotW - 120) {
        label.setAttribute('x', px - 3);
        label.setAttribute('text-anchor', 'end');
      }
      counts.violations += 1;
    });
  }

  function render() {
    renders += 1;
    plotW = Math.max(200, (view.clientWidth || window.innerWidth || 1000) - LABEL_W - RIGHT);
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    svg.setAttribute('width', LABEL_W + plotW + RIGHT);
    svg.setAttribute('height', H);
    defs();
    var counts = { lanes: 0, arrows: 0, crosses: 0, bands: 0, ops: 0, marks: 0, violations: 0, agg: 0, partitions: 0, pauses: 0, visibleMessages: 0, visibleOps: 0 };
    var epochs = {};
    var frag = document.createDocumentFragment();
    var base = el('g', { 'class': 'base' }, frag);
    lanes(base, counts);
    axis(base);
    var plot = el('g', { 'class': 'plot', 'clip-path': 'url(#plot-clip)' }, frag);
    partitions(el('g', { 'class': 'partitions' }, plot), counts);
    spans(el('g', { 'class': 'pauses' }, plot), counts, epochs, true);
    var opsLayer = el('g', { 'class': 'ops' }, plot);
    messages(el('g', { 'class': 'messages' }, plot), counts);
    spans(el('g', { 'class': 'bands' }, plot), counts, epochs, false);
    // Bars above arrows: an operation's colour is what matters on its lane.
    plot.appendChild(opsLayer);
    ops(opsLayer, counts);
    marks(el('g', { 'class': 'marks' }, plot), counts);
    violations(el('g', { 'class': 'violations' }, frag), counts);
    if (notices.length) text(base, LABEL_W + 6, H - 6, 'notice', notices.join('; '));
    notices = [];
    svg.appendChild(frag);
    if (selected) {
      var s = svg.querySelector('[data-k="' + selected.k + '"][data-i="' + selected.i + '"]');
      if (s) s.classList.add('selected');
    }
    Object.keys(counts).forEach(function (k) {
      view.setAttribute('data-rendered-' + k.replace(/[A-Z]/g, function (c) { return '-' + c.toLowerCase(); }), String(counts[k]));
    });
    view.setAttribute('data-leader-epochs', Object.keys(epochs).sort(function (a, b) { return a - b; }).join(' '));
    view.setAttribute('data-mode', counts.agg > 0 ? 'aggregate' : 'detail');
    view.setAttribute('data-window', Math.round(t0) + ',' + Math.round(t1));
    view.setAttribute('data-renders', String(renders));
    document.getElementById('window').textContent =
      ms(Math.max(0, t0)) + ' .. ' + ms(t1) + ' (' + ms(t1 - t0) + ' shown), ' +
      counts.visibleMessages + ' messages, ' + counts.visibleOps + ' operations';
  }

  // One render per frame however many wheel or mouse events came; the
  // timer stands in where frames are not drawn (a hidden tab, headless).
  var pending = false;
  function schedule() {
    if (pending) return;
    pending = true;
    var run = function () {
      if (!pending) return;
      pending = false;
      try { render(); } catch (e) { report('JavaScript error: ' + (e && e.stack ? e.stack : e)); }
    };
    window.requestAnimationFrame(run);
    window.setTimeout(run, 50);
  }

  function setWindow(a, b) {
    var full = Math.max(1, D.end_us);
    var span = Math.max(10, Math.min(full * 1.05, b - a));
    if (a < -full * 0.025) a = -full * 0.025;
    if (a + span > full * 1.025) a = full * 1.025 - span;
    t0 = a;
    t1 = a + span;
    schedule();
  }
  function zoom(factor, at) {
    var c = at === undefined ? (t0 + t1) / 2 : at;
    setWindow(c - (c - t0) * factor, c + (t1 - c) * factor);
  }
  function pan(fraction) {
    var d = (t1 - t0) * fraction;
    setWindow(t0 + d, t1 + d);
  }
  function reset() {
    setWindow(0, Math.max(1, D.end_us));
  }

  function item(k, i) {
    if (k === 'm') return D.messages[i];
    if (k === 'o') return D.ops[i];
    if (k === 'mk') return D.marks[i];
    if (k === 's') return D.spans[i];
    if (k === 'p') return D.partitions[i];
    if (k === 'v') return D.violations[i];
    return null;
  }
  function describe(k, i) {
    var it = item(k, i);
    if (!it) return '';
    if (k === 'm') {
      var fate = it.fate === 'delivered' ? 'delivered at ' + ms(it.at) + ' (' + ms(it.at - it.sent) + ' in flight)' :
        it.fate === 'inflight' ? 'still in flight at the end' : it.fate === 'partitioned' ? 'lost to a partition' :
          it.fate === 'dropped' ? 'dropped by the network' : it.fate === 'down' ? 'lost: the receiver was down at ' + ms(it.at) :
            'lost: the balancer had restarted since';
      return it.line + '\n' + it.kind + ' ' + D.lanes[it.from].name + ' -> ' + D.lanes[it.to].name + ', sent at ' + ms(it.sent) + ', ' + fate +
        (it.chatter ? ' (chatter)' : '') + (it.dup ? ' (a duplicate)' : '');
    }
    if (k === 'o') {
      var v = it.value === null || it.value === undefined ? (it.op === 'get' && it.outcome === 'ok' ? '(none: the key was missing)' : '-') : it.value;
      var took = it.done === null || it.done === undefined ? 'unfinished at the end' : 'done ' + ms(it.done) + ' (' + ms(it.done - it.invoked) + ')';
      var s = it.line + '\n' + it.op + ' ' + it.key + ': ' + it.outcome + '; invoked ' + ms(it.invoked) + ', sent ' + ms(it.sent) + ', ' + took +
        (it.attempts ? ', ' + it.attempts + ' attempt' + (it.attempts === 1 ? '' : 's') : '') +
        '\nvalue ' + (it.op === 'get' ? 'read' : 'written') + ': ' + v + (it.value_len > 240 ? ' (' + it.value_len + ' bytes)' : '');
      if (culprits[i]) s += '\nlinearizability: this operation could not be placed';
      else if (involved[i]) s += '\nlinearizability: an operation on the key that failed the check';
      return s;
    }
    if (k === 'v') return 'violation (' + it.checker + ', detected at ' + ms(it.t) + '):\n' + it.text;
    return it.line;
  }

  function showTip(e) {
    var tip = document.getElementById('tip');
    var t = e.target;
    var s = '';
    if (t && t.getAttribute) {
      if (t.getAttribute('data-tip')) s = t.getAttribute('data-tip');
      else if (t.getAttribute('data-k')) s = describe(t.getAttribute('data-k'), +t.getAttribute('data-i'));
    }
    if (!s) { tip.hidden = true; return; }
    tip.textContent = s;
    tip.hidden = false;
    var px = Math.min(e.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
    var py = e.clientY + 16;
    if (py + tip.offsetHeight > window.innerHeight) py = e.clientY - tip.offsetHeight - 10;
    tip.style.left = Math.max(0, px) + 'px';
    tip.style.top = Math.max(0, py) + 'px';
  }

  function select(t) {
    var detail = document.getElementById('detail');
    var k = t && t.getAttribute && t.getAttribute('data-k');
    if (!k || k === 'agg') return;
    var i = +t.getAttribute('data-i');
    selected = { k: k, i: i };
    Array.prototype.forEach.call(svg.querySelectorAll('.selected'), function (s) { s.classList.remove('selected'); });
    var shown = svg.querySelector('[data-k="' + k + '"][data-i="' + i + '"]');
    if (shown) shown.classList.add('selected');
    detail.textContent = describe(k, i);
  }

  function legend() {
    var lg = document.getElementById('legend');
    function sw(color, label, border) {
      var s = document.createElement('span');
      var b = document.createElement('span');
      b.className = 'sw';
      b.style.background = color;
      if (border) b.style.borderColor = border;
      s.appendChild(b);
      s.appendChild(document.createTextNode(label));
      lg.appendChild(s);
    }
    sw('#f2b705', 'leader');
    sw('#9ec5e8', 'follower');
    sw('#bbb', 'down');
    sw('#b5d99c', 'balancer routing');
    sw('#4caf50', 'op ok');
    sw('#e53935', 'op failed');
    sw('#ff9800', 'op ambiguous');
    sw('#9e9e9e', 'unfinished');
    sw('#f3b6b6', 'partitioned');
    sw('rgba(217,164,0,.5)', 'paused');
    var s = document.createElement('span');
    s.textContent = 'marks: \u2715 crash, \u25b6 restart, \u25c6 disk fault, \u25cb recovery, \u2022 state change, dashed red arrow ending \u2715: lost message, red line: violation. Wheel: zoom; drag: pan.';
    lg.appendChild(s);
  }

  function parseHash() {
    var h = (window.location.hash || '').replace(/^#/, '');
    var out = {};
    h.split('&').forEach(function (kv) {
      var p = kv.split('=');
      if (p.length === 2) out[p[0]] = decodeURIComponent(p[1]);
    });
    return out;
  }

  function now() {
    return window.performance && performance.now ? performance.now() : 0;
  }

  function main() {
    var started = now();
    D = JSON.parse(document.getElementById('kvsim-data').textContent);
    var parsed = now();
    view = document.getElementById('view');
    svg = document.getElementById('svg');
    prepare();
    var prepared = now();
    var bad = D.violations.length;
    document.getElementById('title').textContent =
      (D.recorded ? 'kvsim replay: ' + D.scenario : 'kvsim: ' + D.scenario + ', seed ' + D.seed) + ' \u2014 ' +
      (bad ? bad + ' violation' + (bad === 1 ? '' : 's') : 'invariants hold') + ' \u2014 ' + ms(D.end_us) +
      (D.recorded ? ' recorded, ' : ' simulated, ') +
      D.messages.length + ' messages, ' + D.ops.length + ' operations';
    document.getElementById('about-text').textContent = D.about;
    document.getElementById('summary-text').textContent = D.summary;
    legend();
    var opts = parseHash();
    var box = document.getElementById('hide-chatter');
    if (opts.chatter === '1') box.checked = false;
    hideChatter = box.checked;
    box.addEventListener('change', function () { hideChatter = box.checked; schedule(); });
    t0 = 0;
    t1 = Math.max(1, D.end_us);
    if (opts.t) {
      var p = opts.t.split(',');
      var a = parseFloat(p[0]) * 1000, b = parseFloat(p[1]) * 1000;
      if (isFinite(a) && isFinite(b) && b > a) { t0 = a; t1 = b; }
    }
    document.getElementById('zoom-in').addEventListener('click', function () { zoom(0.5); });
    document.getElementById('zoom-out').addEventListener('click', function () { zoom(2); });
    document.getElementById('pan-left').addEventListener('click', function () { pan(-0.25); });
    document.getElementById('pan-right').addEventListener('click', function () { pan(0.25); });
    document.getElementById('reset').addEventListener('click', reset);
    view.addEventListener('wheel', function (e) {
      e.preventDefault();
      var r = svg.getBoundingClientRect();
      var at = tAt(e.clientX - r.left);
      zoom(e.deltaY > 0 ? 1.25 : 0.8, Math.max(t0, Math.min(t1, at)));
    }, { passive: false });
    var drag = null;
    view.addEventListener('mousedown', function (e) {
      if (e.button !== 0) return;
      drag = { x: e.clientX, t0: t0, t1: t1, moved: false };
    });
    window.addEventListener('mousemove', function (e) {
      if (drag) {
        var dx = e.clientX - drag.x;
        if (Math.abs(dx) > 3) { drag.moved = true; view.classList.add('dragging'); }
        if (drag.moved) {
          var dt = -dx / plotW * (drag.t1 - drag.t0);
          setWindow(drag.t0 + dt, drag.t1 + dt);
        }
      }
    });
    window.addEventListener('mouseup', function (e) {
      if (drag && !drag.moved) select(e.target);
      drag = null;
      view.classList.remove('dragging');
    });
    svg.addEventListener('mousemove', showTip);
    svg.addEventListener('mouseleave', function () { document.getElementById('tip').hidden = true; });
    window.addEventListener('keydown', function (e) {
      if (e.key === '+' || e.key === '=') zoom(0.5);
      else if (e.key === '-') zoom(2);
      else if (e.key === 'ArrowLeft') pan(-0.25);
      else if (e.key === 'ArrowRight') pan(0.25);
      else if (e.key === '0') reset();
    });
    window.addEventListener('resize', schedule);
    render();
    var done = now();
    // How long opening took, in milliseconds (see README, "Watching a run").
    view.setAttribute('data-ms-parse', (parsed - started).toFixed(1));
    view.setAttribute('data-ms-prepare', (prepared - parsed).toFixed(1));
    view.setAttribute('data-ms-render', (done - prepared).toFixed(1));
    view.setAttribute('data-ms-since-navigation', done.toFixed(1));
    view.setAttribute('data-ready', '1');
  }

  try {
    main();
  } catch (e) {
    report('JavaScript error: ' + (e && e.stack ? e.stack : e));
  }
})();
