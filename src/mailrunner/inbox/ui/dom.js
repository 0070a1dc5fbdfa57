// Building DOM from data. Every value from a message reaches the page as a text node, never as
// HTML: `el` has no way to set innerHTML, and attributes go through setAttribute.

/** `el('a', {href: '#/', 'data-id': id}, 'text', child)`: an element. Strings become text
 * nodes, arrays (nested too) are spread, null/undefined/false children are skipped. Attribute
 * values false/null/undefined are omitted, true sets an empty attribute. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === true) node.setAttribute(name, '');
    else if (value !== false && value !== null && value !== undefined) {
      node.setAttribute(name, String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** A button that runs `action` on click. */
export function button(label, testid, action, attrs = {}) {
  const node = el('button', { type: 'button', 'data-testid': testid, ...attrs }, label);
  node.addEventListener('click', action);
  return node;
}

/** Addresses as the API gives them: a string, or a list of {name, email} or strings. */
export function addresses(value) {
  if (!Array.isArray(value)) return value ?? '';
  const one = (a) => (typeof a === 'string' ? a : a.name ? `${a.name} <${a.email}>` : a.email);
  return value.map(one).join(', ');
}

export function size(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

/** A received_at ISO time as the reader's local time: the clock today, else the date. */
export function time(iso) {
  const at = new Date(iso);
  const today = at.toDateString() === new Date().toDateString();
  return today
    ? at.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
    : at.toLocaleDateString();
}

export function thead(headings) {
  return el('thead', {}, el('tr', {}, headings.map((h) => el('th', { scope: 'col' }, h))));
}

/** A table with a header row; `rows` are arrays of cells (strings or nodes). */
export function table(headings, rows, attrs = {}) {
  return el('table', attrs, thead(headings),
    el('tbody', {}, rows.map((cells) => el('tr', {}, cells.map((c) => el('td', {}, c))))));
}
