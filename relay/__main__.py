import signal

# First of all: until the relay installs its reload handler, SIGHUP (a reload asked for while
# the process is still starting) must not take the default action, which terminates it.
signal.signal(signal.SIGHUP, signal.SIG_IGN)

from relay.ops.cli import main  # noqa: E402

raise SystemExit(main())
