// Dubbing jobs: submit subtitles, follow the job's Server-Sent Events, draw its timeline, play lines and the track.

import { $, api, apiKey, getJson, say, showError } from "./api.js";
import { renderTimeline } from "./timeline.js";

let events = null;

export async function submitJob() {
  const file = $("subtitles").files[0];
  if (!file) throw new Error("Choose a subtitle file first.");
  const form = new FormData();
  form.set("subtitles", file);
  form.set("language", $("job-lang").value);
  if ($("job-voice").value) form.set("voice", $("job-voice").value);
  $("track").hidden = true;
  const job = await getJson("/v1/jobs", { method: "POST", body: form });
  say(`Dubbing job ${job.id} started.`);
  follow(job.id);
}

/** Follow a job through its Server-Sent Events; each change re-reads the job (one fetch in flight at a time). */
function follow(id) {
  events?.close();
  // EventSource cannot send an API key: with one, poll the job instead
  const source = apiKey() ? new JobPoller(`/v1/jobs/${id}`) : new EventSource(`/v1/jobs/${id}/events`);
  events = source;
  let busy = false;
  let again = false;
  const refresh = async () => {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    try {
      showJob(await getJson(`/v1/jobs/${id}`));
    } catch (error) {
      showError("job-error", error);
    } finally {
      busy = false;
      if (again) {
        again = false;
        refresh();
      }
    }
  };
  source.addEventListener("progress", refresh);
  source.addEventListener("end", () => {
    source.close();
    refresh();
  });
}

/** The part of EventSource that follow() uses, by polling the job once a second. */
class JobPoller {
  constructor(url) {
    this.listeners = {};
    this.timer = setInterval(async () => {
      try {
        const job = await getJson(url);
        this.emit(["done", "failed", "cancelled"].includes(job.status) ? "end" : "progress");
      } catch (error) {
        showError("job-error", error);
      }
    }, 1000);
  }
  addEventListener(name, listener) { this.listeners[name] = listener; }
  emit(name) { this.listeners[name]?.(); }
  close() { clearInterval(this.timer); }
}

/** A media URL the page can play: the URL itself, or with an API key a blob fetched with it. */
async function playable(url) {
  if (!apiKey()) return url;
  return URL.createObjectURL(await (await api(url)).blob());
}

function showJob(job) {
  const p = job.progress;
  const progress = $("job-progress");
  progress.hidden = false;
  progress.value = p.fraction;
  const failed = p.failed ? `, ${p.failed} failed` : "";
  $("job-info").textContent = `Job ${job.id}: ${job.status}, ${p.done} of ${p.total} lines done${failed}.`;
  $("job-info").dataset.status = job.status;
  $("timeline").hidden = false;
  $("timeline-legend").hidden = false;
  renderTimeline($("timeline"), job, playLine);
  if (["done", "failed", "cancelled"].includes(job.status)) {
    playable(`/v1/jobs/${job.id}/track`).then((url) => {
      $("track-audio").src = url;
      $("track-link").href = url;
      $("track").hidden = false;
      say(`Job ${job.id} ${job.status}: the track is ready.`);
    }).catch((error) => showError("job-error", error));
  }
}

function playLine(segment) {
  showError("job-error", null);
  if (segment.status === "failed") {
    showError("job-error", new Error(`Line ${segment.id} failed: ${segment.error?.message ?? "unknown error"}`));
    return;
  }
  const audio = $("line-audio");
  $("line-player").hidden = false;
  $("line-label").textContent = `Line ${segment.id}`;
  playable(segment.url).then((url) => {
    audio.src = url;
    audio.play().catch(() => {}); // a blocked autoplay still leaves the controls to press
    say(`Playing line ${segment.id}: ${segment.text}`);
  }).catch((error) => showError("job-error", error));
}
