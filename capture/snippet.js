/* Nurture snippet: anonymous id cookie, page views, track/identify/page batched to /v1/batch.
   <script src="https://HOST/v1/snippet.js" data-write-key="wk_..." async></script> */
(function (w, d, nav) {
  "use strict";
  var stub = w.nurture;
  if (stub && stub.loaded) return;

  var UTM = { source: "utm_source", medium: "utm_medium", name: "utm_campaign",
              term: "utm_term", content: "utm_content" };
  var script = d.currentScript || d.querySelector("script[data-write-key]");
  var config = { writeKey: null, host: null, honorDoNotTrack: false, autoPage: true };
  if (script) {
    config.writeKey = script.getAttribute("data-write-key");
    config.honorDoNotTrack = script.getAttribute("data-honor-dnt") === "true";
    try { config.host = new URL(script.src).origin; } catch (e) { /* inline: host from init */ }
  }
  var queue = [], timer = null, retryDelay = 1000, started = false;
  var anonymousId = readCookie() || uuid();
  var userId = store("getItem", "nurture_uid");

  function uuid() {
    if (w.crypto.randomUUID) return crypto.randomUUID();
    var b = crypto.getRandomValues(new Uint8Array(16)), h = "";
    b[6] = (b[6] & 15) | 64;
    b[8] = (b[8] & 63) | 128;
    for (var i = 0; i < 16; i++) h += (b[i] + 256).toString(16).slice(1) + ([3, 5, 7, 9].indexOf(i) >= 0 ? "-" : "");
    return h;
  }

  function store(method, key, value) {
    try { return w.localStorage[method](key, value); } catch (e) { return null; }
  }

  function readCookie() {
    var match = d.cookie.match(/(?:^|;\s*)nurture_aid=([^;]*)/);
    return match ? decodeURIComponent(match[1]) : null;
  }

  function writeCookie(value) {
    var cookie = "nurture_aid=" + encodeURIComponent(value) + "; path=/; SameSite=Lax; expires=" +
      new Date(Date.now() + 31536e6).toUTCString() + (location.protocol === "https:" ? "; Secure" : "");
    var labels = location.hostname.split(".");
    // The widest domain the browser accepts (example.com for www.example.com) lets subdomains
    // share one visitor; browsers refuse public suffixes such as com.cn.
    if (labels.length > 1 && !/^[\d.]+$/.test(location.hostname)) {
      for (var i = labels.length - 2; i >= 0; i--) {
        d.cookie = cookie + "; domain=" + labels.slice(i).join(".");
        if (readCookie() === value) return;
      }
    }
    d.cookie = cookie;
  }

  function tracking() {
    var dnt = nav.doNotTrack || w.doNotTrack;
    return !(config.honorDoNotTrack && (dnt === "1" || dnt === "yes"));
  }

  function pageInfo() {
    return { url: location.href, path: location.pathname, title: d.title,
             referrer: d.referrer, search: location.search };
  }

  function send(type, fields) {
    if (!tracking()) return;
    var params = new URLSearchParams(location.search), campaign = null;
    for (var key in UTM) if (params.get(UTM[key])) (campaign = campaign || {})[key] = params.get(UTM[key]);
    var context = { library: { name: "nurture.js", version: "1.0.0" }, page: pageInfo(),
                    userAgent: nav.userAgent, locale: nav.language };
    if (campaign) context.campaign = campaign;
    try { context.timezone = Intl.DateTimeFormat().resolvedOptions().timeZone; } catch (e) { /* old */ }
    var message = { type: type, messageId: uuid(), timestamp: new Date().toISOString(),
                    anonymousId: anonymousId, userId: userId, context: context };
    for (key in fields) message[key] = fields[key];
    queue.push(message);
    schedule(50);
  }

  function schedule(delay) {
    if (!timer && started) timer = setTimeout(flush, delay);
  }

  function payload(batch) {
    var sentAt = new Date().toISOString();
    batch.forEach(function (m) { m.sentAt = sentAt; m.writeKey = config.writeKey; });
    return JSON.stringify({ batch: batch, sentAt: sentAt, writeKey: config.writeKey });
  }

  function flush() {
    timer = null;
    if (!queue.length || !started) return;
    var batch = queue.splice(0, 20);
    // text/plain keeps the request simple (no CORS preflight); the API reads it as JSON.
    fetch(config.host + "/v1/batch", { method: "POST", body: payload(batch), keepalive: true,
                                       credentials: "omit", headers: { "Content-Type": "text/plain" } })
      .then(function (r) {
        if (r.status >= 500 || r.status === 429) retry(batch); else retryDelay = 1000;
      }, function () { retry(batch); });
    schedule(0);
  }

  function retry(batch) {
    queue = batch.concat(queue);
    schedule(retryDelay);
    retryDelay = Math.min(retryDelay * 2, 60000);
  }

  function flushOnHide() {
    clearTimeout(timer);
    timer = null;
    while (started && queue.length) {
      var batch = queue.splice(0, 20);
      if (!nav.sendBeacon || !nav.sendBeacon(config.host + "/v1/batch", payload(batch))) {
        queue = batch.concat(queue);
        return flush();
      }
    }
  }

  function addHidden(form, name, value) {
    var input = form.querySelector('input[name="' + name + '"]') || d.createElement("input");
    input.type = "hidden";
    input.name = name;
    input.value = value;
    form.appendChild(input);
  }

  function start() {
    if (started || !config.writeKey || !config.host) return;
    started = true;
    if (tracking()) writeCookie(anonymousId);
    d.addEventListener("visibilitychange", function () {
      if (d.visibilityState === "hidden") flushOnHide();
    });
    w.addEventListener("pagehide", flushOnHide);
    // A site's own HTML form posting to a Nurture form carries the visitor, so the
    // submission joins this visitor's history.
    d.addEventListener("submit", function (event) {
      var form = event.target;
      if (!tracking() || !/\/v1\/forms\/[^/]+\/submit/.test(form.action || "")) return;
      addHidden(form, "nurture_aid", anonymousId);
      addHidden(form, "page_url", location.href);
    }, true);
    if (config.autoPage) api.page();
    schedule(0);
  }

  var api = {
    init: function (writeKey, options) {
      options = options || {};
      config.writeKey = writeKey || config.writeKey;
      if (options.host) config.host = String(options.host).replace(/\/+$/, "");
      if (options.honorDoNotTrack != null) config.honorDoNotTrack = !!options.honorDoNotTrack;
      if (options.autoPage === false) config.autoPage = false;
      start();
    },
    page: function (name, properties) {
      if (name && typeof name === "object") { properties = name; name = null; }
      var props = pageInfo();
      for (var key in properties) props[key] = properties[key];
      send("page", { name: name, properties: props });
    },
    track: function (event, properties) {
      send("track", { event: event, properties: properties || {} });
    },
    identify: function (id, traits) {
      if (id && typeof id === "object") { traits = id; id = null; }
      if (id != null && id !== "") store("setItem", "nurture_uid", (userId = String(id)));
      send("identify", { traits: traits || {} });
    },
    reset: function () {
      userId = null;
      store("removeItem", "nurture_uid");
      anonymousId = uuid();
      if (tracking()) writeCookie(anonymousId);
    },
    anonymousId: function () { return anonymousId; },
    flush: flush
  };

  function nurture(method) {
    if (api[method]) return api[method].apply(null, [].slice.call(arguments, 1));
  }
  for (var name in api) nurture[name] = api[name];
  nurture.loaded = true;
  w.nurture = nurture;

  var pending = (stub && stub.q) || [], i;
  for (i = 0; i < pending.length; i++) if (pending[i][0] === "init") nurture.apply(null, pending[i]);
  start();
  for (i = 0; i < pending.length; i++) if (pending[i][0] !== "init") nurture.apply(null, pending[i]);
})(window, document, navigator);
