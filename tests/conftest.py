"""Settings every test process starts from: no test writes to the user's data directory.

In-process job records live under ``CNNVIZ_DATA_DIR``, by default the user's
``~/.local/share/cnnviz``. Here, before any test module builds an app (``service.main``
builds one at import), the variable is set to ``:memory:`` (records in memory, as each test
app had them before; the tests of the SQLite store give it a temporary directory of their
own), and ``XDG_DATA_HOME`` to a temporary directory of this process, so that even a default
computed from it lands there: runs, and parallel workers, never share a store.

``CNNVIZ_COMPILE`` is ``off`` unless a test sets it: under ``auto``, on a CPU where compiling
pays (native bf16), the first optimization job would compile its step in the background for
minutes and every later job of that shape would run compiled, so which tests compile would
depend on their order. The compile tests choose their mode explicitly.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

_DATA_HOME = tempfile.mkdtemp(prefix="cnnviz-test-data-")
atexit.register(shutil.rmtree, _DATA_HOME, ignore_errors=True)
os.environ["XDG_DATA_HOME"] = _DATA_HOME
os.environ["CNNVIZ_DATA_DIR"] = ":memory:"
os.environ.setdefault("CNNVIZ_COMPILE", "off")
