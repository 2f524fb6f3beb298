"""The accelerator check's markdown: one table of every measurement (check.py writes it).

Rows come from the runner's records (results.jsonl holds the same, raw): the
timed meta-steps (one row per program), the ResNet-50 augmenter, the
diffusion meta-step, the torch.func reference, the gradient tests, and every
step that failed, was killed or was skipped, with the reason, so that the table
says what was not measured as plainly as what was.
"""

from __future__ import annotations

import json
import re

COLUMNS = ('measurement', 'shape', 'steps/s', 'step (ms)', 'compile (s)', 'peak (MiB)',
           'XLA estimate (MiB)', 'GFLOP/step', 'MFU', 'notes')


def _num(x, fmt: str = '{:.1f}') -> str:
  if x is None or (isinstance(x, float) and x != x):
    return '–'
  return fmt.format(x)


def _mfu(r: dict) -> str:
  if r.get('mfu') is None:
    return '–'
  return f'{100 * r["mfu"]:.2f}% of {r.get("peak_flops_basis", "")}'


def _peak(r: dict) -> str:
  text = _num(r.get('peak_memory_mb'), '{:,.0f}')
  if 'host' in r.get('peak_memory_kind', ''):
    text += ' (host RSS)'
  if r.get('peak_cumulative'):
    text = '≤ ' + text
  return text


def _concurrent(record: dict) -> str:
  others = [c for c in record.get('concurrent', []) if c != record['job']]
  return f'during: {", ".join(others)}' if others else ''


def _meta_row(name: str, r: dict, record: dict) -> list[str]:
  impl, size, layout = (name.split(' ') + ['', '', ''])[:3]
  what = f'meta-step, {impl}, {layout}' + (', precision default' if 'default' in name else '')
  notes = [f'conv_impl={r.get("conv_impl")}, task_chunk={r.get("task_chunk")}, '
           f'precision={r.get("matmul_precision")}']
  if r.get('load_s', 0) > 10:
    notes.append(f'cache miss? load {r["load_s"]:.0f} s')
  notes.append(_concurrent(record))
  return [what, f'{size}, {r.get("task", "")}, I={r.get("inner_steps")}, '
          f'B={r.get("meta_batch_size")}', _num(r.get('meta_steps_per_s'), '{:.2f}'),
          _num(1e3 * r['step_time_median_s'] if 'step_time_median_s' in r else None),
          _num(r.get('compile_s')), _peak(r), _num(r.get('xla_temp_mb'), '{:,.0f} temp'),
          _num((r.get('flops_per_meta_step') or float('nan')) / 1e9), _mfu(r),
          '; '.join(n for n in notes if n)]


def _resnet_row(r: dict, record: dict) -> list[str]:
  row = _meta_row(f'resnet50 {r.get("image_size")}px', r, record)
  row[0] = (f'ResNet-50 augmenter (frozen={r.get("augmenter_frozen")}, trunk '
            f'conv_impl={r.get("augmenter_conv_impl")}, decoder '
            f'{r.get("augmenter_decoder_impl", "native")}), ConvNet classifier')
  return row


def _diffusion_row(r: dict, record: dict, compile_record: dict | None) -> list[str]:
  c = (compile_record or {}).get('result', {})
  estimate = r.get('estimate_total_mb') or c.get('estimate_total_mb')
  notes = [f'{r.get("sd_dtype")} SD weights random (SD-1.5 shapes unless smoke), '
           f'prompt net {r.get("prompt_net")}, guidance {r.get("guidance_scale")}, '
           f'remat {r.get("remat")}, efficient attention {r.get("efficient_attention")}',
           _concurrent(record)]
  return ['diffusion meta-step', f'{r.get("generate_size")} px generated → '
          f'{r.get("image_size")} px, {r.get("num_inference_steps")} DDIM steps, '
          f'I={r.get("inner_steps")}, B={r.get("meta_batch_size")}',
          _num(r.get('meta_steps_per_s'), '{:.3f}'),
          _num(1e3 * r['step_time_median_s'] if 'step_time_median_s' in r else None, '{:,.0f}'),
          _num(c.get('compile_s') or r.get('compile_s')), _peak(r),
          _num(estimate, '{:,.0f} total'), '–', '–', '; '.join(n for n in notes if n)]


