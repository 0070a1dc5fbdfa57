// The inbox list: search, paging, delete and clear, and live updates from /events.
import { api, ApiError, attempt, clearError, part } from './api.js';
import { addresses, button, el, size, thead, time } from './dom.js';

const LIMIT = 50;
/** Kept across views, so that Escape from a message returns to the same search and page. */
const state = { q: '', offset: 0, total: 0, messages: [], selected: 0, unseen: 0 };
let nodes = null;

export const inbox = {
  async mount(view) {
    nodes = build();
    view.replaceChildren(nodes.root);
    await load();
  },
  unmount() {
    nodes = null;
  },
  refresh: () => load(),
  focusSearch() {
    nodes?.search.focus();
  },
  key(event) {
    const moves = { j: 1, k: -1 };
    const selected = state.messages[state.selected];
    if (event.key in moves) select(state.selected + moves[event.key], true);
    else if (event.key === 'Enter' && selected) open(selected.id);
    else return false;
    return true;
  },
  onMessage(summary) {
    if (state.messages.some((m) => m.id === summary.id)) return;
    if (state.offset > 0 || state.q) {
      state.unseen += 1;
    } else {
      state.messages = [summary, ...state.messages].slice(0, LIMIT);
      state.total += 1;
      state.selected = Math.min(state.selected + 1, state.messages.length - 1);
    }
    render();
  },
  onDeleted({ ids }) {
    const gone = new Set(ids);
    const kept = state.messages.filter((m) => !gone.has(m.id));
    state.total -= state.messages.length - kept.length;
    state.messages = kept;
    render();
  },
};

function build() {
  const search = el('input', {
    type: 'search', 'data-testid': 'search', name: 'q', 'aria-label': 'Search',
    placeholder: 'Search: words, from: to: subject: has:attachment is:unread before: after:',
  });
  search.value = state.q;
  const form = el('form', { class: 'search', role: 'search' }, search);
  form.addEventListener('submit', attempt((event) => {
    event.preventDefault();
    state.q = search.value.trim();
    state.offset = 0;
    return load();
  }));
  const parts = {
    search,
    error: el('p', { 'data-testid': 'search-error', class: 'search-error', hidden: true }),
    range: el('span', { class: 'range' }),
    unseen: button('', 'new-count', attempt(() => page(-state.offset)), { hidden: true }),
    prev: button('Newer', 'prev', attempt(() => page(-LIMIT))),
    next: button('Older', 'next', attempt(() => page(LIMIT))),
    clear: button('', 'clear', attempt(clearAll), { class: 'danger' }),
    rows: el('tbody'),
    empty: el('p', { class: 'empty', hidden: true }),
  };
  parts.root = el('section', { class: 'inbox' },
    form, parts.error,
    el('div', { class: 'toolbar' }, parts.range, parts.unseen, parts.prev, parts.next, parts.clear),
    el('table', { class: 'messages' },
      thead(['From', 'To', 'Subject', '', 'Size', 'Received', '']), parts.rows),
    parts.empty);
  return parts;
}

async function load() {
  const query = new URLSearchParams({ limit: LIMIT, offset: state.offset });
  if (state.q) query.set('q', state.q);
  clearError();
  try {
    const answer = await api('GET', `/messages?${query}`);
    const kept = state.messages[state.selected]?.id;
    const selected = Math.max(0, answer.messages.findIndex((m) => m.id === kept));
    Object.assign(state, { total: answer.total, messages: answer.messages, unseen: 0, selected });
    searchError(null);
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 422)) throw error;
    Object.assign(state, { total: 0, messages: [], unseen: 0 });
    searchError(error);
  }
  render();
}

/** A 422 from the query parser: its message, and a caret under the position it names. */
function searchError(error) {
  if (!nodes) return;
  nodes.error.hidden = !error;
  if (!error) return;
  const { position } = error.detail;
  nodes.error.replaceChildren(el('span', {}, error.message),
    Number.isInteger(position) ? el('code', {}, `${state.q}\n${' '.repeat(position)}^`) : null);
}

function render() {
  if (!nodes) return;
  const first = state.messages.length ? state.offset + 1 : 0;
  nodes.range.textContent = `${first}–${state.offset + state.messages.length} of ${state.total}`;
  nodes.unseen.textContent = `${state.unseen} new`;
  nodes.unseen.hidden = state.unseen === 0;
  nodes.prev.disabled = state.offset === 0;
  nodes.next.disabled = state.offset + state.messages.length >= state.total;
  nodes.clear.textContent = state.q ? 'Delete matching' : 'Delete all';
  nodes.clear.disabled = state.total === 0;
  nodes.empty.textContent = state.q
    ? 'No message matches this search.'
    : 'No messages yet: send one to the SMTP port.';
  nodes.empty.hidden = state.messages.length > 0;
  nodes.rows.replaceChildren(...state.messages.map(row));
  select(state.selected);
}

function row(message) {
  const { id, received_at: at, attachments } = message;
  const clip = attachments > 0 && el('span', {
    class: 'clip', role: 'img', 'aria-label': 'has attachments',
    title: `${attachments} attachment(s)`,
  });
  const remover = button('Delete', 'delete', attempt((event) => {
    event.stopPropagation(); // not also a click on the row, which opens it
    return remove(id);
  }), { class: 'quiet', 'aria-label': 'Delete this message' });
  const tr = el('tr', {
    'data-testid': 'message-row', 'data-id': id, class: message.read ? 'read' : 'unread',
  },
    el('td', { class: 'from' }, addresses(message.from)),
    el('td', { class: 'to' }, addresses(message.to)),
    el('td', { class: 'subject' }, el('span', {}, message.subject || '(no subject)'),
      el('span', { class: 'snippet' }, message.snippet)),
    el('td', { class: 'mark' }, clip),
    el('td', { class: 'size' }, size(message.size)),
    el('td', { class: 'time' }, el('time', { datetime: at, title: at }, time(at))),
    el('td', {}, remover));
  tr.addEventListener('click', () => open(id));
  return tr;
}

function select(index, scroll = false) {
  if (!nodes || !state.messages.length) return;
  state.selected = Math.max(0, Math.min(index, state.messages.length - 1));
  [...nodes.rows.children].forEach((tr, i) => {
    tr.classList.toggle('selected', i === state.selected);
    tr.setAttribute('aria-selected', String(i === state.selected));
  });
  if (scroll) nodes.rows.children[state.selected].scrollIntoView({ block: 'nearest' });
}

function open(id) {
  location.hash = `#/messages/${part(id)}`;
}

function page(step) {
  state.offset = Math.max(0, state.offset + step);
  return load();
}

async function remove(id) {
  await api('DELETE', `/messages/${part(id)}`);
  inbox.onDeleted({ ids: [id] });
}

async function clearAll() {
  const what = state.q ? `the ${state.total} messages matching “${state.q}”` : 'all messages';
  if (!confirm(`Delete ${what}?`)) return;
  await api('DELETE', state.q ? `/messages?${new URLSearchParams({ q: state.q })}` : '/messages');
  state.offset = 0;
  await load();
}
