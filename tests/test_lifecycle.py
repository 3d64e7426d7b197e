"""StopSignal: a second SIGTERM that lands while the first is being handled does not hang.

Two SIGTERMs close together are ordinary (GNU ``timeout``, an impatient Ctrl-C).  A handler
runs between two bytecodes of the main thread, so the second can run *inside* the first one's
setting of the stop flag; with a ``threading.Event`` that meant taking its lock twice, and
the process hung for good (seen in 2 of 60 collectors).  The test makes exactly that moment
happen: a trace function raises the second SIGTERM on the line of ``set()`` that raises the
flag, whatever the flag's type is.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import inspect, signal, sys
    from sensorwire.lifecycle import StopSignal

    stop = StopSignal().install()
    set_fn = type(stop.event).set
    lines, first = inspect.getsourcelines(set_fn)
    flag_line = first + next(i for i, ln in enumerate(lines) if "= True" in ln)
    fired = False

    def local(frame, event, arg):
        global fired
        if event == "line" and frame.f_lineno == flag_line and not fired:
            fired = True
            signal.raise_signal(signal.SIGTERM)  # the second SIGTERM, inside the first's set()
        return local

    def tracer(frame, event, arg):
        return local if frame.f_code is set_fn.__code__ else None

    sys.settrace(tracer)
    signal.raise_signal(signal.SIGTERM)
    sys.settrace(None)
    print("stopped" if stop.is_set() and fired else "not triggered")
''')


def test_a_second_sigterm_inside_the_first_handler_does_not_hang() -> None:
    # on a hang, run() kills the child with SIGKILL (it would not die of SIGTERM any more)
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0 and r.stdout.strip() == "stopped", r.stdout + r.stderr
