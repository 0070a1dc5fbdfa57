// Calls to the mailrunner HTTP API, and the banner that shows when one fails. Requests are
// same-origin with the session cookie; every change is sent as JSON (the API refuses any other
// content type for a POST or DELETE, so that a page on another site cannot send one).

export class ApiError extends Error {
  constructor(status, message, detail = {}) {
    super(message);
    this.status = status;
    this.detail = detail;
  }
}

/** The parsed JSON answer (text for other types); ApiError for a failure. A 401 (rpc.token set,
 * no valid session) goes to the login page. */
export async function api(method, path, body) {
  const init = { method, credentials: 'same-origin', headers: {} };
  if (method !== 'GET') {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body ?? {});
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, `cannot reach the mailrunner server (${method} ${path})`);
  }
  if (response.status === 401) {
    location.assign('/ui/login');
    throw new ApiError(401, 'logging in again');
  }
  const json = (response.headers.get('Content-Type') ?? '').includes('json');
  if (!response.ok) {
    const detail = json ? await response.json().catch(() => ({})) : {};
    const message = detail.error ?? `${method} ${path}: ${response.status} ${response.statusText}`;
    throw new ApiError(response.status, message, detail);
  }
  return json ? response.json() : response.text();
}

/** A path segment: names and ids reach the URL escaped. */
export const part = encodeURIComponent;

const banner = () => document.getElementById('error-banner');

export function showError(error) {
  banner().textContent = error instanceof Error ? error.message : String(error);
  banner().hidden = false;
}

export function clearError() {
  banner().hidden = true;
}

/** `action` as an event handler: its failure shows in the banner instead of the console. */
export function attempt(action) {
  return async (...args) => {
    clearError();
    try {
      await action(...args);
    } catch (error) {
      showError(error);
    }
  };
}