def _torch_rows(record: dict, log_text: str) -> list[list[str]]:
  rows, memory = [], {}
  for m in re.finditer(r'wrapper: img=(\d+) .*torch_cuda_max_memory_allocated_mb=([\d.]+)',
                       log_text):
    memory[int(m.group(1))] = float(m.group(2))
  for line in log_text.splitlines():
    if not line.startswith('result {'):
      continue
    r = json.loads(line[len('result '):])
    sync = ', synchronised' if record['spec'].get('sync') else ''
    rows.append([f'torch.func reference{sync}', f'{r["img"]} px', _num(r['steps_per_s'], '{:.2f}'),
                 _num(1e3 * r['median_s']), '–',
                 _num(memory.get(r['img']), '{:,.0f} (cuda max allocated)'), '–', '–', '–',
                 f'median of {r["n_steps"]}; {_concurrent(record)}'.rstrip('; ')])
  return rows


def _problem(record: dict) -> str:
  if record['skipped']:
    return f'skipped: {record["skipped"]}'
  if record['killed']:
    return f'killed at its timeout after {record["wall_s"]:.0f} s ({record["log"]})'
  if record['rc']:
    return f'failed, rc={record["rc"]} ({record["log"]})'
  return ''


def render(records: list[dict], header: dict, logs: dict[str, str] | None = None) -> str:
  """The markdown: a line about the machine and run, then the table."""
  logs = logs or {}
  env = next((r['result'] for r in records if r['job'] == 'env' and r['result']), {})
  versions = env.get('versions', {})
  lines = [f'Accelerator check, {header["when"]}: {env.get("num_devices", "?")} x '
           f'{env.get("device_kind", "?")} ({env.get("platform", "?")}), '
           f'{env.get("process_count", "?")} process(es); python {env.get("python", "?")}, '
           f'jax {versions.get("jax", "?")}, jaxlib {versions.get("jaxlib", "?")}; '
           f'budget {header["budget_s"]:.0f} s, wall {header["wall_s"]:.0f} s.'
           + (' SMOKE RUN: tiny shapes on whatever device ran it; not measurements.'
              if header.get('smoke') else ''),
           '', '| ' + ' | '.join(COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
  by_name = {r['job']: r for r in records}
  rows = []
  for record in records:
    problem, r = _problem(record), record['result']
    if record['group'] in ('meta', 'resnet') and record['spec'].get('mode') == 'time':
      runs = {k[len('run:'):]: v for k, v in r.items() if k.startswith('run:')}
      for name, run in runs.items():
        if 'error' in run:
          rows.append([name, '', *['–'] * 7, f'failed: {run["error"][:200]}'])
        elif record['group'] == 'resnet':
          rows.append(_resnet_row(run, record))
        else:
          rows.append(_meta_row(name, run, record))
    elif record['job'] == 'diffusion run' and r.get('step_time_median_s'):
      rows.append(_diffusion_row(r, record, by_name.get('diffusion compile')))
    elif record['group'] == 'torch' and not problem:
      rows.extend(_torch_rows(record, logs.get(record['job'], '')))
    elif record['job'] == 'diffusion compile' and not problem and not (
        by_name.get('diffusion run', {}).get('result', {}).get('step_time_median_s')):
      row = _diffusion_row(r, record, record)  # XLA's estimate only: the run did not happen
      row[-1] = 'compiled, not run (see the diffusion run row); ' + row[-1]
      rows.append(row)
    elif record['group'] == 'tests':
      found = re.findall(r'^=*\s*(\d+ (?:passed|failed|error).*?)\s*=*$',
                         logs.get(record['job'], ''), re.M)
      summary = found[-1] if found else problem
      rows.append([f'gradient tests ({record["spec"].get("file")}, -m '
                   f'"{record["spec"].get("mark")}")', '', *['–'] * 7,
                   f'{summary}; {_concurrent(record)}'.rstrip('; ')])
      continue
    if problem:
      rows.append([record['job'], '', *['–'] * 7, problem])
  lines += ['| ' + ' | '.join(row) + ' |' for row in rows]
  return '\n'.join(lines) + '\n'
