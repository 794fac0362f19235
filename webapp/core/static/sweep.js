// The sweep pages (templates/sweeps/): the new-sweep form, and a sweep's cells playing as one.
"use strict";

// New sweep: each axis shows the input its field takes (values, or a LoRA picker); one empty axis and
// one empty base-LoRA row are shown, "add" reveals the next; picking a base LoRA sets its default multiplier.
(() => {
  const form = document.querySelector(".sweep-form");
  if (!form) return;
  const fieldOf = row => row.querySelector(".axis-field select").value;
  for (const row of form.querySelectorAll(".axis-row")) {
    const show = () => {
      const field = fieldOf(row);
      row.querySelectorAll("[data-fields]").forEach(part => { part.hidden = !part.dataset.fields.split(" ").includes(field); });
      row.querySelectorAll(".axis-help").forEach(help => { help.hidden = help.dataset.field !== field; });
    };
    row.querySelector(".axis-field select").addEventListener("change", show);
    show();
  }
  form.querySelectorAll(".lora-row select").forEach(select => select.addEventListener("change", () => {
    select.closest(".lora-row").querySelector("input[type=number]").value = select.selectedOptions[0].dataset.multiplier || "";
  }));
  const isEmpty = row => row.matches(".axis-row") ? !fieldOf(row) : !row.querySelector("select").value;
  for (const kind of ["axis", "lora"]) {
    const rows = [...form.querySelectorAll(`[data-row=${kind}]`)], add = form.querySelector(`[data-add=${kind}]`);
    rows.filter(isEmpty).slice(1).forEach(row => { row.hidden = true; });
    const update = () => { add.hidden = !rows.some(row => row.hidden); };
    add.addEventListener("click", () => { const next = rows.find(row => row.hidden); if (next) next.hidden = false; update(); });
    update();
  }
})();

// A sweep's page: picking another prompt shows it at once.
(() => {
  const pick = document.querySelector(".prompt-pick");
  if (!pick) return;
  pick.querySelector("button").hidden = true;
  pick.querySelector("select").addEventListener("change", () => pick.requestSubmit());
})();

