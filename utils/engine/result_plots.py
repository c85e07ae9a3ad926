"""results.png and evolve.png from their files: the run log's reader (utils/engine/runlog.py) feeding the charts
(utils/viz/charts.py). YOLOv5's ``plot_results(file, dir)`` and ``plot_evolve(evolve_csv)``."""
from __future__ import annotations

from pathlib import Path

from utils.core.logging import LOGGER
from utils.engine.runlog import read_results_csv
from utils.ops.metrics import fitness
from utils.viz.charts import RESULTS_PANELS, evolution_chart, results_chart


def plot_results(file: str | Path = 'path/to/results.csv', dir: str | Path = '') -> Path | None:
    """results.png beside ``file`` (utils.viz.charts.results_chart); every ``results*.csv`` in ``dir`` is overlaid when
    no file is given. A file that cannot be read gets a one-line warning and is left out."""
    file = Path(file) if file else None
    save_dir = file.parent if file else Path(dir)
    files = [file] if file and file.is_file() else sorted(save_dir.glob('results*.csv'))
    if not files:
        LOGGER.warning(f'WARNING ⚠️ No results.csv files found in {save_dir.resolve()}, nothing to plot.')
        return None
    runs = []
    for f in files:
        try:
            header, data = read_results_csv(f)
            if data.shape[1] <= max(RESULTS_PANELS):
                raise ValueError(f'expected at least {max(RESULTS_PANELS) + 1} columns, found {data.shape[1]}')
            runs.append((f.stem, header, data))
        except Exception as e:
            LOGGER.warning(f'WARNING ⚠️ Plotting error for {f}: {e}')
    return results_chart(runs, save_dir / 'results.png')


def plot_evolve(evolve_csv: str | Path = 'path/to/evolve.csv', n_results: int = 7) -> Path | None:
    """evolve.png beside ``evolve_csv`` (utils.viz.charts.evolution_chart): each evolved hyperparameter against the
    fitness of every generation; an unreadable or empty file gets a one-line warning."""
    file = Path(evolve_csv)
    try:
        keys, data = read_results_csv(file)
    except (OSError, ValueError) as e:
        LOGGER.warning(f'WARNING ⚠️ {file}: cannot plot evolution ({e})')
        return None
    if not len(data) or not keys[n_results:]:
        LOGGER.warning(f'WARNING ⚠️ {file}: no generations to plot')
        return None
    out = evolution_chart(keys[n_results:], data[:, n_results:], fitness(data), file.with_suffix('.png'))
    LOGGER.info(f'Saved {out}')
    return out
