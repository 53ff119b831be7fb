/// The dashboard's "Your devices" panel: the sessions of the logged-in user
/// (`GET /api/sessions`), each with its client, the node that last served it
/// and when it was last used, "this device" on the browser's own, a Log out
/// button on each of the others (`DELETE /api/sessions/{handle}`) and "Log
/// out other devices" (`POST /api/sessions/revoke-others`), and the user's
/// session events as they arrive (`GET /api/events`: each node answers with
/// the events it delivered, so the page gathers them from whichever nodes
/// the balancer picks). Hidden while nobody is logged in.
///
/// Ids and attributes for the browser test: `devices` (the panel),
/// `device-list` of `li[data-handle]` (`data-current="true"` on this
/// device's) with `[data-action=revoke]` buttons, `revoke-others`, and
/// `event-list` of `li[data-kind]`.
extension DemoPage {
    static let devicesPanel = #"""
          <div id="devices" hidden>
            <h3 id="devices-h">Your devices</h3>
            <ul id="device-list" class="devices" aria-labelledby="devices-h"></ul>
            <div class="row"><button id="revoke-others" type="button" title="End every other session of this user">Log out other devices</button></div>
            <h3 id="events-h">Events</h3>
            <ol id="event-list" class="events" aria-labelledby="events-h" aria-live="polite"></ol>
          </div>
        """#

    static let devicesStyle = #"""
        .devices{list-style:none;padding:0;margin:.4rem 0}
        .devices li{padding:.3rem 0;border-top:1px solid var(--line)}
        .devices .client{font-weight:600;overflow-wrap:anywhere}
        .events{padding-left:1.2rem;margin:.3rem 0;font-size:.9rem;max-height:12rem;overflow:auto}
        """#

    static let devicesScript = #"""
        // --- Your devices: the sessions of the logged-in user ---
        function usedAgo(ms) {
          const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
          return s < 60 ? s + ' s ago' : s < 3600 ? Math.round(s / 60) + ' min ago' : Math.round(s / 3600) + ' h ago';
        }

        function deviceItem(s) {
          const li = document.createElement('li');
          li.dataset.handle = s.handle;
          if (s.current) li.dataset.current = 'true';
          const name = document.createElement('span');
          name.className = 'client';
          name.textContent = s.client || 'unknown client';
          li.append(name);
          if (s.current) {
            const badge = document.createElement('span');
            badge.className = 'badge b-running';
            badge.textContent = 'this device';
            li.append(' ', badge);
          }
          const meta = document.createElement('div');
          meta.className = 'note';
          meta.textContent = (s.node ? 'last on ' + s.node + ' · ' : '') + 'used ' + usedAgo(s.lastAccess);
          li.append(meta);
          if (!s.current) {
            const button = document.createElement('button');
            button.type = 'button';
            button.dataset.action = 'revoke';
            button.textContent = 'Log out';
            button.title = 'End that session';
            button.addEventListener('click', () => userCall('DELETE', '/api/sessions/' + encodeURIComponent(s.handle), undefined,
              d => 'Logged that device out (' + d.node + ')').then(refreshDevices));
            li.append(button);
          }
          return li;
        }

        async function refreshDevices() {
          const res = await request('GET', '/api/sessions');
          if (!res.ok || !Array.isArray(res.data.sessions)) {
            $('devices').hidden = true;
            $('device-list').replaceChildren();
            return;
          }
          $('devices').hidden = false;
          $('device-list').replaceChildren(...res.data.sessions.map(deviceItem));
          $('revoke-others').disabled = res.data.sessions.length < 2;
          refreshEvents(res.data.user);
        }

        // Each node answers with the events it delivered: gather them, newest first, once each.
        const seenEvents = new Map();
        async function refreshEvents(user) {
          if (ui.eventsUser !== user) { seenEvents.clear(); ui.eventsUser = user; }
          const res = await request('GET', '/api/events');
          if (!res.ok || !Array.isArray(res.data.events)) return;
          for (const e of res.data.events) seenEvents.set(e.kind + ' ' + e.handle + ' ' + e.at, Object.assign({node: res.data.node}, e));
          const items = [...seenEvents.values()].sort((a, b) => b.at - a.at).slice(0, 30).map(e => {
            const li = document.createElement('li');
            li.dataset.kind = e.kind;
            li.textContent = new Date(e.at).toLocaleTimeString() + ' ' + e.kind + ' ' + e.handle.slice(0, 6) + '… (' + e.node + ')';
            return li;
          });
          $('event-list').replaceChildren(...items);
        }

        // After each answer about the session: the panel follows who is logged in.
        function devicesAfter(d) {
          if (!('user' in d)) return;
          if (d.user == null) { $('devices').hidden = true; $('device-list').replaceChildren(); }
          else refreshDevices();
        }

        $('revoke-others').addEventListener('click', () => userCall('POST', '/api/sessions/revoke-others', undefined,
          d => 'Logged out ' + d.revoked + ' other device' + (d.revoked === 1 ? '' : 's') + ' (' + d.node + ')').then(refreshDevices));

        """#
}
