// A dubbing job's timeline: one button a line, placed at its cue; the light slot is the target duration, the dark
// strip the achieved one; failed lines are hatched red. Lines that overlap go to the next lane.

const LANE = 34;
const AXIS = 18;

const fmt = (seconds) => `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;

/** Where each line sits: cue start (or right after the previous line, as the track places it) and lengths. */
export function layout(segments) {
  let cursor = 0;
  return segments.map((segment) => {
    const timing = segment.timing || {};
    const achieved = timing.achieved ?? segment.duration ?? null;
    const slot = segment.start != null && segment.end != null ? segment.end - segment.start : null;
    const target = timing.target ?? segment.target_duration ?? slot;
    const start = segment.start ?? cursor;
    cursor = start + (achieved ?? target ?? 0);
    return { segment, start, target, achieved, offTarget: timing.within_tolerance === false };
  });
}

function describe(item) {
  const { segment, start, target, achieved } = item;
  const parts = [`Line ${segment.id} at ${fmt(start)}`];
  if (target != null) parts.push(`target ${fmt(target)}`);
  if (achieved != null) parts.push(`achieved ${fmt(achieved)}`);
  if (item.offTarget) parts.push("outside the tolerance");
  parts.push(segment.status === "failed" ? `failed: ${segment.error?.message ?? "unknown error"}` : segment.status);
  return `${parts.join(", ")}. ${segment.text}`;
}

/** Redraw `container` for `job`; `onSelect(segment)` runs when a line's button is pressed. */
export function renderTimeline(container, job, onSelect) {
  const items = layout(job.segments);
  const total = Math.max(1, ...items.map((it) => it.start + Math.max(it.target ?? 0, it.achieved ?? 0))) * 1.02;
  const lanes = [];
  const focused = document.activeElement?.dataset?.segment;
  container.replaceChildren();
  for (const item of items) {
    const length = Math.max(item.target ?? 0, item.achieved ?? 0, 0.05);
    let lane = lanes.findIndex((end) => end <= item.start + 1e-6);
    if (lane < 0) lane = lanes.push(0) - 1;
    lanes[lane] = item.start + length;

    const bar = document.createElement("button");
    bar.type = "button";
    bar.className = `bar ${item.segment.status}${item.offTarget ? " off" : ""}`;
    bar.dataset.segment = item.segment.id;
    bar.dataset.status = item.segment.status;
    bar.style.left = `${(item.start / total) * 100}%`;
    bar.style.width = `max(6px, ${(length / total) * 100}%)`;
    bar.style.top = `${4 + lane * LANE}px`;
    bar.setAttribute("aria-label", describe(item));
    bar.title = describe(item);
    if (item.segment.status !== "done" && item.segment.status !== "failed") bar.disabled = true;
    if (item.target != null && item.segment.status !== "failed") {
      bar.style.background = `linear-gradient(to right, var(--slot) ${(item.target / length) * 100}%, transparent 0)`;
    }
    if (item.achieved != null && item.segment.status === "done") {
      const strip = document.createElement("span");
      strip.className = "achieved";
      strip.style.width = `${(item.achieved / length) * 100}%`;
      bar.append(strip);
    }
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = item.segment.status === "failed" ? `✕ ${item.segment.id}` : item.segment.id;
    label.setAttribute("aria-hidden", "true");
    bar.append(label);
    bar.addEventListener("click", () => onSelect(item.segment));
    container.append(bar);
  }
  container.style.height = `${8 + Math.max(1, lanes.length) * LANE + AXIS}px`;
  const axis = document.createElement("div");
  axis.className = "axis";
  axis.setAttribute("aria-hidden", "true");
  const step = total > 60 ? 10 : total > 20 ? 5 : 1;
  for (let t = 0; t < total; t += step) {
    const tick = document.createElement("span");
    tick.className = "tick";
    tick.style.left = `${(t / total) * 100}%`;
    tick.textContent = `${t} s`;
    axis.append(tick);
  }
  container.append(axis);
  // a redraw must not throw keyboard users out of the timeline
  if (focused) container.querySelector(`[data-segment="${CSS.escape(focused)}"]`)?.focus();
}
