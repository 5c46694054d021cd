"""Logging of both backends' runs: ``OUTPUT_DIR/log.txt`` plus the console, and log lines that
print above a tqdm progress bar instead of breaking it."""
from __future__ import annotations

import logging
import os

def setup_logging(output_dir: str, rank: int = 0, name: str = "ood_det") -> logging.Logger:
    """Log ``name`` to ``output_dir/log.txt`` (rank 0; ``log_rank{r}.txt`` otherwise) and to the
    console (rank 0, INFO). Calling it again replaces the handlers it added before."""
    log = logging.getLogger(name)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    for h in list(log.handlers):
        if getattr(h, "_ood_det", False):
            log.removeHandler(h)
            h.close()
    fmt = logging.Formatter("[%(asctime)s %(name)s %(levelname)s] %(message)s", "%m/%d %H:%M:%S")
    os.makedirs(output_dir, exist_ok=True)
    fh = logging.FileHandler(os.path.join(output_dir, "log.txt" if rank == 0 else f"log_rank{rank}.txt"))
    fh.setFormatter(fmt)
    fh.setLevel(logging.DEBUG)
    fh._ood_det = True
    log.addHandler(fh)
    if rank == 0:
        sh = logging.StreamHandler()
        sh.setFormatter(fmt)
        sh.setLevel(logging.INFO)
        sh._ood_det = True
        log.addHandler(sh)
    return log


def console_through_tqdm(log: logging.Logger):
    """Route ``log``'s console handlers through ``tqdm.write`` (log lines appear above the progress
    bar instead of breaking it); returns a function that undoes it."""
    from tqdm import tqdm

    class _TqdmHandler(logging.StreamHandler):
        def emit(self, record):
            try:
                tqdm.write(self.format(record), file=self.stream)
            except Exception:  # pragma: no cover - logging must never raise
                self.handleError(record)

    old = list(log.handlers)
    new = []
    for h in old:
        if type(h) is logging.StreamHandler:
            t = _TqdmHandler(h.stream)
            t.setFormatter(h.formatter)
            t.setLevel(h.level)
            new.append(t)
        else:
            new.append(h)
    log.handlers = new

    def restore():
        log.handlers = old

    return restore
