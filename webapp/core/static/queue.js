// The queue page (templates/jobs/queue.html): a row's thumbnail plays while the pointer is over it.
// Rows are replaced in place by htmx, so one listener on the document serves them all (capturing,
// since mouseenter and mouseleave do not bubble).
document.addEventListener("mouseenter", event => {
  if (event.target instanceof HTMLVideoElement && event.target.matches("video.thumb")) event.target.play().catch(() => {});
}, true);
document.addEventListener("mouseleave", event => {
  if (event.target instanceof HTMLVideoElement && event.target.matches("video.thumb")) event.target.pause();
}, true);
