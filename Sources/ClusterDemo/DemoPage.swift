/// The dashboard every node serves at `/`, reached through the balancer: this
/// browser's session (which node answered, count, user, a log of the last
/// requests) and, when a supervisor runs the cluster, a live panel of its nodes
/// with buttons that kill, stop, resume and restart them (or all of them in turn: Rolling restart) or cut
/// one off in a network partition (Cut off / Heal partition, with which node reaches which), and of its
/// private redis-servers and Sentinel (role, master, slots, keys) with buttons that kill and restart them.
///
/// Plain HTML, CSS and JavaScript: no external fetches, usable at phone width.
/// Element ids and `data-*` attributes are a contract with the browser test
/// (Tests/ClusterDemoTests/DashboardBrowserTests.swift): `count`, `user`,
/// `node`, `inc`, `name`, `login`, `logout`, `status`, the "Your devices" panel's (DemoPage+Devices.swift), `cluster`, `rolling` (the Rolling restart
/// button) and `rolling-status` (its progress), `heal` and `reach` (the partition row), and per node
/// `[data-node=NAME]` holding `[data-field=state|health|requests|sessions|refusing]`
/// and `[data-action=kill|stop|resume|restart|isolate]`; per redis-server `[data-redis=NAME]`
/// holding `[data-field=state|role|slots|keys|pid|port|master]` and `[data-action=kill|restart]`.
enum DemoPage {
    static let html = #"""
        <!doctype html>
        <html lang="en"><head><meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <meta name="color-scheme" content="light dark">
        <title>SessionCluster demo</title>
        <style>
        :root{--bg:#f5f7fa;--card:#fff;--fg:#1d232a;--muted:#5b6672;--line:#d8dee4;--accent:#0b63ce;
          --ok:#1a7f37;--ok-bg:#dafbe1;--warn:#9a6700;--warn-bg:#fff3c4;--bad:#b42318;--bad-bg:#ffe1de;
          --info:#0b63ce;--info-bg:#ddeeff;--flash:#fff1a8}
        @media (prefers-color-scheme:dark){:root{--bg:#0e1116;--card:#161b22;--fg:#e6edf3;--muted:#9aa6b2;--line:#30363d;
          --accent:#58a6ff;--ok:#56d364;--ok-bg:#12351d;--warn:#e3b341;--warn-bg:#3b2e05;--bad:#ff7b72;--bad-bg:#4a1511;
          --info:#79c0ff;--info-bg:#0c2d5a;--flash:#5a4a00}}
        *{box-sizing:border-box}
        [hidden]{display:none!important}
        body{margin:0;background:var(--bg);color:var(--fg);font:16px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
        main{max-width:76rem;margin:0 auto;padding:1rem .75rem 2rem}
        h1{font-size:1.35rem;margin:.25rem 0}
        h2{font-size:1.05rem;margin:0 0 .6rem}
        h3{font-size:1rem;margin:0}
        p{margin:.3rem 0}
        .lead{color:var(--muted);margin-bottom:1rem}
        .grid{display:grid;gap:1rem;grid-template-columns:minmax(0,1fr);align-items:start}
        @media (min-width:52rem){.grid{grid-template-columns:minmax(20rem,24rem) minmax(0,1fr)}}
        section.panel{background:var(--card);border:1px solid var(--line);border-radius:.75rem;padding:1rem}
        code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.92em}
        .answered{display:flex;flex-wrap:wrap;align-items:baseline;gap:.4rem;margin-bottom:.6rem}
        #node{font-weight:700;font-size:1.15rem;padding:.05rem .45rem;border-radius:.35rem;background:var(--info-bg);color:var(--info)}
        #node.changed{animation:flash 1.2s ease-out}
        @keyframes flash{0%{background:var(--flash);transform:scale(1.12)}100%{background:var(--info-bg);transform:none}}
        #node-prev{color:var(--muted);font-size:.9rem}
        .stats{display:flex;gap:1.5rem;flex-wrap:wrap;margin:.4rem 0 .8rem}
        .stat .label{display:block;color:var(--muted);font-size:.85rem}
        #count{font-size:2.6rem;font-weight:750;line-height:1.1;font-variant-numeric:tabular-nums}
        #user{font-size:1.3rem;font-weight:600;display:inline-block;margin-top:.6rem;word-break:break-all}
        #user.nobody{color:var(--muted);font-weight:400;font-style:italic}
        .row{display:flex;flex-wrap:wrap;gap:.5rem;align-items:center;margin:.5rem 0}
        button{font:inherit;font-size:.95rem;padding:.45rem .85rem;border-radius:.5rem;border:1px solid var(--line);
          background:var(--bg);color:var(--fg);cursor:pointer;min-height:2.4rem}
        button:hover:not(:disabled){border-color:var(--accent)}
        button:focus-visible,input:focus-visible{outline:3px solid var(--accent);outline-offset:1px}
        button:disabled{opacity:.45;cursor:not-allowed}
        button.primary{background:var(--accent);border-color:var(--accent);color:#fff;font-weight:600}
        button.danger{color:var(--bad)}
        input{font:inherit;padding:.45rem .6rem;border-radius:.5rem;border:1px solid var(--line);background:var(--card);color:var(--fg);
          min-height:2.4rem;flex:1 1 8rem;min-width:0}
        label.inline{font-size:.9rem;color:var(--muted)}
        #status{min-height:1.5em;margin:.6rem 0 0;padding:.35rem .6rem;border-radius:.4rem;font-size:.92rem;word-break:break-word}
        #status:empty{padding:0}
        #status.error{background:var(--bad-bg);color:var(--bad)}
        #status.ok{background:var(--ok-bg);color:var(--ok)}
        details{margin-top:.8rem}
        summary{cursor:pointer;color:var(--muted);font-size:.92rem}
        table{width:100%;border-collapse:collapse;font-size:.82rem;margin-top:.4rem}
        th,td{text-align:left;padding:.2rem .3rem;border-bottom:1px solid var(--line);white-space:nowrap}
        th{color:var(--muted);font-weight:600}
        td.path{white-space:normal;word-break:break-all}
        td.num{text-align:right;font-variant-numeric:tabular-nums}
        tr.auto td{color:var(--muted)}
        tr.fail td.st{color:var(--bad);font-weight:700}
        .meta{display:flex;flex-wrap:wrap;gap:.4rem;align-items:center;margin-bottom:.6rem}
        .badge{display:inline-block;padding:.05rem .5rem;border-radius:1rem;font-size:.8rem;font-weight:600;
          background:var(--bg);color:var(--muted);border:1px solid var(--line)}
        .b-running,.b-up{background:var(--ok-bg);color:var(--ok);border-color:transparent}
        .b-stopped,.b-draining{background:var(--warn-bg);color:var(--warn);border-color:transparent}
        .b-dead,.b-down{background:var(--bad-bg);color:var(--bad);border-color:transparent}
        .b-restarting,.b-starting,.b-master{background:var(--info-bg);color:var(--info);border-color:transparent}
        #redis h3{font-size:.95rem;margin:1rem 0 .5rem}
        #redis-nodes{display:grid;gap:.6rem;grid-template-columns:repeat(auto-fill,minmax(min(100%,10rem),1fr))}
        #redis-nodes .actions{grid-template-columns:repeat(2,1fr)}
        #redis-nodes dl{grid-template-columns:repeat(2,1fr)}
        #redis-nodes dl div:last-child{grid-column:1/-1}
        .counters{font-size:.85rem;color:var(--muted)}
        .counters b{color:var(--fg);font-variant-numeric:tabular-nums}
        #nodes{display:grid;gap:.7rem;grid-template-columns:repeat(auto-fill,minmax(min(100%,13rem),1fr))}
        .nodecard{border:1px solid var(--line);border-radius:.6rem;padding:.7rem;background:var(--card);transition:border-color .3s}
        .nodecard.you{border-color:var(--accent);box-shadow:0 0 0 1px var(--accent)}
        .nodecard.gone{opacity:.8}
        .nodecard header{display:flex;justify-content:space-between;align-items:center;gap:.4rem;margin-bottom:.35rem}
        .youtag{font-size:.72rem;font-weight:700;color:var(--accent);text-transform:uppercase;letter-spacing:.03em}
        .nodecard dl{display:grid;grid-template-columns:repeat(3,1fr);gap:.25rem .5rem;margin:.5rem 0}
        .nodecard dt{font-size:.72rem;color:var(--muted)}
        .nodecard dd{margin:0;font-weight:600;font-variant-numeric:tabular-nums}
        .exit{font-size:.8rem;color:var(--bad)}
        .actions{display:grid;grid-template-columns:repeat(4,1fr);gap:.3rem}
        .actions button{padding:.35rem .2rem;font-size:.82rem;min-height:2.2rem}
        .note{color:var(--muted);font-size:.92rem}
        \#(devicesStyle)
        .live{display:inline-block;width:.55rem;height:.55rem;border-radius:50%;background:var(--ok);margin-right:.3rem}
        .live.stale{background:var(--bad)}
        #hint{font-size:.9rem;color:var(--muted);margin-top:.6rem}
        </style></head><body>
        <main>
        <h1>SessionCluster</h1>
        <p class="lead">Every request goes through a round-robin balancer to one of the nodes.
        Watch <em>Answered by</em> change while your count stays: the session lives in the cluster, not in one node.</p>
        <div class="grid">
        <section class="panel" aria-labelledby="session-h">
          <h2 id="session-h">Your session</h2>
          <div class="answered" aria-live="polite">
            <span>Answered by</span> <span id="node" class="mono" title="The node that answered this browser's last request">—</span>
            <span id="node-prev"></span>
          </div>
          <div class="stats">
            <div class="stat"><span class="label" id="count-label">Count</span><span id="count" aria-labelledby="count-label">0</span></div>
            <div class="stat"><span class="label" id="user-label">User</span><span id="user" class="nobody" aria-labelledby="user-label">nobody</span></div>
          </div>
          <div class="row">
            <button id="inc" class="primary" type="button">Increment</button>
            <button id="logout" type="button">Log out</button>
            <button id="refresh" type="button" title="GET /api/session">Refresh</button>
          </div>
          <form id="login-form" class="row" autocomplete="off">
            <label for="name" class="inline">Name</label>
            <input id="name" name="name" maxlength="64" placeholder="ada" aria-describedby="login-help">
            <button id="login" type="submit">Log in</button>
          </form>
          <p id="login-help" class="note" hidden>Logging in gives the session a new ID and keeps its count.</p>
          <p id="status" role="status" aria-live="polite"></p>
        \#(devicesPanel)
          <details open>
            <summary>Last requests</summary>
            <table aria-label="The last requests of this page">
              <thead><tr><th scope="col">Method</th><th scope="col">Path</th><th scope="col">Status</th><th scope="col">Node</th><th scope="col" class="num">ms</th></tr></thead>
              <tbody id="log"></tbody>
            </table>
          </details>
        </section>
        <section class="panel" id="cluster" aria-labelledby="cluster-h">
          <h2 id="cluster-h"><span class="live stale" id="live" aria-hidden="true"></span>Cluster</h2>
          <div class="meta">
            <span class="badge" id="strategy" title="Where sessions live">strategy ?</span>
            <span class="badge" id="mode" title="Replication mode" hidden></span>
            <span class="counters" id="balancer" aria-label="Balancer counters"></span>
          </div>
          <p class="note" id="cluster-error" role="alert" hidden></p>
          <div id="nodes" aria-live="off"></div>
          <div class="row">
            <button id="rolling" type="button" title="Restart every node in turn (SIGTERM, then start it again), each once the one before is back up">Rolling restart</button>
            <span id="rolling-status" class="note" aria-live="polite"></span>
          </div>
          <div class="row" id="partition" hidden>
            <button id="heal" type="button" title="Every cut link works again">Heal partition</button>
            <span id="reach" class="note mono" aria-live="polite" title="Which nodes (and redis) each node reaches over its links"></span>
          </div>
          <div id="redis" hidden>
            <h3 id="redis-h">Redis</h3>
            <div id="redis-nodes" aria-labelledby="redis-h" aria-live="off"></div>
          </div>
          <p id="hint"></p>
        </section>
        </div>
        <p class="note" id="cluster-note" hidden>No cluster panel: this node runs without the supervisor (start it with <code>session-cluster demo</code>).</p>
        </main>
        <script>
        'use strict';
        const $ = id => document.getElementById(id);
        const TIMEOUT_MS = 5000, LOG_SIZE = 10, CLUSTER_EVERY_MS = 1000, SESSION_EVERY_MS = 2000, STANDALONE_EVERY_MS = 15000;
        const ui = {epoch: 0, busy: 0, queue: Promise.resolve(), node: null, auto: false, cards: new Map(), redisCards: new Map(), clusterTimer: 0, clusterBusy: false, sessionTimer: 0, rollingBusy: false};
        const HINTS = {
          replicate: 'Every node keeps a copy of every session. Kill the node that answered you, then increment: the count goes on.',
          redis: 'Sessions live in Redis; nodes keep nothing. Kill any node, then increment: the count goes on. Kill redis and they answer 503 until you restart it.',
          'redis-sentinel': 'Sessions live in Redis: redis-1 is the master, the others its replicas, and sentinel-1 watches them; the nodes ask it where the master is. Kill redis-1: within a few seconds the Sentinel promotes a replica (watch its role and sentinel-1\'s master) and the count goes on. Restart redis-1: it comes back empty and the Sentinel makes it a replica about 10 s later.',
          'redis-cluster': 'Sessions live in a Redis Cluster. Kill a master: within a few seconds its replica becomes master (watch its role and slots) and the count goes on. Restart the killed one: it rejoins as a replica.',
          local: 'Each node keeps its own sessions, so round robin breaks them: watch the count change with the node.'
        };

        // Beyond loopback the control API needs the token the demo printed in this page's address
        // (#token=...); the fragment never leaves the browser. Taken once, then out of the address bar.
        const CONTROL_TOKEN = (() => {
          const m = /(?:^#|&)token=([0-9A-Za-z._~-]+)/.exec(location.hash);
          if (m && history.replaceState) history.replaceState(null, '', location.pathname + location.search);
          return m ? m[1] : null;
        })();

        function newKey() {
          if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
          return Date.now().toString(36) + '-' + Math.random().toString(36).slice(2) + Math.random().toString(36).slice(2);
        }

        // One request: never throws, never trusts the body to be JSON.
        async function request(method, path, body, headers) {
          const started = performance.now();
          const ctl = new AbortController();
          const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
          const res = {method, path, status: 0, data: null, text: '', served: null, error: null, ok: false, ms: 0};
          try {
            const init = {method, credentials: 'same-origin', cache: 'no-store', signal: ctl.signal, headers: {Accept: 'application/json'}};
            if (body !== undefined) { init.headers['Content-Type'] = 'application/json'; init.body = JSON.stringify(body); }
            Object.assign(init.headers, headers);
            if (CONTROL_TOKEN && path.startsWith('/_cluster/')) init.headers['Authorization'] = 'Bearer ' + CONTROL_TOKEN;
            // A key makes the increment safe to repeat: the balancer may retry it on another node, which answers from the record.
            if (method === 'POST' && path === '/api/counter') { init.headers['Idempotency-Key'] = newKey(); }
            const r = await fetch(path, init);
            res.status = r.status;
            res.served = r.headers.get('X-Served-By');
            res.text = await r.text();
            try { res.data = JSON.parse(res.text); } catch (_) { res.data = null; }
          } catch (e) {
            res.error = e && e.name === 'AbortError' ? 'no answer within ' + (TIMEOUT_MS / 1000) + ' s' : 'network error' + (e && e.message ? ': ' + e.message : '');
          } finally {
            clearTimeout(timer);
          }
          res.ms = Math.round(performance.now() - started);
          res.ok = res.status >= 200 && res.status < 300 && res.data !== null && typeof res.data === 'object';
          return res;
        }

        // The message of an error answer, whatever its shape.
        function problem(res) {
          if (res.error) return res.error;
          const d = res.data, parts = [];
          if (d && typeof d === 'object') {
            const e = d.error;
            if (e && typeof e === 'object') { if (e.message) parts.push(String(e.message)); if (e.code) parts.push('(' + e.code + ')'); }
            else { if (typeof d.message === 'string') parts.push(d.message); if (typeof e === 'string') parts.push('(' + e + ')'); }
          }
          if (!parts.length) {
            const t = res.text.trim();
            parts.push(!t ? 'empty answer' : res.data === null ? 'not JSON: ' + (t.length > 100 ? t.slice(0, 100) + '…' : t) : 'unexpected answer');
          }
          return (res.status ? 'HTTP ' + res.status + ' — ' : '') + parts.join(' ');
        }

        function setStatus(text, kind, auto) {
          const s = $('status');
          s.textContent = text;
          s.className = text ? kind : '';
          ui.auto = !!auto;
        }

        function addLog(res, node, auto) {
          const tr = document.createElement('tr');
          if (auto) tr.className = 'auto';
          if (!res.ok) tr.className += ' fail';
          const cells = [[res.method, ''], [res.path + (auto ? ' (auto)' : ''), 'path'], [res.status || 'ERR', 'st'], [node || '—', 'mono'], [res.ms, 'num']];
          for (const [text, cls] of cells) { const td = document.createElement('td'); td.textContent = text; if (cls) td.className = cls; tr.append(td); }
          if (!res.ok) tr.title = problem(res);
          const log = $('log');
          log.prepend(tr);
          while (log.rows.length > LOG_SIZE) log.deleteRow(-1);
        }

        function showNode(node) {
          if (!node || node === ui.node) return;
          const el = $('node');
          if (ui.node) {
            $('node-prev').textContent = '(was ' + ui.node + ')';
            el.classList.remove('changed'); void el.offsetWidth; el.classList.add('changed');
          }
          ui.node = node;
          el.textContent = node;
          for (const [name, card] of ui.cards) markYou(card, name === node);
        }

        function showSession(d) {
          if (typeof d.count === 'number') $('count').textContent = d.count;
          if ('user' in d) {
            const u = $('user');
            u.textContent = d.user == null ? 'nobody' : String(d.user);
            u.classList.toggle('nobody', d.user == null);
          }
        }

        // A session API call. The user's calls run one at a time, in order: two
        // quick clicks before the first answer set the cookie would otherwise
        // start two sessions. An automatic refresh is shown only when no call
        // of the user's ran meanwhile (its answer may predate theirs).
        async function sessionCall(method, path, body, auto, done) {
          const epoch = ui.epoch;
          if (!auto) { ui.busy++; ui.epoch++; }
          const res = await request(method, path, body);
          if (!auto) { ui.busy--; ui.epoch++; }
          const node = res.data && typeof res.data.node === 'string' ? res.data.node : res.served;
          addLog(res, node, auto);
          showNode(node);
          if (res.ok) {
            if (!auto || (ui.busy === 0 && ui.epoch === epoch)) devicesAfter(res.data);
            if (!auto || (ui.busy === 0 && ui.epoch === epoch)) showSession(res.data);
            if (!auto && done) setStatus(done(res.data), 'ok');
            else if (auto && ui.auto) setStatus('', '');
          } else if (!auto || !$('status').textContent || ui.auto) {
            setStatus(method + ' ' + path + ': ' + problem(res), 'error', auto);
          }
          return res;
        }

        function userCall(method, path, body, done) {
          const run = () => sessionCall(method, path, body, false, done);
          ui.queue = ui.queue.then(run, run);
          return ui.queue;
        }

        $('inc').addEventListener('click', () => userCall('POST', '/api/counter', undefined,
          d => 'Incremented to ' + d.count + ' by ' + d.node));
        $('logout').addEventListener('click', () => userCall('POST', '/api/logout', undefined,
          d => 'Logged out by ' + d.node + '; the session is gone'));
        $('refresh').addEventListener('click', () => userCall('GET', '/api/session', undefined,
          d => 'Read by ' + d.node));
        $('name').addEventListener('input', () => {
          const n = $('name').value.trim();
          $('login').textContent = n ? 'Log in as ' + (n.length > 16 ? n.slice(0, 16) + '…' : n) : 'Log in';
          $('login-help').hidden = !n;
        });
        $('login-form').addEventListener('submit', e => {
          e.preventDefault();
          const name = $('name').value.trim();
          if (!name) { setStatus('Type a name to log in.', 'error'); $('name').focus(); return; }
          userCall('POST', '/api/login', {user: name}, d => 'Logged in as ' + d.user + ' by ' + d.node);
        });

        function scheduleSession() {
          clearTimeout(ui.sessionTimer);
          ui.sessionTimer = setTimeout(async () => {
            if (!document.hidden) await sessionCall('GET', '/api/session', undefined, true);
            scheduleSession();
          }, SESSION_EVERY_MS);
        }

        \#(devicesScript)
        // --- The cluster panel ---
        const ACTIONS = [
          ['kill', 'Kill', 'SIGKILL: the process dies at once', s => s === 'running' || s === 'stopped'],
          ['stop', 'Stop', 'SIGSTOP: the process freezes, its connections hang', s => s === 'running'],
          ['resume', 'Resume', 'SIGCONT: a stopped process goes on', s => s === 'stopped'],
          ['restart', 'Restart', 'Start the node again (kills it first if it runs)', s => s !== 'restarting'],
          ['isolate', 'Cut off', 'A network partition: its links to the other nodes (and to redis) go silent until healed; the balancer still reaches it', (s, n) => s === 'running' && Array.isArray(n.reaches) && n.reaches.length > 0]
        ];
        const FIELDS = [['requests', 'Requests'], ['sessions', 'Sessions'], ['pid', 'PID'], ['port', 'Port'], ['restarts', 'Restarts']];

        function badgeClass(v) { return 'badge b-' + String(v).toLowerCase().replace(/[^a-z]/g, ''); }

        // A card: a title, badges, a list of fields, and action buttons ('kill' and 'stop' in red).
        function makeCardOf(kind, name, label, badges, fields, actions, extras) {
          const card = document.createElement('article');
          card.className = 'nodecard';
          card.dataset[kind] = name;
          card.setAttribute('aria-label', label + ' ' + name);
          const head = document.createElement('header');
          const h = document.createElement('h3'); h.className = 'mono'; h.textContent = name;
          head.append(h, ...extras.head);
          const meta = document.createElement('div'); meta.className = 'meta';
          for (const f of badges) {
            const b = document.createElement('span'); b.dataset.field = f; b.className = 'badge'; b.title = f; meta.append(b);
          }
          const dl = document.createElement('dl');
          for (const [f, text] of fields) {
            const div = document.createElement('div');
            const dt = document.createElement('dt'); dt.textContent = text;
            const dd = document.createElement('dd'); dd.dataset.field = f; dd.textContent = '—';
            div.append(dt, dd); dl.append(div);
          }
          const buttons = document.createElement('div'); buttons.className = 'actions';
          for (const [action, text, title] of actions) {
            const b = document.createElement('button');
            b.type = 'button'; b.dataset.action = action; b.textContent = text; b.title = title;
            b.setAttribute('aria-label', text + ' ' + name);
            if (action === 'kill' || action === 'stop' || action === 'isolate') b.className = 'danger';
            buttons.append(b);
          }
          card.append(head, meta, dl, ...extras.body, buttons);
          return card;
        }

        function makeCard(name) {
          const tag = document.createElement('span'); tag.className = 'youtag'; tag.textContent = 'answered you'; tag.hidden = true;
          const exit = document.createElement('p'); exit.className = 'exit'; exit.dataset.field = 'lastExit'; exit.hidden = true;
          const share = document.createElement('p'); share.className = 'exit'; share.dataset.field = 'balancerNote'; share.hidden = true;
          const refusing = document.createElement('p'); refusing.className = 'exit'; refusing.dataset.field = 'refusing'; refusing.hidden = true;
          return makeCardOf('node', name, 'Node', ['state', 'health'], FIELDS, ACTIONS, { head: [tag], body: [refusing, share, exit] });
        }

        function markYou(card, yes) {
          card.classList.toggle('you', yes);
          card.querySelector('.youtag').hidden = !yes;
        }

        function field(card, name) { return card.querySelector('[data-field="' + name + '"]'); }

        function updateCard(card, n) {
          const state = String(n.state ?? 'unknown'), health = String(n.health ?? 'unknown');
          const st = field(card, 'state'), he = field(card, 'health');
          st.textContent = state; st.className = badgeClass(state);
          he.textContent = health; he.className = badgeClass(health);
          for (const [f] of FIELDS) field(card, f).textContent = n[f] == null ? '—' : String(n[f]);
          const exit = field(card, 'lastExit');
          exit.textContent = n.lastExit ? 'Last exit: ' + n.lastExit : '';
          exit.hidden = !n.lastExit;
          const note = field(card, 'balancerNote');  // why the balancer sends it fewer requests now
          note.textContent = n.balancerNote ? 'Balancer: ' + n.balancerNote : '';
          note.hidden = !n.balancerNote;
          const refusing = field(card, 'refusing');  // why it answers 503: rejoining without a majority, its store cut off
          refusing.textContent = n.refusing ? 'Refuses to serve: ' + n.refusing : '';
          refusing.hidden = !n.refusing;
          card.classList.toggle('gone', state === 'dead');
          const busy = card.dataset.busy === '1';
          for (const [action, , , allowed] of ACTIONS) {
            const b = card.querySelector('[data-action="' + action + '"]');
            b.disabled = busy || !allowed(state, n);
            if (action === 'isolate') b.hidden = !Array.isArray(n.reaches);
          }
          markYou(card, n.name === ui.node);
        }

        function renderCluster(s) {
          $('cluster').hidden = false;
          $('cluster-note').hidden = true;
          $('cluster-error').hidden = true;
          $('live').classList.remove('stale');
          $('strategy').textContent = 'strategy ' + (s.strategy ?? '?');
          const mode = $('mode');
          mode.hidden = !s.replicationMode;
          mode.textContent = s.replicationMode ? s.replicationMode + ' replication' : '';
          const b = s.balancer || {};
          const counters = $('balancer');
          counters.textContent = '';
          for (const [k, label] of [['requests', 'requests'], ['retries', 'retries'], ['badGateway', '502s'], ['noBackend', '503s']]) {
            if (b[k] == null) continue;
            const strong = document.createElement('b'); strong.textContent = b[k];
            counters.append(strong, ' ' + label + '  ');
          }
          $('hint').textContent = HINTS[s.redisSentinel === true ? 'redis-sentinel' : s.strategy] || '';
          const grid = $('nodes'), seen = new Set();
          for (const n of s.nodes) {
            if (!n || typeof n.name !== 'string') continue;
            seen.add(n.name);
            let card = ui.cards.get(n.name);
            if (!card) { card = makeCard(n.name); ui.cards.set(n.name, card); grid.append(card); }
            updateCard(card, n);
          }
          for (const [name, card] of ui.cards) if (!seen.has(name)) { card.remove(); ui.cards.delete(name); }
          renderRedis(Array.isArray(s.redisNodes) ? s.redisNodes : []);
          renderRolling(s.rollingRestart && typeof s.rollingRestart === 'object' ? s.rollingRestart : null);
          renderPartition(s);
        }

        // Which node reaches which over its links: "node-1 → node-2 ✓ node-3 ✗ redis ✓".
        function renderPartition(s) {
          const p = s.partitions && typeof s.partitions === 'object' ? s.partitions : null;
          $('partition').hidden = !(p && p.available);
          if (!p || !p.available) return;
          const cut = Array.isArray(p.cutLinks) ? p.cutLinks : [];
          $('heal').disabled = cut.length === 0;
          const names = s.nodes.map(n => n && n.name).filter(n => typeof n === 'string');
          const lines = [];
          for (const n of s.nodes) {
            if (!n || !Array.isArray(n.reaches)) continue;
            const targets = names.filter(m => m !== n.name).concat(s.strategy === 'redis' ? ['redis'] : []);
            lines.push(n.name + ' → ' + targets.map(t => t + (n.reaches.includes(t) ? ' ✓' : ' ✗')).join('  '));
          }
          $('reach').textContent = cut.length === 0 ? 'No partition: every node reaches every other.' : lines.join('   |   ');
        }

        // The rolling restart: which node it is at, or how the last one ended.
        function renderRolling(r) {
          const running = !!(r && r.inProgress);
          $('rolling').disabled = running || ui.rollingBusy;
          const order = r && Array.isArray(r.order) ? r.order : [];
          let text = '';
          if (running) text = 'Rolling restart: restarting ' + (r.node ?? '…') + (r.step ? ' (' + r.step + ' of ' + order.length + ')' : '');
          else if (r && r.result) text = 'Last rolling restart: ' + r.result;
          $('rolling-status').textContent = text;
        }

        // --- The private redis-servers ---
        const REDIS_ACTIONS = [
          ['kill', 'Kill', 'SIGKILL: redis-server dies at once', s => s === 'up'],
          ['restart', 'Restart', 'Start it again on its port (a cluster node rejoins; an old master becomes a replica)', s => s !== 'restarting']
        ];
        const REDIS_FIELDS = [['slots', 'Slots'], ['keys', 'Keys'], ['pid', 'PID'], ['port', 'Port'], ['master', 'Master']];

        function makeRedisCard(name) {
          return makeCardOf('redis', name, 'Redis', ['state', 'role'], REDIS_FIELDS, REDIS_ACTIONS, { head: [], body: [] });
        }

        function updateRedisCard(card, n) {
          const state = String(n.state ?? 'unknown'), role = n.role == null ? '—' : String(n.role);
          const st = field(card, 'state'), ro = field(card, 'role');
          st.textContent = state; st.className = badgeClass(state);
          ro.textContent = role; ro.className = badgeClass(role);
          ro.title = n.clusterState ? 'cluster state as it sees it: ' + n.clusterState : 'role';
          for (const [f] of REDIS_FIELDS) field(card, f).textContent = n[f] == null ? '—' : String(n[f]);
          card.classList.toggle('gone', state === 'down');
          const busy = card.dataset.busy === '1';
          for (const [action, , , allowed] of REDIS_ACTIONS) card.querySelector('[data-action="' + action + '"]').disabled = busy || !allowed(state);
        }

        function renderRedis(list) {
          $('redis').hidden = list.length === 0;
          const grid = $('redis-nodes'), seen = new Set();
          for (const n of list) {
            if (!n || typeof n.name !== 'string') continue;
            seen.add(n.name);
            let card = ui.redisCards.get(n.name);
            if (!card) { card = makeRedisCard(n.name); ui.redisCards.set(n.name, card); grid.append(card); }
            updateRedisCard(card, n);
          }
          for (const [name, card] of ui.redisCards) if (!seen.has(name)) { card.remove(); ui.redisCards.delete(name); }
        }

        async function pollCluster() {
          clearTimeout(ui.clusterTimer);
          if (ui.clusterBusy) return;
          ui.clusterBusy = true;
          let next = CLUSTER_EVERY_MS;
          try {
            if (document.hidden) return;
            const res = await request('GET', '/_cluster/status');
            if (res.ok && Array.isArray(res.data.nodes)) {
              renderCluster(res.data);
            } else if (res.status === 404 || (res.status && res.data === null) || (res.ok && !Array.isArray(res.data.nodes))) {
              // A node run on its own: no supervisor behind this address.
              $('cluster').hidden = true;
              $('cluster-note').hidden = false;
              next = STANDALONE_EVERY_MS;
            } else {
              $('live').classList.add('stale');
              const e = $('cluster-error');
              e.textContent = 'Cluster status unavailable: ' + problem(res);
              e.hidden = false;
            }
          } finally {
            ui.clusterBusy = false;
            ui.clusterTimer = setTimeout(pollCluster, next);
          }
        }

        // A kill/stop/resume/restart button of a node card (kind 'nodes') or a redis card (kind 'redis').
        async function controlClick(e, kind) {
          const button = e.target.closest('button[data-action]');
          const card = button && button.closest(kind === 'redis' ? '[data-redis]' : '[data-node]');
          if (!card || button.disabled) return;
          const name = kind === 'redis' ? card.dataset.redis : card.dataset.node, action = button.dataset.action;
          card.dataset.busy = '1';
          for (const b of card.querySelectorAll('button')) b.disabled = true;
          // The control API refuses a POST without this header (ControlAPI.controlHeader): other pages cannot send it.
          const res = await request('POST', '/_cluster/' + kind + '/' + encodeURIComponent(name) + '/' + action, undefined, {'X-Cluster-Control': '1'});
          delete card.dataset.busy;
          addLog(res, res.data && (res.data.node || res.data.redis), false);
          if (res.ok) setStatus(name + ': ' + action + ' → ' + (res.data.state ?? 'done'), 'ok');
          else setStatus(action + ' ' + name + ': ' + problem(res), 'error');
          pollCluster();
        }
        $('nodes').addEventListener('click', e => controlClick(e, 'nodes'));
        $('rolling').addEventListener('click', async () => {
          if ($('rolling').disabled) return;
          ui.rollingBusy = true;
          $('rolling').disabled = true;
          // Like every control POST: the API refuses one without this header (ControlAPI.controlHeader).
          const res = await request('POST', '/_cluster/rolling-restart', undefined, {'X-Cluster-Control': '1'});
          ui.rollingBusy = false;
          addLog(res, null, false);
          if (res.ok) setStatus('Rolling restart started: ' + (Array.isArray(res.data.order) ? res.data.order.join(', ') : ''), 'ok');
          else setStatus('Rolling restart: ' + problem(res), 'error');
          pollCluster();
        });
        $('redis-nodes').addEventListener('click', e => controlClick(e, 'redis'));
        $('heal').addEventListener('click', async () => {
          if ($('heal').disabled) return;
          $('heal').disabled = true;
          const res = await request('POST', '/_cluster/heal', undefined, {'X-Cluster-Control': '1'});
          addLog(res, null, false);
          if (res.ok) setStatus('Partition healed', 'ok');
          else setStatus('Heal: ' + problem(res), 'error');
          pollCluster();
        });

        sessionCall('GET', '/api/session', undefined, true).then(scheduleSession);
        pollCluster();
        document.addEventListener('visibilitychange', () => { if (!document.hidden) pollCluster(); });
        </script>
        </body></html>
        """#
}
