// roundtable: Chainlit names a message's author only in its avatar's tooltip, but in a group
// chat the reader needs to see who speaks. This copies each message's author (the avatar's
// alt text) into data-author attributes, so roundtable.css can print the name above the text
// and quiet the page's own status lines. It only sets attributes: React owns these nodes,
// and children added behind its back would upset it.
(() => {
  const PREFIX = "Avatar for ";
  let queued = false;

  function mark(element, author) {
    if (element && element.dataset.author !== author) element.dataset.author = author;
  }

  function scan() {
    queued = false;
    document.querySelectorAll(`.ai-message img[alt^="${PREFIX}"]`).forEach((img) => {
      const author = img.getAttribute("alt").slice(PREFIX.length);
      const message = img.closest(".ai-message");
      mark(message, author);
      mark(message.lastElementChild, author);  // the text column, where the name is drawn
      mark(message.closest(".step"), author);
    });
  }

  // React re-renders often while tokens stream: look once per frame, not once per change.
  new MutationObserver(() => {
    if (!queued) {
      queued = true;
      requestAnimationFrame(scan);
    }
  }).observe(document.documentElement, { childList: true, subtree: true });
})();

// roundtable: shared rooms. A room's link is /?room=ID. Chainlit's page moves to / when it signs
// a person in, and the room would be lost on the way: the tab remembers the room it was asked
// for until it has joined it (Chainlit then shows the tab's own thread, /thread/...), and puts
// it back on any move to /, so the page process reads it from the address the page connects from.
(() => {
  const ROOM = "roundtable_room";
  const asked = new URLSearchParams(location.search).get("room");
  if (asked) sessionStorage.setItem(ROOM, asked);

  function arrived(url) {
    if (url == null || !new URL(url, location.href).pathname.startsWith("/thread/")) return;
    sessionStorage.removeItem(ROOM);  // joined (or moved on): the tab shows its own thread now
    // Moving to a thread closes Chainlit's side panel, where a room shows who is watching: ask
    // the page process to draw it again (Chainlit passes window messages on to it).
    setTimeout(() => window.postMessage("roundtable:redraw-panel", location.origin), 0);
  }

  function withRoom(url) {
    const pending = sessionStorage.getItem(ROOM);
    if (url == null || !pending) return url;
    const target = new URL(url, location.href);
    if (target.pathname !== "/" || target.searchParams.has("room")) return url;
    target.searchParams.set("room", pending);
    return target.pathname + target.search + target.hash;
  }

  for (const name of ["pushState", "replaceState"]) {
    const original = history[name].bind(history);
    history[name] = (state, title, url) => {
      const result = original(state, title, withRoom(url));
      arrived(url);
      return result;
    };
  }
})();

// roundtable: without sign-in, the page asks a person's name once, so that others in a shared
// room see who says what, and keeps it in a cookie the page process reads when it signs the
// person in. A blank answer keeps the page's one local user, "user".
(() => {
  if (!window.roundtableAskName || document.cookie.split("; ").some((c) => c.startsWith("roundtable_name="))) return;
  const valid = /^[\p{L}\p{N}_][\p{L}\p{N}_ .'-]{0,39}$/u;
  let question = "Your name, as others in a shared conversation will see it (leave it blank to stay \"user\"):";
  for (let attempt = 0; attempt < 3; attempt++) {
    const answer = (window.prompt(question, "") || "").trim();
    if (!answer || valid.test(answer)) {
      const year = 60 * 60 * 24 * 365;
      document.cookie = `roundtable_name=${encodeURIComponent(answer)}; path=/; max-age=${year}; SameSite=Lax`;
      return;
    }
    question = `"${answer.slice(0, 60)}" cannot be a name: use up to 40 letters, digits, spaces or . _ ' -. Your name:`;
  }
})();
