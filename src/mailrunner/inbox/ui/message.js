// One message: its HTML preview (sandboxed, no scripts), text, headers, raw source,
// attachments, envelope and captured AUTH.
import { api, attempt, part } from './api.js';
import { addresses, button, el, size, table } from './dom.js';

const TABS = {
  html: 'HTML', text: 'Text', headers: 'Headers', raw: 'Raw', attachments: 'Attachments',
};
let openId = null;

export const message = {
  async mount(view, id) {
    openId = id;
    const path = `/messages/${part(id)}`;
    const [event] = await Promise.all([api('GET', path), api('POST', `${path}/read`)]);
    const shown = { path, event, raw: null, tab: null };
    shown.panel = el('div', { class: 'panel', role: 'tabpanel' });
    const count = (name) => (name === 'attachments' ? ` (${event.attachments.length})` : '');
    const tabs = el('div', { class: 'tabs', role: 'tablist' },
      Object.entries(TABS).map(([name, label]) => button(label + count(name), `tab-${name}`,
        attempt(() => show(shown, tabs, name)), { role: 'tab', 'data-tab': name })));
    view.replaceChildren(el('article', { class: 'message' },
      el('div', { class: 'toolbar' },
        el('a', { href: '#/', class: 'back' }, '← Inbox'),
        el('a', { href: `${path}/raw`, download: `${id}.eml` }, 'Download .eml'),
        button('Delete', 'delete', attempt(async () => {
          await api('DELETE', path);
          location.hash = '#/';
        }), { class: 'danger' })),
      el('h1', { 'data-testid': 'message-subject' }, event.message.subject || '(no subject)'),
      details(event), tabs, shown.panel));
    await show(shown, tabs, event.message.html_body ? 'html' : 'text');
  },
  unmount() {
    openId = null;
  },
  /** Deleted elsewhere (another tab, the CLI): back to the list. */
  onDeleted({ ids }) {
    if (ids.includes(openId)) location.hash = '#/';
  },
};

function details(event) {
  const { message: headers, envelope, authentication: auth } = event;
  const recipients = envelope.to.map((to) => `<${to}>`).join(' ');
  const rows = [
    ['From', addresses(headers.from)],
    ['To', addresses(headers.to)],
    headers.cc.length ? ['Cc', addresses(headers.cc)] : null,
    ['Received', `${event.received_at} from ${event.remote_addr} (HELO ${envelope.helo})`],
    ['Envelope', `MAIL FROM:<${envelope.from}> RCPT TO:${recipients}`],
    auth ? ['AUTH', el('span', {}, `${auth.mechanism} ${auth.username ?? '(no username)'} `,
      password(auth.password))] : null,
  ];
  return el('dl', { class: 'details' },
    rows.filter(Boolean).map(([term, value]) => [el('dt', {}, term), el('dd', {}, value)]));
}

/** The captured password, hidden until its button is clicked. */
function password(secret) {
  if (secret === null) return '(no password)';
  const text = el('span', { class: 'secret', 'data-testid': 'auth-password', hidden: true },
    secret);
  const toggle = button('show', 'auth-show', () => {
    text.hidden = !text.hidden;
    toggle.textContent = text.hidden ? 'show' : 'hide';
  }, { class: 'quiet' });
  return el('span', {}, text, toggle);
}

async function show(shown, tabs, name) {
  shown.tab = name;
  for (const tab of tabs.children) {
    tab.setAttribute('aria-selected', String(tab.dataset.tab === name));
  }
  const content = await panel(shown, name);
  // A tab clicked while this one was loading wins.
  if (shown.tab === name) shown.panel.replaceChildren(content);
}

async function panel(shown, name) {
  const { path, event } = shown;
  switch (name) {
    case 'html':
      return event.message.html_body
        ? preview(path)
        : el('p', { class: 'empty' }, 'This message has no HTML part.');
    case 'text':
      return el('pre', {}, event.message.body || '(no text part)');
    case 'headers':
      return table(['Name', 'Value'], headerFields(await raw(shown)), { class: 'headers' });
    case 'raw':
      return el('pre', {}, await raw(shown));
    default:
      return attachments(path, event.attachments);
  }
}

async function raw(shown) {
  shown.raw ??= await api('GET', `${shown.path}/raw`);
  return shown.raw;
}

/** The HTML body in a frame without allow-scripts; the server's CSP blocks remote images
 * unless ?remote=1. */
function preview(path) {
  const frame = el('iframe', {
    sandbox: true, 'data-testid': 'preview-frame', title: 'HTML preview', src: `${path}/html`,
  });
  const remote = el('input', { type: 'checkbox', 'data-testid': 'remote-images' });
  remote.addEventListener('change', () => {
    frame.src = remote.checked ? `${path}/html?remote=1` : `${path}/html`;
  });
  return el('div', { class: 'preview' }, el('label', {}, remote, ' Load remote images'), frame);
}

function attachments(path, list) {
  if (!list.length) return el('p', { class: 'empty' }, 'No attachments.');
  const rows = list.map((attachment, index) => [
    el('a', {
      href: `${path}/attachments/${index}`,
      download: attachment.filename ?? '',
      'data-testid': 'attachment-link',
    }, attachment.filename ?? `attachment ${index}`),
    attachment.content_type,
    size(attachment.size),
    attachment.inline ? 'inline' : '',
  ]);
  return table(['Name', 'Type', 'Size', ''], rows, { class: 'attachments' });
}

/** The header fields of a raw message, in order, each folded value unfolded (RFC 5322 2.2.3:
 * a line break followed by white space is removed). */
export function headerFields(rawText) {
  const end = rawText.search(/\r?\n\r?\n/);
  const fields = [];
  for (const line of (end < 0 ? rawText : rawText.slice(0, end)).split(/\r?\n/)) {
    const colon = line.indexOf(':');
    if (/^[ \t]/.test(line) && fields.length) fields[fields.length - 1][1] += line;
    else if (colon > 0) fields.push([line.slice(0, colon), line.slice(colon + 1)]);
  }
  return fields.map(([name, value]) => [name, value.trim()]);
}
