"""Progress bars on stderr.

tqdm (well kept, handles terminals, redirects and rates better than a hand-written bar) is used
when stderr is a terminal; ``BERT_REC_PROGRESS=1`` forces bars on, ``=0`` off.
"""

import os
import sys

from tqdm import tqdm

from .terminal import safe


def enabled():
    """Progress bars show when BERT_REC_PROGRESS isn't '0' and stderr is a terminal (or =1)."""
    setting = os.environ.get("BERT_REC_PROGRESS", "")
    if setting in ("0", "1"):
        return setting == "1"
    return sys.stderr.isatty()


def progress_bar(total=None, desc=None, unit="it"):
    """A tqdm bar that stays silent for jobs under ~2 s and when progress is disabled."""
    return tqdm(total=total, desc=safe(desc) if desc else desc, unit=unit, disable=not enabled(), mininterval=0.5,
                delay=2.0, leave=False, file=sys.stderr, dynamic_ncols=True)
