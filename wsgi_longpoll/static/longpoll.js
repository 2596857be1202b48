/*
 * wsgi_longpoll browser client, as an ES module:
 *
 *   import { LongpollClient } from "/static/longpoll.js";
 *
 * The code lives in longpoll.global.js beside this file (the plain-script form, which
 * defines globalThis.WsgiLongpoll); this module runs it and exports what it defines, so
 * both forms are one source. Serve the two files from the same directory.
 */
import "./longpoll.global.js";

const api = globalThis.WsgiLongpoll;

export const { VERSION, Backoff, LongpollClient, PublishError, SubscriptionRejected } = api;
export default api;
