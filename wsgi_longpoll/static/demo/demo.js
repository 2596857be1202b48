// The chat demo: everything it does goes through the browser client.
import { LongpollClient } from "../longpoll.js";

const chat = document.querySelector("#chat");
const list = document.querySelector("#messages");
const form = document.querySelector("#composer");
const nameInput = document.querySelector("#name");
const messageInput = document.querySelector("#message");
const stateLabel = document.querySelector("#state");
const errorLine = document.querySelector("#error");

nameInput.value = localStorage.getItem("chat-name") || "guest-" + Math.floor(Math.random() * 1000);

const STATE_TEXT = {
  connecting: "connecting…",
  connected: "connected",
  reconnecting: "reconnecting…",
  stopped: "stopped",
};

// ?transport=eventsource (or auto) reads a stream of Server-Sent Events instead of long polls.
const transport = new URLSearchParams(location.search).get("transport") || "longpoll";

const client = new LongpollClient({
  transport,
  subscribeUrl: chat.dataset.subscribeUrl,
  publishUrl: chat.dataset.publishUrl,
  category: chat.dataset.category,
  timeoutSeconds: Number(chat.dataset.timeoutSeconds),
  cursor: 0, // start with every message the server still has
  onEvent: showMessage,
  onState: (state, detail) => {
    stateLabel.dataset.state = state;
    stateLabel.dataset.transport = client.transportInUse;
    stateLabel.textContent = STATE_TEXT[state] || state;
    if (state === "reconnecting" && detail && detail.error) {
      stateLabel.title = `${detail.error.message}; next try in ${Math.round(detail.delayMs)} ms`;
    } else {
      stateLabel.title = "";
    }
  },
  onError: (error) => console.warn("chat:", error.message),
  // Away longer than the server keeps messages: say that some are missing here.
  onGap: () => {
    errorLine.textContent = "Some messages were sent while you were away and are gone.";
    errorLine.hidden = false;
  },
});
client.start();
window.chatClient = client; // to play with in the console

function showMessage(event) {
  const message = typeof event.data === "object" && event.data !== null ? event.data : {};
  const item = document.createElement("li");
  item.dataset.id = event.id;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = message.name || "?";
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = message.text !== undefined ? String(message.text) : JSON.stringify(event.data);
  const time = document.createElement("time");
  time.dateTime = new Date(event.timestamp).toISOString();
  time.textContent = new Date(event.timestamp).toLocaleTimeString();
  item.append(time, who, text);
  if (message.name === nameInput.value) item.classList.add("mine");
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
  list.append(item);
  if (atBottom) list.scrollTop = list.scrollHeight;
}

form.addEventListener("submit", async (submit) => {
  submit.preventDefault();
  const name = nameInput.value.trim();
  const text = messageInput.value.trim();
  if (!name || !text) return;
  localStorage.setItem("chat-name", name);
  try {
    await client.publish({ name, text });
    messageInput.value = "";
    errorLine.hidden = true;
  } catch (error) {
    errorLine.textContent = `Not sent: ${error.message}`;
    errorLine.hidden = false;
  }
  messageInput.focus();
});
