"""reloadconfig: from the running config to a re-read one, without downtime.

Two halves, one owner each:

* `plan.py` decides, as a pure function of two configs, what has to happen:
  sockets to bind, take over, retire or change in place; watchers to add, roll,
  scale, update in place or remove.  No process, no socket, no supervisor: it is
  unit-tested on configs alone.
* `apply.py` carries a plan out on the supervisor with one commit point:
  everything that can fail because of the new config (binding, the chmod/chown
  of a socket file, opening an added watcher's output) is done first, and a
  failure undoes exactly that and leaves config, socket table and watchers as
  they were.  Only then is the new config committed, in one synchronous step,
  and the watchers are moved to it.

Neither imports the supervisor: `apply` works on the narrow `Host` it declares.
"""

from sockvisor.reconfigure.plan import Plan, SocketPlan, WatcherPlan, plan

__all__ = ["Plan", "SocketPlan", "WatcherPlan", "plan"]
