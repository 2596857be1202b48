// Type-checked by .ci/run (tsc --strict) against wsgi_longpoll/static/longpoll.d.ts.
import api, { LongpollClient, Backoff, PublishError, SubscriptionRejected, VERSION, type LongpollEvent } from "../../wsgi_longpoll/static/longpoll";
const client = new LongpollClient<{ text: string }>({
  subscribeUrl: "/events", publishUrl: "/publish", category: "chat",
  onEvent: (event: LongpollEvent<{ text: string }>) => console.log(event.data.text),
  onError: (error, delayMs) => console.log(error.message, delayMs),
  backoff: { initialMs: 100 }, transport: "auto",
});
client.start();
client.publish({ text: "hi" }).then((answer) => answer.success);
const c = client.cursor; if (c) console.log(c.sinceTime, c.lastId);
client.stop();
const inUse: "eventsource" | "longpoll" = client.transportInUse; console.log(inUse);
new Backoff().delay(2);
const e: Error = new PublishError("x", 0); const r = new SubscriptionRejected("x", 403);
console.log(VERSION, api.LongpollClient === LongpollClient, globalThis.WsgiLongpoll.VERSION, e, r.serverError);
const tokened = new LongpollClient({ subscribeUrl: "/events", category: "news", token: () => fetch("/token").then((answer) => answer.text()) });
new LongpollClient({ subscribeUrl: "/events", category: "news", token: "a.b.c" }); tokened.stop();
