// The pipelines page (counts live from /events, pause and resume, the failed list) and the
// workers page, over the management API's existing routes.
import { api, ApiError, attempt, part } from './api.js';
import { button, el, size, table } from './dom.js';

const COUNTS = ['queued', 'reserved', 'delayed', 'failed'];
/** The worker pools a server may run (wire/protocol.py SMTP_MODE and JOBS_MODE). */
const POOLS = ['smtp', 'jobs'];
let rows = null;

export const pipelines = {
  async mount(view) {
    const { pipelines: names } = await api('GET', '/jobs/pipelines');
    const stats = await Promise.all(names.map((name) => api('GET', `/jobs/pipelines/${part(name)}/stat`)));
    const failed = el('section', { class: 'failed' });
    rows = new Map(stats.map((stat) => [stat.pipeline, pipelineRow(stat, failed)]));
    view.replaceChildren(el('section', {},
      el('h1', {}, 'Pipelines'),
      el('table', { class: 'pipelines' },
        el('thead', {}, el('tr', {}, ['Pipeline', 'Driver', 'State', ...COUNTS, ''].map((h) => el('th', { scope: 'col', class: 'capital' }, h)))),
        el('tbody', {}, [...rows.values()].map((row) => row.tr))),
      failed));
  },
  unmount() {
    rows = null;
  },
  /** `stats` from /events: `{"pipelines": [<stat>, ...]}`, each as GET .../stat answers. */
  onStats({ pipelines: stats }) {
    for (const stat of stats) rows?.get(stat.pipeline)?.update(stat);
  },
};

function pipelineRow(stat, failed) {
  const name = stat.pipeline;
  const cells = Object.fromEntries(COUNTS.map((count) => [count, el('td', { class: 'count', 'data-count': count })]));
  const state = el('td');
  const pause = button('Pause', 'pause', attempt(() => change(name, 'pause')));
  const resume = button('Resume', 'resume', attempt(() => change(name, 'resume')));
  const show = button('Failed jobs', 'show-failed', attempt(() => showFailed(name, failed)), { class: 'quiet' });
  const tr = el('tr', { 'data-testid': 'pipeline-row', 'data-name': name },
    el('th', { scope: 'row' }, name), el('td', {}, stat.driver), state,
    COUNTS.map((count) => cells[count]), el('td', { class: 'actions' }, pause, resume, show));
  const row = {
    tr,
    update(fresh) {
      for (const count of COUNTS) cells[count].textContent = fresh[count];
      state.textContent = fresh.paused ? 'paused' : fresh.consuming ? 'consuming' : 'not consumed here';
      pause.disabled = fresh.paused;
      resume.disabled = !fresh.paused;
    },
  };
  row.update(stat);
  return row;
}

async function change(name, action) {
  await api('POST', `/jobs/pipelines/${part(name)}/${action}`);
  await refreshRow(name);
}

async function refreshRow(name) {
  rows?.get(name)?.update(await api('GET', `/jobs/pipelines/${part(name)}/stat`));
}

/** The pipeline's failed list (the first 100), each job with retry and purge, and both for all. */
async function showFailed(name, section) {
  const base = `/jobs/pipelines/${part(name)}/failed`;
  const { failed } = await api('GET', `${base}?limit=100`);
  const act = (action, ids) => attempt(async () => {
    if (action === 'purge' && !confirm(`Purge ${ids ? 'this job' : 'every failed job'} of ${name}?`)) return;
    await api('POST', `${base}/${action}`, ids ? { ids } : {});
    await Promise.all([showFailed(name, section), refreshRow(name)]);
  });
  const heading = el('h2', {}, `Failed jobs of ${name}`);
  if (!failed.length) {
    section.replaceChildren(heading, el('p', { class: 'empty' }, 'None.'));
    return;
  }
  section.replaceChildren(heading,
    el('div', { class: 'toolbar' },
      button('Retry all', 'retry-all', act('retry', null)),
      button('Purge all', 'purge-all', act('purge', null), { class: 'danger' })),
    table(['Job', 'Attempts', 'Failed at', 'Error', ''], failed.map((f) => [
      el('span', { title: f.job.id }, f.job.job), String(f.attempts), new Date(f.failed_at * 1000).toLocaleString(),
      el('span', { class: 'error' }, f.error),
      el('span', {}, button('Retry', 'retry', act('retry', [f.job.id])), button('Purge', 'purge', act('purge', [f.job.id]), { class: 'danger' })),
    ]), { class: 'failed-jobs' }));
}

export const workers = {
  async mount(view) {
    const pools = (await Promise.all(POOLS.map(runningPool))).filter(Boolean);
    const refresh = button('Refresh', 'refresh', attempt(() => workers.mount(view)));
    view.replaceChildren(el('section', {}, el('h1', {}, 'Workers ', refresh),
      pools.length ? table(['Pool', 'PID', 'State', 'Executions', 'RSS', 'Started'], pools.flatMap(({ pool, workers: list }) => list.map((w) => [
        pool, String(w.pid), w.state, String(w.executions), size(w.rss_bytes), new Date(w.created * 1000).toLocaleString(),
      ])), { class: 'workers' }) : el('p', { class: 'empty' }, 'No worker pool runs here: the inbox needs none.')));
  },
};

/** The pool's workers, or null when this server does not run that pool (404). */
async function runningPool(pool) {
  try {
    return await api('GET', `/workers/${pool}`);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return null;
    throw error;
  }
}
