// The single page: hash routes to views, live updates from /events, the keyboard.
import { pipelines, workers } from './admin.js';
import { api, attempt, clearError, showError } from './api.js';
import { inbox } from './inbox.js';
import { message } from './message.js';

/** `#/`, `#/messages/<id>`, `#/pipelines`, `#/workers` → [view, nav name, argument]. */
function route(hash) {
  const [, page = '', arg] = hash.replace(/^#/, '').split('/');
  if (page === 'messages' && arg) return [message, 'inbox', decodeURIComponent(arg)];
  const pages = { pipelines: [pipelines, 'pipelines'], workers: [workers, 'workers'] };
  return pages[page] ?? [inbox, 'inbox'];
}

let current = null;

async function navigate() {
  const [view, nav, arg] = route(location.hash);
  current?.unmount?.();
  current = view;
  for (const link of document.querySelectorAll('[data-nav]')) {
    link.classList.toggle('active', link.dataset.nav === nav);
  }
  // Each visit renders into its own container: a slow earlier visit then fills a detached one.
  const container = document.createElement('div');
  document.getElementById('view').replaceChildren(container);
  clearError();
  try {
    await view.mount(container, arg);
  } catch (error) {
    if (container.isConnected) showError(error);
  }
}

/** Live updates: each event goes to the view on screen, if it takes that kind. A lost stream
 * shows in the banner; a reconnect clears it and reloads the view, since events sent while
 * disconnected are lost. */
function listen() {
  const source = new EventSource('/events');
  let opened = false;
  const deliver = (method) => (event) => current?.[method]?.(JSON.parse(event.data));
  source.addEventListener('message', deliver('onMessage'));
  source.addEventListener('deleted', deliver('onDeleted'));
  source.addEventListener('stats', deliver('onStats'));
  source.addEventListener('open', attempt(async () => {
    if (opened) await current?.refresh?.();
    opened = true;
  }));
  source.addEventListener('error', () => showError(source.readyState === EventSource.CLOSED
    ? 'Live updates stopped: reload the page to resume them.'
    : 'Lost the connection to the server: reconnecting…'));
}

const typing = (target) => target.matches('input, textarea, select, [contenteditable]');

function onKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (event.key === 'Escape') {
    if (typing(event.target)) event.target.blur();
    else if (current !== inbox) location.hash = '#/';
    return;
  }
  if (typing(event.target) || (event.key === 'Enter' && event.target.closest('button, a'))) return;
  if (event.key === '/') {
    event.preventDefault();
    if (current === inbox) inbox.focusSearch();
    else location.hash = '#/';
  } else if (current?.key?.(event)) {
    event.preventDefault();
  }
}

document.getElementById('logout').addEventListener('click', attempt(async () => {
  await api('POST', '/ui/logout');
  location.assign('/ui/login');
}));
document.addEventListener('keydown', onKey);
window.addEventListener('hashchange', navigate);
navigate();
listen();
