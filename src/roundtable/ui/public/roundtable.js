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
