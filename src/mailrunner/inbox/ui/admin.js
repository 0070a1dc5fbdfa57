// The pipelines page (counts live from /events, pause and resume, the failed list) and the
// workers page, over the management API's existing routes.
import { api, attempt, part } from './api.js';
import { button, el, size, table, thead } from './dom.js';

const COUNTS = ['queued', 'reserved', 'delayed', 'failed'];
let page = null;

const stamp = (seconds) => new Date(seconds * 1000).toLocaleString();

export const pipelines = {
  async mount(view) {
    const { pipelines: names } = await api('GET', '/jobs/pipelines');
    const stats = await Promise.all(names.map((name) => api('GET', `${base(name)}/stat`)));
    const failed = el('section', { class: 'failed' });
    const rows = new Map(stats.map((stat) => [stat.pipeline, pipelineRow(stat, failed)]));
    page = { view, rows };
    view.replaceChildren(el('section', {},
      el('h1', {}, 'Pipelines'),
      el('table', { class: 'pipelines' },
        thead(['Pipeline', 'Driver', 'State', ...COUNTS, '']),
        el('tbody', {}, [...rows.values()].map((row) => row.tr))),
      failed));
  },
  unmount() {
    page = null;
  },
  refresh: () => page && pipelines.mount(page.view),
  /** `stats` from /events: `{"pipelines": [<stat>, ...]}`, each as GET .../stat answers. A
   * pipeline declared or destroyed since the page was drawn redraws it. */
  async onStats({ pipelines: stats }) {
    if (!page) return;
    const same = stats.length === page.rows.size && stats.every((s) => page.rows.has(s.pipeline));
    if (!same) return pipelines.refresh();
    for (const stat of stats) page.rows.get(stat.pipeline).update(stat);
  },
};

const base = (name) => `/jobs/pipelines/${part(name)}`;

function pipelineRow(stat, failed) {
  const name = stat.pipeline;
  const cells = Object.fromEntries(
    COUNTS.map((count) => [count, el('td', { class: 'count', 'data-count': count })]));
  const state = el('td');
  const pause = button('Pause', 'pause', attempt(() => change(name, 'pause')));
  const resume = button('Resume', 'resume', attempt(() => change(name, 'resume')));
  const show = button('Failed jobs', 'show-failed', attempt(() => showFailed(name, failed)),
    { class: 'quiet' });
  const tr = el('tr', { 'data-testid': 'pipeline-row', 'data-name': name },
    el('th', { scope: 'row' }, name), el('td', {}, stat.driver), state,
    COUNTS.map((count) => cells[count]), el('td', { class: 'actions' }, pause, resume, show));
  const row = {
    tr,
    update(fresh) {
      for (const count of COUNTS) cells[count].textContent = fresh[count];
      state.textContent = fresh.paused ? 'paused' : fresh.consuming ? 'consuming' : 'not consumed';
      pause.disabled = fresh.paused;
      resume.disabled = !fresh.paused;
    },
  };
  row.update(stat);
  return row;
}

async function change(name, action) {
  await api('POST', `${base(name)}/${action}`);
  await refreshRow(name);
}

async function refreshRow(name) {
  const stat = await api('GET', `${base(name)}/stat`);
  page?.rows.get(name)?.update(stat);
}

/** The pipeline's failed list (the first 100), each job with retry and purge, and both for all. */
async function showFailed(name, section) {
  const { failed } = await api('GET', `${base(name)}/failed?limit=100`);
  const act = (action, ids) => attempt(async () => {
    const what = ids ? 'this job' : 'every failed job';
    if (action === 'purge' && !confirm(`Purge ${what} of ${name}?`)) return;
    await api('POST', `${base(name)}/failed/${action}`, ids ? { ids } : {});
    await Promise.all([showFailed(name, section), refreshRow(name)]);
  });
  const heading = el('h2', {}, `Failed jobs of ${name}`);
  if (!failed.length) {
    section.replaceChildren(heading, el('p', { class: 'empty' }, 'None.'));
    return;
  }
  const rows = failed.map(({ job, attempts, failed_at: at, error }) => [
    el('span', { title: job.id }, job.job), String(attempts), stamp(at),
    el('span', { class: 'error' }, error),
    el('span', {},
      button('Retry', 'retry', act('retry', [job.id])),
      button('Purge', 'purge', act('purge', [job.id]), { class: 'danger' })),
  ]);
  section.replaceChildren(heading,
    el('div', { class: 'toolbar' },
      button('Retry all', 'retry-all', act('retry', null)),
      button('Purge all', 'purge-all', act('purge', null), { class: 'danger' })),
    table(['Job', 'Attempts', 'Failed at', 'Error', ''], rows, { class: 'failed-jobs' }));
}

export const workers = {
  async mount(view) {
    const { pools: names } = await api('GET', '/workers');
    const pools = await Promise.all(names.map((pool) => api('GET', `/workers/${part(pool)}`)));
    const rows = pools.flatMap(({ pool, workers: list }) => list.map((worker) => [
      pool, String(worker.pid), worker.state, String(worker.executions), size(worker.rss_bytes),
      stamp(worker.created),
    ]));
    view.replaceChildren(el('section', {},
      el('h1', {}, 'Workers ', button('Refresh', 'refresh', attempt(() => workers.mount(view)))),
      rows.length
        ? table(['Pool', 'PID', 'State', 'Executions', 'RSS', 'Started'], rows,
          { class: 'workers' })
        : el('p', { class: 'empty' }, 'No worker runs here (the inbox needs none).')));
  },
};
