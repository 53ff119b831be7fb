/// The page a node serves at `/`: this browser's session, and buttons that change it.
enum DemoPage {
    static let html = """
        <!doctype html>
        <html lang="en"><head><meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>SessionCluster node</title>
        <style>
        body{font-family:system-ui,sans-serif;max-width:32rem;margin:2rem auto;padding:0 1rem;color:#1d232a}
        .card{border:1px solid #d0d7de;border-radius:.5rem;padding:1rem;margin:1rem 0}
        .big{font-size:2.5rem;font-weight:700}
        button{font-size:1rem;padding:.5rem .9rem;margin:.2rem;border-radius:.4rem;border:1px solid #888;background:#f6f8fa}
        input{font-size:1rem;padding:.45rem;width:10rem}
        code{background:#f6f8fa;padding:.1rem .3rem}
        </style></head><body>
        <h1>SessionCluster</h1>
        <div class="card">
          <div>Answered by <code id="node">?</code></div>
          <div>Count <span class="big" id="count">0</span></div>
          <div>User <code id="user">nobody</code></div>
          <button id="inc">Increment</button>
          <input id="name" placeholder="name" maxlength="64"><button id="login">Log in</button>
          <button id="logout">Log out</button>
        </div>
        <p id="status"></p>
        <script>
        const $ = id => document.getElementById(id);
        function show(s){ $('node').textContent=s.node; $('count').textContent=s.count; $('user').textContent=s.user??'nobody'; }
        async function call(method, path, body){
          const r = await fetch(path,{method,headers:{'Content-Type':'application/json'},body:body?JSON.stringify(body):undefined,credentials:'same-origin'});
          const j = await r.json();
          $('status').textContent = r.ok ? '' : (j.message || ('HTTP '+r.status));
          if (r.ok) { show(j); }
          return j;
        }
        $('inc').onclick = () => call('POST','/api/counter').then(() => call('GET','/api/session'));
        $('login').onclick = () => call('POST','/api/login',{user:$('name').value});
        $('logout').onclick = () => call('POST','/api/logout');
        call('GET','/api/session');
        </script></body></html>
        """
}
