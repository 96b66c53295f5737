// The review page's only script: keyboard shortcuts for the buttons that show a <kbd>
// (c confirm, u unusable, z undo, n next), and drawing keypoint matches only when asked.
document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName)) return;
  const target = document.querySelector(`[data-key="${event.key}"]`);
  if (target) {
    event.preventDefault();
    target.click();
  }
});
document.querySelectorAll("details").forEach((details) => {
  details.addEventListener("toggle", () => {
    details.querySelectorAll("img[data-src]").forEach((img) => {
      if (!img.src) img.src = img.dataset.src;
    });
  });
});