// A sweep's page: every cell's video plays, pauses, loops and seeks together. The loaded video that runs
// longest leads, and keeps leading until it leaves the page or a longer one loads, so a cell htmx swaps in
// never pulls the others back; on each of its frames (requestVideoFrameCallback, timeupdate where that is
// missing) every other video is pulled to within one frame of it: a small drift by playing a little slower
// or faster for a moment, a large one (a stall) by seeking. A shorter video holds its last frame until
// the leader loops. Videos htmx swaps in as cells finish join the group.
(() => {
  const player = document.querySelector(".sweep-player");
  if (!player) return;
  const play = player.querySelector(".play-all"), seek = player.querySelector(".seek-all");
  const clock = player.querySelector(".time-all"), loop = player.querySelector(".loop-all input");
  const frame = 1 / (Number(player.dataset.fps) || 16);
  let playing = false, run = 0, lead = null;

  const videos = () => [...document.querySelectorAll("video.cell-video")];
  const length = video => (Number.isFinite(video.duration) ? video.duration : 0);
  // Only a joined video may lead: its metadata loaded and its time set to the group's (align).
  const leader = () => {
    if (lead && (!lead.isConnected || lead.readyState < 1)) lead = null;
    for (const video of videos()) {
      if (video.dataset.joined && video.readyState >= 1 && (!lead || length(video) > length(lead))) lead = video;
    }
    return lead;
  };
  const duration = () => { const current = leader(); return current ? length(current) : 0; };
  // Whether `video` has a frame still to play after `time`; past its end it holds its last one.
  const within = (video, time) => time < length(video) - frame / 2;

  const show = time => {
    seek.max = duration().toFixed(3);
    seek.value = time;
    clock.textContent = `${time.toFixed(2)} s`;
  };
  const label = () => {
    play.textContent = playing ? "❚❚ Pause all" : "▶ Play all";
    play.setAttribute("aria-pressed", String(playing));
    play.disabled = seek.disabled = !leader();
  };
  // Resolves once `video` can play on from where it stands (or after a while, so one slow video
  // never holds the others back for good).
  const ready = video => new Promise(resolve => {
    if (!video.seeking && video.readyState >= 3) return resolve();
    const done = () => { clearTimeout(timer); video.removeEventListener("canplay", check); video.removeEventListener("seeked", check); resolve(); };
    const check = () => { if (!video.seeking && video.readyState >= 3) done(); };
    const timer = setTimeout(done, 3000);
    video.addEventListener("canplay", check);
    video.addEventListener("seeked", check);
  });

  const seekAll = async time => {
    for (const video of videos()) {
      video.playbackRate = 1;
      if (video.readyState >= 1) video.currentTime = Math.min(time, length(video));
    }
    show(time);
    await Promise.all(videos().map(ready));
  };

  const correct = () => {
    const current = leader();
    if (!current || !playing) return;
    const time = current.currentTime;
    for (const video of videos()) {
      if (video === current || video.readyState < 1) continue;
      if (!within(video, time)) {  // played to its end: hold the last frame (play() would start it over)
        if (!video.paused) video.pause();
        if (length(video) - video.currentTime > frame) video.currentTime = length(video);
        continue;
      }
      const drift = video.currentTime - time;
      if (Math.abs(drift) > 0.25 || (video.paused && !video.ended)) {
        video.playbackRate = 1;
        video.currentTime = time;
        if (video.paused) video.play().catch(() => {});
      } else if (Math.abs(drift) > frame / 4) {
        video.playbackRate = Math.min(1.5, Math.max(0.5, 1 - 4 * drift));
      } else {
        video.playbackRate = 1;
      }
    }
    show(time);
  };

  // Follows whichever video leads on each of its frames, so a longer one that loads takes over.
  const follow = token => {
    const current = leader();
    if (!playing || token !== run || !current) return;
    const next = () => { if (playing && token === run) { correct(); follow(token); } };  // none after a pause
    if (current.requestVideoFrameCallback) current.requestVideoFrameCallback(next);
    else current.addEventListener("timeupdate", next, { once: true });
  };

  const start = async () => {
    const current = leader();
    if (!current) return;
    playing = true;
    label();
    const token = ++run;
    const at = current.ended || current.currentTime >= duration() - frame / 2 ? 0 : current.currentTime;
    await seekAll(at);
    if (!playing || token !== run) return;
    await Promise.all(videos().filter(video => within(video, at)).map(video => video.play().catch(() => {})));
    follow(token);
  };

  const stop = () => {
    playing = false;
    run += 1;
    label();
    const current = leader();
    videos().forEach(video => video.pause());
    if (current) seekAll(current.currentTime);
  };

  // A video whose metadata has loaded takes the group's time (the leader's before it, should it lead
  // from now on), then may lead.
  const align = video => {
    const before = leader();
    const time = before && before !== video ? before.currentTime : 0;
    video.currentTime = Math.min(time, length(video));
    video.dataset.joined = "true";
    if (playing && within(video, time)) video.play().catch(() => {});
    return time;
  };

  const join = video => {
    if (video.dataset.synced) return;
    video.dataset.synced = "true";
    video.controls = false; // one set of controls for all
    video.loop = false;
    video.addEventListener("loadedmetadata", () => {
      const time = align(video);
      label();
      show(time);
    });
    video.addEventListener("ended", () => {
      if (video !== leader() || !playing) return;
      if (loop.checked) { playing = false; start(); } else stop();
    });
    video.addEventListener("timeupdate", () => { if (video === leader() && playing) correct(); });
    if (video.readyState >= 1) align(video);
  };

  play.addEventListener("click", () => (playing ? stop() : start()));
  seek.addEventListener("input", () => {
    const wasPlaying = playing;
    if (playing) { playing = false; run += 1; videos().forEach(video => video.pause()); }
    seekAll(Number(seek.value)).then(() => { if (wasPlaying) start(); else label(); });
  });
  document.addEventListener("htmx:afterSettle", () => { videos().forEach(join); label(); });
  videos().forEach(join);
  player.hidden = false;
  label();
  show(0);
})();
