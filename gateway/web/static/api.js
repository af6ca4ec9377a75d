// Calls to the gateway and the page's message regions, shared by the page's modules.

export const $ = (id) => document.getElementById(id);

export class ApiError extends Error {
  constructor(message, code, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

const KEY_ITEM = "sovits-gateway.api-key";

/** The API key typed in the page's header (kept in localStorage), or "" when the gateway runs without keys. */
export const apiKey = () => localStorage.getItem(KEY_ITEM) ?? "";
export const setApiKey = (key) => (key ? localStorage.setItem(KEY_ITEM, key) : localStorage.removeItem(KEY_ITEM));

/** fetch() with the API key (if any) that turns a non-2xx answer into an ApiError carrying the envelope's message
 * and code. */
export async function api(path, options = {}) {
  const headers = new Headers(options.headers ?? {});
  if (apiKey()) headers.set("Authorization", `Bearer ${apiKey()}`);
  const response = await fetch(path, { ...options, headers });
  if (response.ok) return response;
  let message = `${response.status} ${response.statusText}`;
  let code = null;
  try {
    const body = await response.json();
    message = body.error?.message ?? message;
    code = body.error?.code ?? null;
  } catch {
    // not the envelope (a proxy's page): the status line is all there is
  }
  throw new ApiError(message, code, response.status);
}

export const getJson = async (path, options) => (await api(path, options)).json();
export const say = (message) => { $("status").textContent = message; };
export const showError = (id, error) => { $(id).textContent = error ? error.message || String(error) : ""; };
export const secs = (value) => `${value.toFixed(2)} s`;

/** Run `action` with `button` disabled; its error lands in the `errorId` alert region. */
export function handler(button, errorId, action) {
  button.addEventListener("click", async () => {
    showError(errorId, null);
    button.disabled = true;
    try {
      await action();
    } catch (error) {
      showError(errorId, error);
      say("");
    } finally {
      button.disabled = false;
    }
  });
}
