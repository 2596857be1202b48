/*
 * wsgi_longpoll browser client: follow categories of a golongpoll-compatible server.
 *
 * One dependency-free file, two ways to load it:
 *   <script src="/static/longpoll.global.js"></script>   (defines window.WsgiLongpoll)
 *   import { LongpollClient } from "/static/longpoll.js"; (an ES module over this file)
 *
 *   const client = new WsgiLongpoll.LongpollClient({
 *     subscribeUrl: "/events", publishUrl: "/publish", category: "chat",
 *     onEvent: (event) => console.log(event.data),
 *   });
 *   client.start();
 *   await client.publish({ text: "hello" });
 *   client.stop();
 *
 * It speaks the wire protocol of golongpoll v1.3.1 (PROTOCOL.md): each poll asks for the
 * events after the last one received (since_time + last_id), so none is lost between two
 * polls or while the server restarts, and none is handed out twice. Errors are followed by
 * a pause with exponential backoff and full jitter; a long-poll timeout by the next poll at
 * once. With `storageKey`, the cursor is kept in localStorage, so a reloaded page goes on
 * where it left off.
 *
 * Against wsgi_longpoll's own server it also speaks the protocol's extensions: several
 * categories in one poll with one cursor (`categories`), and the gap signal (`onGap`) when
 * the server dropped events the client had not received (its buffer size or time to live).
 * With `transport: "eventsource"` (or "auto") it reads the same events as a stream of
 * Server-Sent Events through the browser's EventSource, on the same cursor, and falls
 * back to long polls where EventSource is missing or the server answers no stream.
 */
(function (root) {
  "use strict";

  const VERSION = "0.1.0-dev.0"; // package.json's version, the Python package's in semver form
  const RETRYABLE_STATUSES = [408, 425, 429, 500, 502, 503, 504];
  // Seconds a poll may take beyond the timeout it asks for before it is given up.
  const TIMEOUT_MARGIN_SECONDS = 10;
  // The first poll after start() or after an error asks for this timeout, so that the
  // client learns quickly that it is connected (a long poll says nothing until it ends).
  const PROBE_TIMEOUT_SECONDS = 1;

  /** The server refused the subscription in a way that trying again cannot fix. */
  class SubscriptionRejected extends Error {
    constructor(message, status, serverError) {
      super(message);
      this.name = "SubscriptionRejected";
      this.status = status;
      this.serverError = serverError === undefined ? null : serverError;
    }
  }

  /** A publish was not accepted; `status` is the HTTP status (0: no answer). */
  class PublishError extends Error {
    constructor(message, status, serverError) {
      super(message);
      this.name = "PublishError";
      this.status = status;
      this.serverError = serverError === undefined ? null : serverError;
    }
  }

  /** An answer that says "try again later"; handled inside the client. */
  class RetryableError extends Error {
    constructor(message) {
      super(message);
      this.name = "RetryableError";
    }
  }

  /**
   * Pauses after errors: after the n-th error in a row, a pause drawn uniformly from
   * [0, min(maximumMs, initialMs * multiplier ** (n - 1))] ("full jitter").
   */
  class Backoff {
    constructor(options) {
      const o = options || {};
      this.initialMs = o.initialMs === undefined ? 500 : o.initialMs;
      this.maximumMs = o.maximumMs === undefined ? 30000 : o.maximumMs;
      this.multiplier = o.multiplier === undefined ? 2 : o.multiplier;
      this.random = o.random || Math.random;
      if (!(this.initialMs > 0)) throw new RangeError("initialMs must be above 0");
      if (!(this.maximumMs >= this.initialMs)) {
        throw new RangeError("maximumMs must be at least initialMs");
      }
      if (!(this.multiplier >= 1)) throw new RangeError("multiplier must be at least 1");
    }

    ceiling(failures) {
      return Math.min(this.maximumMs, this.initialMs * Math.pow(this.multiplier, failures - 1));
    }

    delay(failures) {
      return this.random() * this.ceiling(failures);
    }
  }

  function basicAuthorization(username, password) {
    // UTF-8, as the Python client and Go send it.
    const bytes = new TextEncoder().encode(username + ":" + password);
    let binary = "";
    for (const byte of bytes) binary += String.fromCharCode(byte);
    return "Basic " + btoa(binary);
  }

  function resolveUrl(url) {
    const base = root.location ? root.location.href : undefined;
    return new URL(url, base);
  }

  function normalizeCategories(category, categories) {
    const names = [];
    if (category !== undefined && category !== null) names.push(category);
    if (categories !== undefined && categories !== null) {
      if (typeof categories === "string" || typeof categories[Symbol.iterator] !== "function") {
        throw new TypeError("categories must be an array of strings");
      }
      names.push(...categories);
    }
    const unique = [];
    for (const name of names) {
      if (typeof name !== "string" || name === "") {
        throw new TypeError("each category must be a non-empty string");
      }
      if (unique.indexOf(name) < 0) unique.push(name);
    }
    if (!unique.length) throw new TypeError("category (or categories) is required");
    return unique;
  }

  function isGap(gap) {
    return gap !== null && typeof gap === "object" && typeof gap.category === "string" &&
      gap.category !== "" && Number.isInteger(gap.since_time) &&
      typeof gap.last_id === "string" && gap.last_id !== "";
  }

  function normalizeCursor(cursor) {
    if (cursor === null || cursor === undefined) return null;
    if (typeof cursor === "number") cursor = { sinceTime: cursor };
    if (typeof cursor !== "object" || !Number.isInteger(cursor.sinceTime)) {
      throw new TypeError("cursor must be null, an integer or {sinceTime, lastId}");
    }
    return { sinceTime: cursor.sinceTime, lastId: cursor.lastId ? String(cursor.lastId) : "" };
  }

  /**
   * Follows one category, or several with one cursor, and publishes.
   *
   * Options:
   *   subscribeUrl   the subscription endpoint (required), e.g. "/events"
   *   category       the category to follow (this or `categories` is required)
   *   categories     more categories to follow in the same polls, an array (an extension
   *                  of wsgi_longpoll's server; a golongpoll server follows `category`
   *                  only). Events come in publish order across them; repeats are ignored.
   *   publishUrl     the publish endpoint, for publish()
   *   timeoutSeconds long-poll timeout asked of the server (default 45; server max 110)
   *   cursor         where to start: null = from now (default), an integer = after that
   *                  epoch-ms time (0: everything still buffered), or {sinceTime, lastId}
   *   storageKey     keep the cursor in `storage` under this key and start from it
   *   storage        a Storage (default: localStorage when storageKey is given)
   *   username, password  basic auth, sent when both are non-empty
   *   headers        extra request headers, an object
   *   credentials    fetch's credentials mode (default "same-origin")
   *   backoff        a Backoff or its options {initialMs, maximumMs, multiplier, random}
   *   onEvent(event)          each event {timestamp, category, data, id}, once, in order
   *   onState(state, detail)  "connecting", "connected", "reconnecting", "stopped"
   *   onError(error, delayMs) each failed poll (delayMs: the pause before the next), or
   *                           a SubscriptionRejected that stopped the client (delayMs null)
   *   onGap({gaps, cursor})   the server dropped events not yet received: gaps is
   *                           [{category, sinceTime, lastId}] (the newest event dropped in
   *                           each category), cursor where the client was when it asked.
   *                           Called once, after onEvent for the events of the answer that
   *                           said so; the client goes on after the gap. Default: a warning
   *                           on the console.
   *   fetch          the fetch function to use (default: the global fetch)
   *   transport      "longpoll" (default): long polls with fetch. "eventsource": a stream
   *                  of Server-Sent Events through the browser's EventSource, which
   *                  reconnects by itself with Last-Event-ID; long polls from the same
   *                  cursor where EventSource is missing or the server answers no stream
   *                  (a golongpoll server, an error status). EventSource sends no headers:
   *                  with `headers` or basic auth, "eventsource" throws a TypeError.
   *                  "auto": "eventsource" where it can be used, else "longpoll".
   *   EventSource    the EventSource constructor to use (default: the global one)
   *   token          a subscribe token for a server that requires one (a long-poll tier
   *                  run with --subscribe-secret; the application issues it), sent as the
   *                  `token` query parameter of every poll and stream. Or a function that
   *                  returns one (or a Promise of one), e.g. fetched from the application:
   *                  called before the first poll and again whenever the server refuses
   *                  the token (401 or 403: it expired); a fresh token refused at once
   *                  stops the client with a SubscriptionRejected.
   */
  class LongpollClient {
    constructor(options) {
      const o = options || {};
      if (!o.subscribeUrl) throw new TypeError("subscribeUrl is required");
      this.categories = normalizeCategories(o.category, o.categories);
      this.subscribeUrl = o.subscribeUrl;
      this.publishUrl = o.publishUrl || null;
      this.category = this.categories[0];
      this.timeoutSeconds = o.timeoutSeconds === undefined ? 45 : o.timeoutSeconds;
      if (!Number.isInteger(this.timeoutSeconds) || this.timeoutSeconds < 1) {
        throw new RangeError("timeoutSeconds must be an integer of at least 1");
      }
      this.username = o.username || "";
      this.password = o.password || "";
      this.headers = Object.assign({}, o.headers || {});
      this.credentials = o.credentials || "same-origin";
      this.backoff = o.backoff instanceof Backoff ? o.backoff : new Backoff(o.backoff);
      this.onEvent = o.onEvent || function () {};
      this.onState = o.onState || function () {};
      this.onError = o.onError || function (error) {
        if (root.console) root.console.warn("wsgi_longpoll:", error && error.message);
      };
      this.onGap = o.onGap || function (detail) {
        if (root.console) {
          root.console.warn("wsgi_longpoll: the server dropped events not received yet in",
            detail.gaps.map((gap) => gap.category).join(", "));
        }
      };
      this._fetch = o.fetch || root.fetch.bind(root);
      this._EventSource = o.EventSource || root.EventSource || null;
      this.transport = o.transport === undefined ? "longpoll" : o.transport;
      if (["longpoll", "eventsource", "auto"].indexOf(this.transport) < 0) {
        throw new TypeError('transport must be "longpoll", "eventsource" or "auto"');
      }
      const sendsHeaders = Object.keys(this.headers).length > 0 ||
        Boolean(this.username && this.password);
      if (this.transport === "eventsource" && sendsHeaders) {
        throw new TypeError("EventSource cannot send headers or basic auth: " +
          'use transport "longpoll" or "auto"');
      }
      // Which one runs now: "eventsource" until EventSource fails for good.
      this._transportInUse = this.transport !== "longpoll" && this._EventSource && !sendsHeaders
        ? "eventsource" : "longpoll";
      this._source = null;
      if (o.token !== undefined && o.token !== null && typeof o.token !== "string" &&
          typeof o.token !== "function") {
        throw new TypeError("token must be a string or a function that returns one");
      }
      this._tokenSource = o.token === undefined ? null : o.token;
      this._token = typeof o.token === "string" ? o.token : null;
      // The token was just fetched again after a refusal: a second refusal is final.
      this._tokenRenewed = false;
      this.storageKey = o.storageKey || null;
      this.storage = o.storage || (this.storageKey ? root.localStorage : null);

      this._cursor = normalizeCursor(o.cursor);
      const stored = this._loadCursor();
      if (stored) this._cursor = stored;
      this._idsAtCursorTime = new Set(this._cursor && this._cursor.lastId ? [this._cursor.lastId] : []);
      // The gap last reported in each category: the server may name it again (see
      // _passGaps), and it is reported once.
      this._reportedGaps = new Map();
      this._state = "idle";
      this._running = false;
      this._generation = 0; // a stopped loop must not go on when start() is called again
      this._controller = null;
      this._wake = null;
    }

    /** {sinceTime, lastId} just after the last event handed out, or null. */
    get cursor() {
      return this._cursor ? Object.assign({}, this._cursor) : null;
    }

    /** "idle", "connecting", "connected", "reconnecting" or "stopped". */
    get state() {
      return this._state;
    }

    /** "eventsource" or "longpoll": what the client uses (or will use on start()). */
    get transportInUse() {
      return this._transportInUse;
    }

    /** Start following; returns at once. Calling it on a running client does nothing. */
    start() {
      if (this._running) return;
      this._running = true;
      this._generation += 1;
      this._setState("connecting");
      if (this._transportInUse === "eventsource") {
        this._stream(this._generation);
        return;
      }
      this._loop(this._generation).catch((error) => this._report(error, null));
    }

    /** Stop following: the poll in progress is aborted and no event is handed out after. */
    stop() {
      if (!this._running) return;
      this._running = false;
      if (this._source) {
        this._source.close();
        this._source = null;
      }
      if (this._controller) this._controller.abort();
      if (this._wake) this._wake();
      this._setState("stopped");
    }

    /**
     * Publish `data` (any JSON value but null) to `category` (default: the first followed).
     * Resolves to the server's answer ({success: true}); rejects with a PublishError.
     */
    async publish(data, category) {
      if (!this.publishUrl) throw new TypeError("publishUrl was not given");
      if (data === null || data === undefined) throw new TypeError("data must not be null");
      const target = category === undefined ? this.category : category;
      let response;
      try {
        response = await this._fetch(resolveUrl(this.publishUrl).href, {
          method: "POST",
          headers: Object.assign({ "Content-Type": "application/json" }, this._requestHeaders()),
          body: JSON.stringify({ category: target, data: data }),
          credentials: this.credentials,
          cache: "no-store",
        });
      } catch (error) {
        throw new PublishError("publish failed: " + error.message, 0);
      }
      let body = null;
      try {
        body = await response.json();
      } catch (error) {
        body = null;
      }
      if (response.status !== 200 || !body || body.success !== true) {
        const serverError = body && typeof body.error === "string" ? body.error : null;
        throw new PublishError(
          "publish answered HTTP " + response.status + (serverError ? ": " + serverError : ""),
          response.status, serverError);
      }
      return body;
    }

    _requestHeaders() {
      const headers = Object.assign({}, this.headers);
      if (this.username && this.password) {
        headers.Authorization = basicAuthorization(this.username, this.password);
      }
      return headers;
    }

    _subscriptionUrl(timeoutSeconds) {
      const url = resolveUrl(this.subscribeUrl);
      url.searchParams.set("category", this.categories[0]);
      url.searchParams.delete("categories");
      for (const category of this.categories.slice(1)) url.searchParams.append("categories", category);
      url.searchParams.set("timeout", String(timeoutSeconds));
      if (this._token) url.searchParams.set("token", this._token);
      if (this._cursor) {
        url.searchParams.set("since_time", String(this._cursor.sinceTime));
        if (this._cursor.lastId) url.searchParams.set("last_id", this._cursor.lastId);
      }
      return url.href;
    }

    _streamUrl() {
      const url = resolveUrl(this.subscribeUrl);
      url.searchParams.set("category", this.categories[0]);
      url.searchParams.delete("categories");
      for (const category of this.categories.slice(1)) url.searchParams.append("categories", category);
      url.searchParams.set("timeout", String(this.timeoutSeconds));
      if (this._token) url.searchParams.set("token", this._token);
      // Where this stream starts. When EventSource reconnects by itself, the id of the
      // last event it got (its Last-Event-ID header) takes the place of these.
      if (this._cursor) {
        url.searchParams.set("since_time", String(this._cursor.sinceTime));
        if (this._cursor.lastId) url.searchParams.set("last_id", this._cursor.lastId);
      }
      return url.href;
    }

    /** Ask the token function for a token, unless one is held. */
    async _ensureToken() {
      if (this._token === null && typeof this._tokenSource === "function") {
        const token = await this._tokenSource();
        if (typeof token !== "string" || token === "") {
          throw new TypeError("the token function must return a non-empty string");
        }
        this._token = token;
      }
    }

    /** Whether to fetch a token again after `error`: the server refused the token the
     * token function gave, and it was not just fetched. */
    _renewToken(error) {
      if (!(error instanceof SubscriptionRejected) || (error.status !== 401 && error.status !== 403) ||
          typeof this._tokenSource !== "function" || this._tokenRenewed) {
        return false;
      }
      this._token = null;
      this._tokenRenewed = true;
      return true;
    }

    /** Follow with an EventSource; long polls from the cursor if it fails for good. */
    _stream(generation) {
      this._ensureToken().then(() => {
        if (this._current(generation)) this._openStream(generation);
      }, (error) => {
        if (!this._current(generation)) return;
        // No token: long polls ask again, with backoff.
        this._transportInUse = "longpoll";
        this._report(new RetryableError("no token: " + error.message), 0);
        this._loop(generation).catch((failure) => this._report(failure, null));
      });
    }

    _openStream(generation) {
      const source = new this._EventSource(this._streamUrl(),
        { withCredentials: this.credentials === "include" });
      this._source = source;
      source.onopen = () => {
        if (!this._current(generation)) return;
        this._tokenRenewed = false;
        this._setState("connected");
      };
      source.onmessage = (message) => {
        if (!this._current(generation)) return;
        let event;
        try {
          event = JSON.parse(message.data);
        } catch (error) {
          this._report(new RetryableError("a stream event that is not JSON"), null);
          return;
        }
        this._deliver([event], generation);
      };
      source.addEventListener("gap", (message) => {
        if (!this._current(generation)) return;
        let gap = null;
        try {
          gap = JSON.parse(message.data);
        } catch (error) {
          gap = null;
        }
        if (!isGap(gap)) {
          this._report(new RetryableError("a stream gap that is not the protocol's"), null);
          return;
        }
        // The events after the gap come next and move the cursor past it.
        this._reportGaps([gap], this.cursor);
      });
      source.onerror = () => {
        if (!this._current(generation)) return;
        if (source.readyState !== 2) {  // CONNECTING: EventSource reconnects by itself
          this._setState("reconnecting", { failures: 1, delayMs: null, error: null });
          return;
        }
        // CLOSED: no stream here (EventSource gives up on an error status or a JSON
        // answer): long polls from the cursor say why, and back off. With a token
        // function, the refusal may be of an expired token: one more stream, with a
        // fresh token, first.
        source.close();
        if (this._source === source) this._source = null;
        if (typeof this._tokenSource === "function" && !this._tokenRenewed) {
          this._token = null;
          this._tokenRenewed = true;
          this._stream(generation);
          return;
        }
        this._transportInUse = "longpoll";
        this._report(new RetryableError("no event stream; following with long polls"), 0);
        this._loop(generation).catch((error) => this._report(error, null));
      };
    }

    _current(generation) {
      return this._running && this._generation === generation;
    }

    async _loop(generation) {
      let failures = 0;
      let probe = true;
      while (this._current(generation)) {
        let answer;
        const asked = this.cursor;
        try {
          await this._ensureToken();
          answer = await this._poll(probe ? PROBE_TIMEOUT_SECONDS : this.timeoutSeconds);
        } catch (error) {
          if (!this._current(generation)) return;
          if (this._renewToken(error)) continue;
          if (error instanceof SubscriptionRejected) {
            this.stop();
            this._report(error, null);
            return;
          }
          failures += 1;
          probe = true;
          const delayMs = this.backoff.delay(failures);
          this._setState("reconnecting", { failures: failures, delayMs: delayMs, error: error });
          this._report(error, delayMs);
          await this._pause(delayMs);
          continue;
        }
        if (!this._current(generation)) return;
        failures = 0;
        probe = false;
        this._tokenRenewed = false;
        this._setState("connected");
        if (answer.events) {
          // Stopped before the last event: the rest and the gaps are left for later.
          if (!this._deliver(answer.events, generation)) return;
        } else if (!this._cursor && Number.isInteger(answer.timestamp)) {
          // Started "from now" and nothing came: keep our place at the server's clock, so
          // that nothing published between this poll and the next is missed. With a
          // cursor, keep it: jumping to the server's time could skip an event of the same
          // millisecond.
          this._cursor = { sinceTime: answer.timestamp - 1, lastId: "" };
          this._idsAtCursorTime = new Set();
          this._saveCursor();
        }
        if (answer.gaps.length) this._passGaps(answer.gaps, asked, !answer.events);
      }
    }

    /**
     * Move the cursor past `gaps` where it safely can, and report the new ones.
     *
     * Every event after the cursor that the server had was in the answer, so nothing it
     * publishes later comes before the newest event it dropped: when no event came, or the
     * gap is newer than the last one, the next poll asks after the gap. In the same
     * millisecond (order unknown) the cursor stays, and the server may name the gap again.
     */
    _passGaps(gaps, asked, cameEmpty) {
      let newest = gaps[0];
      for (const gap of gaps) if (gap.since_time > newest.since_time) newest = gap;
      const cursor = this._cursor;
      if (!cursor || newest.since_time > cursor.sinceTime ||
          (cameEmpty && newest.since_time === cursor.sinceTime)) {
        if (!cursor || newest.since_time !== cursor.sinceTime) this._idsAtCursorTime = new Set();
        this._idsAtCursorTime.add(newest.last_id);
        this._cursor = { sinceTime: newest.since_time, lastId: newest.last_id };
        this._saveCursor();
      }
      this._reportGaps(gaps, asked);
    }

    /** Call onGap with the `gaps` not reported before; `asked`: the cursor they follow. */
    _reportGaps(gaps, asked) {
      const fresh = [];
      for (const gap of gaps) {
        const key = gap.since_time + "/" + gap.last_id;
        if (this._reportedGaps.get(gap.category) !== key) fresh.push(gap);
        this._reportedGaps.set(gap.category, key);
      }
      // Started from 0, "everything the server still has": nothing was missed.
      if (!fresh.length || (asked && asked.sinceTime === 0 && !asked.lastId)) return;
      const detail = {
        gaps: fresh.map((gap) => ({
          category: gap.category, sinceTime: gap.since_time, lastId: gap.last_id,
        })),
        cursor: asked,
      };
      try {
        this.onGap(detail);
      } catch (error) {
        this._report(error, null);
      }
    }

    async _poll(timeoutSeconds) {
      const controller = new AbortController();
      this._controller = controller;
      // fetch has no read timeout: give up on a poll the server should have answered.
      const watchdog = setTimeout(() => controller.abort(),
        (timeoutSeconds + TIMEOUT_MARGIN_SECONDS) * 1000);
      try {
        let response;
        try {
          response = await this._fetch(this._subscriptionUrl(timeoutSeconds), {
            method: "GET",
            headers: this._requestHeaders(),
            credentials: this.credentials,
            cache: "no-store",
            signal: controller.signal,
          });
        } catch (error) {
          throw new RetryableError("no answer: " + error.message);
        }
        if (response.status !== 200) {
          if (RETRYABLE_STATUSES.indexOf(response.status) >= 0) {
            throw new RetryableError("HTTP " + response.status);
          }
          let serverError = null;
          try {
            const refusal = await response.json();
            if (refusal && typeof refusal.error === "string") serverError = refusal.error;
          } catch (error) {
            serverError = null;
          }
          throw new SubscriptionRejected("the subscription was answered HTTP " + response.status +
            (serverError ? ": " + serverError : ""), response.status, serverError);
        }
        let body;
        try {
          body = await response.json();
        } catch (error) {
          throw new RetryableError("an answer that is not JSON: " + error.message);
        }
        if (body && typeof body.error === "string") {
          throw new SubscriptionRejected("the server rejected the subscription: " + body.error,
            200, body.error);
        }
        const gaps = body && body.gaps !== undefined ? body.gaps : [];
        if (!Array.isArray(gaps) || !gaps.every(isGap)) {
          throw new RetryableError("an answer with gaps that are not the protocol's");
        }
        if (body && Array.isArray(body.events)) return { events: body.events, gaps: gaps };
        if (body && "timeout" in body) {
          return { events: null, timestamp: body.timestamp, gaps: gaps };
        }
        throw new RetryableError("an answer that is not the protocol's");
      } finally {
        clearTimeout(watchdog);
        if (this._controller === controller) this._controller = null;
      }
    }

    /** Hand out `events`; false if the client was stopped before the last one. */
    _deliver(events, generation) {
      for (const event of events) {
        if (!this._current(generation)) return false;
        const cursor = this._cursor;
        if (cursor && (event.timestamp < cursor.sinceTime ||
            (event.timestamp === cursor.sinceTime && this._idsAtCursorTime.has(event.id)))) {
          // Handed out before: a server that no longer knows last_id (lost in a restart)
          // sends the events of that millisecond it still has. Name one of those in the
          // next poll, or the server would answer the same again and again.
          if (event.timestamp === cursor.sinceTime) {
            this._cursor = { sinceTime: event.timestamp, lastId: event.id };
            this._saveCursor();
          }
          continue;
        }
        if (!cursor || event.timestamp !== cursor.sinceTime) this._idsAtCursorTime = new Set();
        this._idsAtCursorTime.add(event.id);
        this._cursor = { sinceTime: event.timestamp, lastId: event.id };
        this._saveCursor();
        try {
          this.onEvent(event);
        } catch (error) {
          this._report(error, null);
        }
      }
      return true;
    }

    _pause(delayMs) {
      return new Promise((resolve) => {
        const timer = setTimeout(done, delayMs);
        const client = this;
        function done() {
          clearTimeout(timer);
          client._wake = null;
          resolve();
        }
        this._wake = done;
      });
    }

    _setState(state, detail) {
      if (this._state === state && state !== "reconnecting") return;
      this._state = state;
      this._call(this.onState, state, detail || null);
    }

    _report(error, delayMs) {
      this._call(this.onError, error, delayMs);
    }

    _call(callback, a, b) {
      try {
        callback(a, b);
      } catch (error) {
        // A broken callback must not stop the client; let the page's error handler see it.
        setTimeout(() => { throw error; }, 0);
      }
    }

    _loadCursor() {
      if (!this.storage || !this.storageKey) return null;
      try {
        const saved = JSON.parse(this.storage.getItem(this.storageKey));
        if (saved && Number.isInteger(saved.since_time)) {
          return { sinceTime: saved.since_time, lastId: saved.last_id || "" };
        }
      } catch (error) {
        // Unreadable: start as if nothing were stored.
      }
      return null;
    }

    _saveCursor() {
      if (!this.storage || !this.storageKey || !this._cursor) return;
      // The Python Follower's Cursor.to_dict() form, so both can read it.
      const saved = { since_time: this._cursor.sinceTime, last_id: this._cursor.lastId };
      try {
        this.storage.setItem(this.storageKey, JSON.stringify(saved));
      } catch (error) {
        // Storage full or forbidden: go on without it.
      }
    }
  }

  root.WsgiLongpoll = {
    VERSION: VERSION,
    Backoff: Backoff,
    LongpollClient: LongpollClient,
    PublishError: PublishError,
    SubscriptionRejected: SubscriptionRejected,
  };
})(globalThis);
